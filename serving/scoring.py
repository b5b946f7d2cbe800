"""Per-user answers built from the online store record and the champion models.

:class:`Scorer` is the :class:`~decisions.users.UserDirectory` (store, champions, cached
scores, user views) plus the HTTP answers: ``/score`` and a user's explanation (the rules
behind their tier, segment and tags). An unknown user gets the cold-start answer:
``known`` false, tier ``new``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from decisions.policy import finite_or_none
from decisions.users import UserDirectory, record_as_of
from features.segmentation import NEW_TIER, NO_PURCHASE
from features.store import OnlineStore
from nextbest.config import Settings
from serving.schemas import (
    ExplanationResponse,
    ScoreResponse,
    SellerScoreResponse,
    TagExplanation,
)
from training.loader import (
    SELLER_CHURN,
    ChampionModels,
    LtvChampion,
    load_ltv_champion,
    load_seller_churn_champion,
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The columns of a scored table (Scorer.score_table), in order: /score's per-user fields.
SCORE_COLUMNS = ("user_id", "features_as_of", "tier", "segment", "tags", "churn_probability",
                 "purchase_propensity", "lifecycle_stage", "ltv_12m")


def missing_for_serving(no_model: str | None, store_users: int) -> list[str]:
    """What the service lacks to give real answers, each with the command that fixes it
    (``no_model``: why a champion model is missing, None when both are there)."""
    missing = []
    if no_model is not None:
        missing.append(f"no champion models: {no_model}")
    if not store_users:
        missing.append("no features in the online store: run `nextbest features build`")
    return missing


class Scorer(UserDirectory):
    """Builds score answers and explanations over the :class:`UserDirectory`; for sellers
    (``/score`` with ``subject: seller``) with the seller churn champion when there is one,
    and with an LTV champion (optional: ``nextbest train ltv``) answers carry ``ltv_12m``.
    ``registry`` False (a bento) never asks the MLflow registry for those optional models."""

    ltv: LtvChampion | None = None

    def __init__(self, settings: Settings, store: OnlineStore,
                 champions: ChampionModels | None, warning: str | None = None, *,
                 registry: bool = True):
        super().__init__(settings, store, champions, warning)
        self.registry = registry
        self.seller_churn_model = load_seller_churn_champion(settings) if registry else None

    def refresh_seller_churn(self) -> str | None:
        """Load the registry's seller churn champion when it changed; its new version, or
        None when nothing changed (safe off the event loop: the swap is one assignment)."""
        if not self.registry:
            return None
        served = None if self.seller_churn_model is None else self.seller_churn_model.version
        champion = load_seller_churn_champion(self.settings, unless=served)
        if champion is None:
            return None
        self.seller_churn_model = champion
        return champion.version

    def use_ltv(self, champion: LtvChampion | None) -> None:
        """Serve ``champion`` as ``ltv_12m`` from now on (None: ``ltv_12m`` is null)."""
        self.ltv = champion

    def load_ltv(self) -> LtvChampion | None:
        """The registry's LTV champion when it differs from the one served, else None (safe
        off the event loop)."""
        if not self.registry:
            return None
        return load_ltv_champion(self.settings,
                                 unless=None if self.ltv is None else self.ltv.version)

    def model_versions(self) -> dict[str, str | None]:
        versions = super().model_versions()
        if self.ltv is not None:
            versions["ltv"] = str(self.ltv.version)
        return versions

    def ltv_of(self, record: Mapping[str, Any]) -> float | None:
        """The LTV champion's forecast spend for one record (None without one)."""
        return None if self.ltv is None else finite_or_none(self.ltv.score(dict(record)))

    def seller_versions(self) -> dict[str, str | None]:
        """``{"seller_churn": version}``, or None and a warning without a champion."""
        if self.seller_churn_model is None:
            return {SELLER_CHURN: None, "warning": "no seller_churn champion, seller churn "
                    "probabilities are null: run `nextbest train seller_churn`, then POST "
                    "/models/reload"}
        return {SELLER_CHURN: self.seller_churn_model.version}

    def seller_answers(self, user_ids: list[str]) -> list[SellerScoreResponse]:
        """The /score answers (subject seller) of ``user_ids``, in the order asked, scored
        together; an unknown user is not known and has no seller tier."""
        records = self.store.get_frame(user_ids)
        known = {str(u): i for i, u in enumerate(records["user_id"])} if len(records) else {}
        sellers = (records["is_seller"].fillna(False).astype(bool).to_numpy()
                   if "is_seller" in records.columns else np.zeros(len(records), bool))
        churn = (self.seller_churn_model.score_frame(records)
                 if self.seller_churn_model is not None
                 and len(records) else np.full(len(records), np.nan))
        versions = self.seller_versions()
        answers = []
        for user_id in user_ids:
            row = known.get(user_id)
            if row is None:
                answers.append(SellerScoreResponse(
                    user_id=user_id, known=False, is_seller=False, seller_tier=None,
                    seller_tags=[], seller_churn_probability=None, model_versions=versions,
                    features_as_of=None))
                continue
            record = records.iloc[row]
            tier = record.get("seller_tier")
            tags = record.get("seller_tags")
            answers.append(SellerScoreResponse(
                user_id=user_id, known=True, is_seller=bool(sellers[row]),
                seller_tier=None if tier is None or _is_missing(tier) else str(tier),
                seller_tags=[] if tags is None or _is_missing(tags) else [str(t) for t in tags],
                seller_churn_probability=finite_or_none(churn[row]) if sellers[row] else None,
                model_versions=versions, features_as_of=record_as_of(record)))
        return answers

    def answer(self, user_id: str, record: Mapping[str, Any] | None) -> ScoreResponse:
        """The /score answer for one user from their store record (None: cold start)."""
        if record is None:
            return ScoreResponse(user_id=user_id, known=False, tier=NEW_TIER,
                                 segment=NO_PURCHASE, tags=[], churn_probability=None,
                                 purchase_propensity=None, model_versions=self.model_versions(),
                                 features_as_of=None, lifecycle_stage=None, ltv_12m=None)
        churn, propensity = self.scores(user_id, record)
        return ScoreResponse(
            user_id=user_id, known=True, tier=str(record.get("tier") or NEW_TIER),
            segment=str(record.get("segment") or NO_PURCHASE),
            tags=list(record.get("tags") or []), churn_probability=churn,
            purchase_propensity=propensity, model_versions=self.model_versions(),
            features_as_of=record_as_of(record),
            lifecycle_stage=str(record["lifecycle_stage"]) if record.get("lifecycle_stage")
            else None, ltv_12m=self.ltv_of(record))

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
            model_versions=versions, features_as_of=row.features_as_of,
            lifecycle_stage=row.lifecycle_stage, ltv_12m=finite_or_none(row.ltv_12m))
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
        stage = _text(records, "lifecycle_stage", None)
        out["lifecycle_stage"] = stage.astype(object).where(stage.notna(), None)
        out["ltv_12m"] = (np.full(n, np.nan) if self.ltv is None or n == 0
                          else self.ltv.score_frame(records).to_numpy(float))
        return out

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
            tags=tags, features=features, features_as_of=record_as_of(record) if record else None,
            **best_hour_explained(record, self.settings),
            **lifecycle_explained(record, self.settings))


def lifecycle_explained(record: Mapping[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """The user's lifecycle stage and the rule behind it (the first of ``features.lifecycle``
    that holds names the stage; none holding means the default stage)."""
    stage = str(record.get("lifecycle_stage") or "") if record else ""
    if not stage:
        return {"lifecycle_reason": "no features build has set a lifecycle stage for this user"}
    rule = next((r for r in settings.features.lifecycle if r.stage == stage), None)
    reason = (f"{stage}: the first lifecycle rule that holds is {rule.when!r}" if rule else
              f"{stage}: no lifecycle rule holds, so the default stage")
    return {"lifecycle_stage": stage, "lifecycle_reason": reason}


def best_hour_explained(record: Mapping[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """The user's send hour, time zone and why (features/sendtime.py)."""
    if not record or finite_or_none(record.get("best_hour")) is None:
        return {"best_hour_reason": "no features build has set a send hour for this user"}
    hour = int(record["best_hour"])
    zone = record.get("timezone") or None
    where = f"in {zone}" if zone else "in UTC (no time zone known)"
    if record.get("best_hour_source") == "own":
        reason = (f"{hour}:00 {where}: the hour of day this user was most active in over the "
                  f"last year ({int(record.get('active_events') or 0)} orders and events)")
    else:
        reason = (f"{hour}:00 {where}: the platform's most common best hour, as this user has "
                  f"fewer than {settings.features.best_hour_min_events} orders and events in "
                  "the last year")
    return {"best_hour": hour, "timezone": zone, "best_hour_reason": reason}


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

