"""The serving hand-off: load both champions once, score records with numpy only.

(The LTV champion, when one is registered, loads the same way: :func:`load_ltv_champion`.)

``load_champions(settings)`` reads ``models:/churn@champion`` and
``models:/propensity@champion`` (the registered pyfuncs of ``training.pyfunc``) and keeps
their raw LightGBM Boosters with their calibrators, feature order and category lists.
``ChampionModels.score(record)`` turns an online-store record (docs/CONTRACT.md) into one
float row and predicts with each Booster: no pandas on this path (the pyfunc's
``predict`` on a one-row frame costs far more; see training/README.md).
``score_frame`` and the pyfunc return the same probabilities for the same rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.report import ChurnScorer, LtvScorer
from nextbest.config import Settings
from nextbest.errors import NextbestError, NotFound
from training.ltv_model import LtvModel, load_ltv
from training.model import InputSpec, predict
from training.registry import CHAMPION, LoadedModel, configure, load_version, resolve_version

log = logging.getLogger(__name__)

CHURN = "churn"
PROPENSITY = "propensity"
SELLER_CHURN = "seller_churn"


def _number(value: object) -> float:
    """``value`` as a float; None, pd.NA and anything non-numeric are missing (NaN)."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class _RowEncoder:
    """Record dict -> float row in the model's feature order; categories become list positions."""

    feature_names: list[str]
    codes: dict[str, dict[str, float]]

    @classmethod
    def from_spec(cls, spec: InputSpec) -> _RowEncoder:
        codes = {name: {value: float(i) for i, value in enumerate(values)}
                 for name, values in spec.categories.items()}
        return cls(feature_names=spec.feature_names, codes=codes)

    def encode(self, record: dict) -> np.ndarray:
        """Shape ``(1, n_features)``; missing, None or unknown values are NaN."""
        row = np.empty((1, len(self.feature_names)))
        for i, name in enumerate(self.feature_names):
            value = record.get(name)
            if name in self.codes:
                row[0, i] = self.codes[name].get(value, math.nan) if value is not None else math.nan
            else:
                row[0, i] = _number(value)
        return row


@dataclass
class _Scorer:
    model: LoadedModel
    encoder: _RowEncoder = field(init=False)

    def __post_init__(self) -> None:
        self.encoder = _RowEncoder.from_spec(self.model.spec)

    def score_row(self, row: np.ndarray) -> float:
        raw = self.model.booster.predict(row, num_iteration=self.model.spec.best_iteration,
                                         num_threads=1)
        return float(self.model.spec.calibrator.transform(raw)[0])

    def score_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """A column the model reads that ``frame`` lacks is missing (NaN) in every row, as
        an absent key of a record is in :meth:`score_row`."""
        absent = [name for name in self.encoder.feature_names if name not in frame.columns]
        if absent:
            frame = frame.assign(**dict.fromkeys(absent, np.nan))
        return predict(self.model.booster, self.model.spec, frame)


@dataclass
class ChampionModels:
    """The churn and propensity champions, ready to score."""

    churn: LoadedModel
    propensity: LoadedModel

    def __post_init__(self) -> None:
        self._churn = _Scorer(self.churn)
        self._propensity = _Scorer(self.propensity)

    @property
    def versions(self) -> dict[str, str]:
        """Registered version of each model, e.g. ``{"churn": "3", "propensity": "1"}``."""
        return {CHURN: self.churn.version, PROPENSITY: self.propensity.version}

    def score(self, record: dict) -> tuple[float, float]:
        """``(churn_probability, purchase_propensity)`` of one online-store record."""
        churn = self._churn.score_row(self._churn.encoder.encode(record))
        propensity = self._propensity.score_row(self._propensity.encoder.encode(record))
        return churn, propensity

    def score_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``frame`` with ``churn_probability`` and ``purchase_propensity`` added:
        the same numbers as :meth:`score` gives each row as a record, computed for all rows
        at once (batch scoring)."""
        out = frame.copy()
        out["churn_probability"] = self._churn.score_matrix(frame)
        out["purchase_propensity"] = self._propensity.score_matrix(frame)
        return out


def load_champions(settings: Settings) -> ChampionModels:
    """Both champions from the registry; :class:`~nextbest.errors.NotFound` if one is missing."""
    client = configure(settings)
    return ChampionModels(churn=load_version(client, CHURN, CHAMPION),
                          propensity=load_version(client, PROPENSITY, CHAMPION))


def load_churn_scorer(settings: Settings) -> ChurnScorer | None:
    """The champion churn model as a segments-report scorer, or None when no model can be
    loaded (the report then falls back to recency, so that is not an error)."""
    try:
        champions = load_champions(settings)
    except NextbestError as exc:
        log.info("no churn model (%s); Platinum risk uses recency", exc.message)
        return None

    def score(frame: pd.DataFrame) -> pd.Series:
        scored = champions.score_frame(frame)
        return pd.Series(np.asarray(scored["churn_probability"], dtype=float),
                         index=frame.index)

    return score


def champion_versions(settings: Settings) -> dict[str, str]:
    """The registered version behind each ``champion`` alias, without loading a model (a
    cheap check for a newer champion); :class:`~nextbest.errors.NotFound` if one is missing."""
    client = configure(settings)
    return {name: resolve_version(client, name, CHAMPION) for name in (CHURN, PROPENSITY)}


@dataclass
class SellerChurnChampion:
    """The seller churn champion, ready to score sellers' records (numpy only, as the buyer
    champions): the probability that the seller lists nothing in the label horizon."""

    model: LoadedModel
    _scorer: _Scorer = field(init=False)

    def __post_init__(self) -> None:
        self._scorer = _Scorer(self.model)

    @property
    def version(self) -> str:
        return str(self.model.version)

    def score(self, record: dict) -> float:
        """Seller churn probability of one online-store record."""
        return self._scorer.score_row(self._scorer.encoder.encode(record))

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Seller churn probability of every row of ``frame``, shape ``(len(frame),)``."""
        return self._scorer.score_matrix(frame)


def load_seller_churn_champion(settings: Settings,
                               unless: str | None = None) -> SellerChurnChampion | None:
    """The ``seller_churn`` champion, or None when none is registered (it is optional:
    seller answers then carry a null probability) or when its version is ``unless`` (the
    one already served: nothing is loaded)."""
    try:
        client = configure(settings)
        version = resolve_version(client, SELLER_CHURN, CHAMPION)
        if unless is not None and str(version) == str(unless):
            return None
        return SellerChurnChampion(load_version(client, SELLER_CHURN, version))
    except NotFound as exc:
        log.info("no seller_churn model (%s)", exc.message)
        return None


@dataclass
class LtvChampion:
    """The LTV champion, ready to score: ``score(record)`` is the forecast spend over
    ``horizon_days`` of one online-store record (``ltv_12m`` for the default 365 days)."""

    version: str
    model: LtvModel
    encoder: _RowEncoder = field(init=False)

    def __post_init__(self) -> None:
        self.encoder = _RowEncoder.from_spec(self.model.spec)

    @property
    def horizon_days(self) -> int:
        return self.model.spec.horizon_days

    def score(self, record: dict) -> float:
        """Forecast spend of one record, numpy only (as the churn and propensity scores)."""
        spend, _ = self.model.forecast_matrix(self.encoder.encode(record), num_threads=1)
        return float(spend[0])

    def score_frame(self, frame: pd.DataFrame) -> pd.Series:
        """Forecast spend of every row of a features frame, same index."""
        return self.model.forecast(frame)["spend"]


def load_ltv_champion(settings: Settings, unless: str | None = None) -> LtvChampion | None:
    """The ``ltv`` champion, or None when none is registered (LTV is optional) or when its
    version is ``unless`` (already served)."""
    try:
        version, model = load_ltv(configure(settings), unless=unless)
    except NotFound as exc:
        log.info("no ltv model (%s)", exc.message)
        return None
    return None if model is None else LtvChampion(version=version, model=model)


def load_ltv_scorer(settings: Settings) -> LtvScorer | None:
    """The LTV champion as a segments-report scorer (LTV / CAC per channel), or None."""
    champion = load_ltv_champion(settings)
    if champion is None:
        return None
    return LtvScorer(horizon_days=champion.horizon_days, version=champion.version,
                     score=champion.score_frame)
