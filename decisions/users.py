"""Users as the decision loop sees them: the online-store record, consent and model scores.

:class:`UserDirectory` owns the champion models and reads the online store; it computes no
features of its own (they come from ``features build`` through the store). It builds the
:class:`~decisions.policy.UserView` of any user (a cold start for an unknown one) for the
engine, the campaign layer and the service, and keeps the scores of recent users cached per
``(user, as_of)`` until the models change, and the views of recent users beside the raw
store row each was built from (the row is read on every request; an unchanged one's view
is reused).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import pandas as pd

from decisions.policy import UserView, finite_or_none, seller_view, user_view
from features.store import OnlineStore, Preferences, StoredUser, decode_stored
from nextbest.caches import keep
from nextbest.config import Settings
from nextbest.errors import NotFound
from training.loader import (
    ChampionModels,
    SellerChurnChampion,
    champion_versions,
    load_champions,
)

log = logging.getLogger(__name__)

NO_MODELS_WARNING = "no champion models, scores are null: run `nextbest train churn` and " \
    "`nextbest train propensity`, then POST /models/reload"


def try_load_champions(settings: Settings) -> tuple[ChampionModels | None, str | None]:
    """The champion models and None, or None and why (logged) when none is registered."""
    try:
        return load_champions(settings), None
    except NotFound as exc:
        log.warning("serving without models: %s", exc.message)
        return None, f"no champion models, scores are null: {exc.message}"


class UserDirectory:
    """The users as the decision loop sees them: store record, consent and model scores."""

    def __init__(self, settings: Settings, store: OnlineStore,
                 champions: ChampionModels | None, warning: str | None = None):
        self.settings = settings
        self.store = store
        self.champions = champions
        self.warning = warning or NO_MODELS_WARNING
        # The seller churn champion (optional; the service's scorer and the campaign CLI load
        # it): seller decision points read its probability.
        self.seller_churn_model: SellerChurnChampion | None = None
        self._cache: OrderedDict[tuple[str, str | None], tuple[float | None, float | None]] = \
            OrderedDict()
        # user_id -> (the raw row, the view built from it): see user_view
        self._views: OrderedDict[str, tuple[StoredUser, UserView]] = OrderedDict()

    def use(self, champions: ChampionModels) -> dict[str, str | None]:
        """Serve ``champions`` from now on (cached scores of the old ones are dropped)."""
        self.champions = champions
        self._cache.clear()
        self._views.clear()
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
        return len(keys) + (self._views.pop(user_id, None) is not None)

    def cached_users(self) -> set[str]:
        """Users with cached scores or views (what :meth:`forget` may drop)."""
        return {user_id for user_id, _ in self._cache} | set(self._views)

    def model_versions(self) -> dict[str, str | None]:
        """Model name -> version in use, or a warning when scores are null."""
        if self.champions is None:
            return {"churn": None, "propensity": None, "warning": self.warning}
        return {name: str(version) for name, version in self.champions.versions.items()}

    def scores(self, user_id: str,
                 record: Mapping[str, Any]) -> tuple[float | None, float | None]:
        """Churn probability and purchase propensity, or (None, None) without models.

        A record only changes with its ``as_of``, so the scores are cached per
        ``(user_id, as_of)`` (least recently used out first) until the models are reloaded.
        """
        if self.champions is None:
            return None, None
        key = (user_id, record_as_of(record))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        churn, propensity = self.champions.score(dict(record))
        scores = finite_or_none(churn), finite_or_none(propensity)
        keep(self._cache, key, scores, self.settings.serving.score_cache_size)
        return scores

    def warm_scores(self, limit: int | None = None) -> WarmScores | None:
        """The scores of the store's first ``limit`` users (default: as many as the cache
        keeps, ``serving.score_cache_size``), computed together (the path ``score --all``
        takes), for :meth:`fill`; None without models. Reads the store and the models only:
        safe off the event loop. A fresh service otherwise scores each user on their first
        request, one at a time, several times the cost of a cached answer."""
        champions = self.champions
        limit = self.settings.serving.score_cache_size if limit is None else limit
        if champions is None or limit <= 0:
            return None
        entries: list[tuple[tuple[str, str | None], tuple[float | None, float | None]]] = []
        for frame in self.store.iter_frames():
            frame = frame.iloc[:limit - len(entries)]
            scored = champions.score_frame(frame)
            as_of = frame["as_of"] if "as_of" in frame.columns else [None] * len(frame)
            for user_id, day, churn, propensity in zip(
                    frame["user_id"], as_of, scored["churn_probability"],
                    scored["purchase_propensity"], strict=True):
                key = (str(user_id), None if pd.isna(day) else record_as_of({"as_of": day}))
                entries.append((key, (finite_or_none(churn), finite_or_none(propensity))))
            if len(entries) >= limit:
                break
        return WarmScores(champions, entries)

    def fill(self, warm: WarmScores, start: int = 0, count: int | None = None) -> int:
        """Put ``count`` of ``warm``'s scores from ``start`` into the cache (on the event
        loop, a slice at a time); none when the models changed since they were computed.
        How many were put."""
        if warm.champions is not self.champions:
            return 0
        part = warm.entries[start:None if count is None else start + count]
        for key, scores in part:
            self._cache.setdefault(key, scores)
        return len(part)

    def user_view(self, user_id: str) -> UserView:
        """What the engine needs about a user: score, tags, features and consent.

        The store's row is read every time, so a new record, consent or review shows in the
        next decision; the view built from it is kept (up to ``serving.view_cache_size``
        users) and reused while the row is unchanged, which saves its decoding, the
        features' conversion and the scores' lookup (a fifth of a decision's CPU). A model
        change empties it (:meth:`use`), an erasure drops the user (:meth:`forget`)."""
        stored = self.store.get_stored(user_id)
        cached = self._views.get(user_id)
        if cached is not None and cached[0] == stored:
            self._views.move_to_end(user_id)
            return cached[1]
        record, prefs = decode_stored(stored)
        view = view_of(user_id, record, prefs, *self._scored(user_id, record))
        if cached is not None:
            del self._views[user_id]
        if stored is not None:
            keep(self._views, user_id, (stored, view), self.settings.serving.view_cache_size)
        return view

    def seller_churn(self, record: Mapping[str, Any]) -> float | None:
        """The ``seller_churn_model``'s probability for a seller's record (None for a user
        who does not consign, or without a model)."""
        if self.seller_churn_model is None or not record.get("is_seller"):
            return None
        return finite_or_none(self.seller_churn_model.score(dict(record)))

    def seller_view(self, user_id: str, state: UserState | None = None) -> UserView:
        """The user as a seller decision point sees them (:func:`seller_view`): from
        ``state`` when the caller looked them up already, else from the store."""
        if state is None:
            record, prefs = self.store.get_with_preferences(user_id)
        else:
            record = state.names if state.view.known else None
            prefs = state.preferences
        churn = self.seller_churn(record) if record else None
        return seller_view(user_id, record, churn_probability=churn,
                           personalization=bool(prefs.personalization))

    def lookup(self, user_id: str) -> UserState:
        """Everything known about ``user_id`` (a cold start for an unknown user)."""
        record, prefs = self.store.get_with_preferences(user_id)
        return user_state(user_id, record, prefs, *self._scored(user_id, record))

    def _scored(self, user_id: str, record: Mapping[str, Any] | None
                ) -> tuple[float | None, float | None]:
        """The user's churn and propensity scores (:meth:`scores`), none without a record."""
        return self.scores(user_id, record) if record else (None, None)


class WarmScores(NamedTuple):
    """Scores computed ahead of requests (:meth:`UserDirectory.warm_scores`): the models
    that computed them and ``((user_id, as_of), (churn, propensity))`` per user."""

    champions: ChampionModels
    entries: list[tuple[tuple[str, str | None], tuple[float | None, float | None]]]


class UserState(NamedTuple):
    """A user as the campaign layer needs them: the engine's view, the names a condition may
    read (the whole store record, text columns too, with the model scores) and the user's
    preferences (consent per channel)."""

    view: UserView
    names: dict[str, Any]
    preferences: Preferences


def view_of(user_id: str, record: Mapping[str, Any] | None, preferences: Preferences,
            churn: float | None, propensity: float | None) -> UserView:
    """The engine's :class:`UserView` of one user from their record, preferences and
    scores."""
    return user_view(user_id, record, churn_probability=churn, purchase_propensity=propensity,
                     personalization=bool(preferences.personalization))


def user_state(user_id: str, record: Mapping[str, Any] | None, preferences: Preferences,
               churn: float | None, propensity: float | None) -> UserState:
    """The :class:`UserState` of one user from their record, preferences and scores."""
    view = view_of(user_id, record, preferences, churn, propensity)
    names = dict(record or {})
    names.update(known=view.known, churn_probability=view.churn_probability,
                 purchase_propensity=view.purchase_propensity)
    return UserState(view, names, preferences)


def record_as_of(record: Mapping[str, Any]) -> str | None:
    """The record's ``as_of`` as an ISO date string."""
    value = record.get("as_of")
    return None if value is None else str(value)[:10]
