"""Per-user answers built from the online store record and the champion models.

:class:`Scorer` owns the champion models and reads the online store; it computes no
features of its own (they come from ``features build`` through the store). It answers
``/score``, builds the engine's :class:`~serving.policy.UserView` and explains a user's tier,
segment and tags. An unknown user gets the cold-start answer: ``known`` false, tier ``new``.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from decisions.policy import UserView, finite_or_none, user_view
from features.segmentation import NEW_TIER, NO_PURCHASE
from features.store import OnlineStore
from nextbest.config import Settings
from nextbest.errors import NotFound
from serving.schemas import ExplanationResponse, ScoreResponse, TagExplanation
from training.loader import ChampionModels, champion_versions, load_champions

log = logging.getLogger(__name__)

NO_MODELS_WARNING = "no champion models, scores are null: run `nextbest train churn` and " \
    "`nextbest train propensity`, then POST /models/reload"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The columns of a scored table (Scorer.score_table), in order: /score's per-user fields.
SCORE_COLUMNS = ("user_id", "features_as_of", "tier", "segment", "tags", "churn_probability",
                 "purchase_propensity")


def missing_for_serving(has_models: bool, store_users: int) -> list[str]:
    """What the service lacks to give real answers, each with the command that fixes it."""
    missing = []
    if not has_models:
        missing.append("no champion models: run `nextbest train churn` and "
                       "`nextbest train propensity`")
    if not store_users:
        missing.append("no features in the online store: run `nextbest features build`")
    return missing


def try_load_champions(settings: Settings) -> tuple[ChampionModels | None, str | None]:
    """The champion models and None, or None and why (logged) when none is registered."""
    try:
        return load_champions(settings), None
    except NotFound as exc:
        log.warning("serving without models: %s", exc.message)
        return None, f"no champion models, scores are null: {exc.message}"


class Scorer:
    """Builds score answers, user views and explanations for one settings object."""

    def __init__(self, settings: Settings, store: OnlineStore,
                 champions: ChampionModels | None, warning: str | None = None):
        self.settings = settings
        self.store = store
        self.champions = champions
        self.warning = warning or NO_MODELS_WARNING
        self._cache: OrderedDict[tuple[str, str | None], tuple[float | None, float | None]] = \
            OrderedDict()

    def use(self, champions: ChampionModels) -> dict[str, str | None]:
        """Serve ``champions`` from now on (cached scores of the old ones are dropped)."""
        self.champions = champions
        self._cache.clear()
        return self.model_versions()

    def newer_champions(self) -> ChampionModels | None:
        """The registry's champions when they differ from the ones served, else None (also
        when the registry has none: what is served stays). Safe off the event loop: it only
        reads the registry and loads models."""
        try:
            versions = champion_versions(self.settings)
        except NotFound:
            return None
        if self.champions is not None and versions == self.champions.versions:
            return None
        return load_champions(self.settings)

    def forget(self, user_id: str) -> int:
        """Drop the user's cached scores (erasure); returns the entries dropped.

        Other worker processes keep theirs until evicted, but never serve them again: the
        user's record is gone, and a cached score is only used with a record."""
        keys = [key for key in self._cache if key[0] == user_id]
        for key in keys:
            del self._cache[key]
        return len(keys)

    def model_versions(self) -> dict[str, str | None]:
        """Model name -> version in use, or a warning when scores are null."""
        if self.champions is None:
            return {"churn": None, "propensity": None, "warning": self.warning}
        return {name: str(version) for name, version in self.champions.versions.items()}

    def _predict(self, user_id: str,
                 record: Mapping[str, Any]) -> tuple[float | None, float | None]:
        """Churn probability and purchase propensity, or (None, None) without models.

        A record only changes with its ``as_of``, so the scores are cached per
        ``(user_id, as_of)`` (least recently used out first) until the models are reloaded.
        """
        if self.champions is None:
            return None, None
        key = (user_id, _as_of(record))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        churn, propensity = self.champions.score(dict(record))
        scores = finite_or_none(churn), finite_or_none(propensity)
        limit = self.settings.serving.score_cache_size
        if limit:
            self._cache[key] = scores
            if len(self._cache) > limit:
                self._cache.popitem(last=False)
        return scores

    def answer(self, user_id: str, record: Mapping[str, Any] | None) -> ScoreResponse:
        """The /score answer for one user from their store record (None: cold start)."""
        if record is None:
            return ScoreResponse(user_id=user_id, known=False, tier=NEW_TIER,
                                 segment=NO_PURCHASE, tags=[], churn_probability=None,
                                 purchase_propensity=None, model_versions=self.model_versions(),
                                 features_as_of=None)
        churn, propensity = self._predict(user_id, record)
        return ScoreResponse(
            user_id=user_id, known=True, tier=str(record.get("tier") or NEW_TIER),
            segment=str(record.get("segment") or NO_PURCHASE),
            tags=list(record.get("tags") or []), churn_probability=churn,
            purchase_propensity=propensity, model_versions=self.model_versions(),
            features_as_of=_as_of(record))

    def score(self, user_id: str) -> ScoreResponse:
        """The /score answer for one user."""
        return self.answer(user_id, self.store.get(user_id))

    def score_many(self, user_ids: list[str]) -> list[ScoreResponse]:
        """The /score answers for a batch, in the order asked, scored together
        (:meth:`score_table`); unknown users get the cold-start answer."""
        table = self.score_table(self.store.get_frame(user_ids))
        versions = self.model_versions()
        known = {row.user_id: ScoreResponse(
            user_id=row.user_id, known=True, tier=str(row.tier), segment=str(row.segment),
            tags=[str(t) for t in row.tags],
            churn_probability=finite_or_none(row.churn_probability),
            purchase_propensity=finite_or_none(row.purchase_propensity),
            model_versions=versions, features_as_of=row.features_as_of)
            for row in table.itertuples(index=False)}
        return [known[user_id] if user_id in known else self.answer(user_id, None)
                for user_id in user_ids]

    def score_table(self, records: pd.DataFrame) -> pd.DataFrame:
        """The /score fields (:data:`SCORE_COLUMNS`) of every store record in ``records``
        (a frame from :meth:`~features.store.OnlineStore.get_frame` or ``iter_frames``),
        computed for all rows at once: the same values :meth:`answer` gives each record
        (scores NaN without champion models, tags a list)."""
        n = len(records)
        out = pd.DataFrame({"user_id": records["user_id"].astype(str).to_numpy(object)})
        as_of = _text(records, "as_of", None)
        out["features_as_of"] = as_of.str.slice(0, 10).astype(object).where(as_of.notna(), None)
        out["tier"] = _text(records, "tier", NEW_TIER)
        out["segment"] = _text(records, "segment", NO_PURCHASE)
        tags = records["tags"] if "tags" in records.columns else [None] * n
        out["tags"] = [[] if v is None or _is_missing(v) else v for v in tags]
        if self.champions is None or n == 0:
            out["churn_probability"] = out["purchase_propensity"] = np.full(n, np.nan)
        else:
            scored = self.champions.score_frame(records)
            out["churn_probability"] = scored["churn_probability"].to_numpy(float)
            out["purchase_propensity"] = scored["purchase_propensity"].to_numpy(float)
        return out

    def user_view(self, user_id: str) -> UserView:
        """What the engine needs about a user: score, tags, features and consent."""
        record, prefs = self.store.get_with_preferences(user_id)
        churn, propensity = self._predict(user_id, record) if record else (None, None)
        return user_view(user_id, record, churn_probability=churn,
                         purchase_propensity=propensity,
                         personalization=bool(prefs.personalization))

    def explain(self, user_id: str) -> ExplanationResponse:
        """Why this tier, segment and tags: the configured rules and the values they read."""
        record = self.store.get(user_id)
        tiers = self.settings.features.tiers
        active = set(record.get("tags") or []) if record else set()
        raw_tags = set(self.store.export(user_id).get("record", {}).get("tags") or []) \
            if record else set()
        used: set[str] = {tiers.value_column, "recency_days", "r_score", "f_score", "m_score",
                          "frequency_total"}
        tags = []
        for rule in self.settings.features.tags:
            used.update(_IDENTIFIER.findall(rule.when))
            tags.append(TagExplanation(
                name=rule.name, rule=rule.when, description=rule.description,
                applies=rule.name in active,
                removed_by_user=rule.name in raw_tags and rule.name not in active))
        features = {key: _json_value(record[key]) for key in sorted(used)
                    if record and key in record}
        return ExplanationResponse(
            user_id=user_id, known=record is not None,
            tier=str(record.get("tier") or NEW_TIER) if record else NEW_TIER,
            tier_rule=tier_rules(self.settings),
            segment=str(record.get("segment") or NO_PURCHASE) if record else NO_PURCHASE,
            segment_rule=("R and F quintile scores (1-5) mapped through the R x F grid; "
                          "no_purchase for users without a completed order"),
            tags=tags, features=features, features_as_of=_as_of(record) if record else None)


def tier_rules(settings: Settings) -> str:
    """The configured tier thresholds as one readable sentence."""
    t = settings.features.tiers
    return (f"platinum: top {t.platinum_share:.0%} by {t.value_column} with a purchase in the "
            f"last {t.platinum_recency_days} days; gold: next {t.gold_share:.0%}, purchase in "
            f"{t.gold_recency_days} days; silver: other buyers, purchase in "
            f"{t.silver_recency_days} days; dormant: last purchase {t.silver_recency_days}-"
            f"{t.dormant_days} days ago; churned: longer; new: no purchase yet")


def _json_value(value: Any) -> float | str | None:
    """A record value as JSON: finite numbers, strings, or None."""
    if isinstance(value, str):
        return value
    return finite_or_none(value)


def _text(frame: pd.DataFrame, name: str, default: str | None) -> pd.Series:
    """A text column of ``frame`` with missing or empty values (or a missing column) as
    ``default``, like ``str(record.get(name) or default)``."""
    if name not in frame.columns:
        return pd.Series([default] * len(frame), dtype="string" if default else object)
    values = frame[name].astype("string")
    return values.mask(values.isna() | (values == ""), default).reset_index(drop=True)


def _is_missing(value: Any) -> bool:
    """A scalar NaN or NA where a list of tags was expected."""
    return not isinstance(value, list | np.ndarray) and bool(pd.isna(value))


def _as_of(record: Mapping[str, Any]) -> str | None:
    """The record's ``as_of`` as an ISO date string."""
    value = record.get("as_of")
    return None if value is None else str(value)[:10]
