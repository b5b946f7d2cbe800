"""LightGBM with native categorical features, early stopping, imbalance weighting and calibration.

Encoding is shared by training and serving: :class:`ModelSpec` keeps the feature order and
the fixed category list of every categorical input, so a category's integer code at serving
time is its position in that list, exactly as in the pandas ``category`` dtype used to train.

Honesty of the validation numbers: the validation cutoff's users are split 50/50 by a seeded
hash of ``user_id`` (:func:`split_validation`). The *calibration half* drives early stopping
and fits the calibrator; the *evaluation half* is only scored (metrics, plots, the champion
gate). Early stopping and calibration on the same half are mildly optimistic for that half,
which is why no reported metric is computed on it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from nextbest.config import TrainingConfig
from nextbest.errors import DataError

_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class Calibrator(BaseModel):
    """Maps a raw booster probability to a calibrated one with numpy only (serving-fast).

    ``isotonic``: piecewise-linear table ``np.interp(p, x, y)`` (clipped at both ends, as
    scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` predicts).
    ``sigmoid`` (Platt): ``1 / (1 + exp(-(a * logit(p) + b)))``.
    """

    kind: Literal["isotonic", "sigmoid"]
    x: list[float] = Field(default_factory=list)
    y: list[float] = Field(default_factory=list)
    a: float = 1.0
    b: float = 0.0

    def transform(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw probabilities ``p`` (any shape)."""
        p = np.asarray(p, dtype=float)
        if self.kind == "isotonic":
            return np.interp(p, self.x, self.y)
        return 1.0 / (1.0 + np.exp(-(self.a * _logit(p) + self.b)))


def fit_isotonic(raw: np.ndarray, y: np.ndarray) -> Calibrator:
    """Isotonic regression of ``y`` on ``raw``, kept as its threshold table."""
    iso = IsotonicRegression(out_of_bounds="clip", y_min=_EPS, y_max=1 - _EPS).fit(raw, y)
    return Calibrator(kind="isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())


def fit_sigmoid(raw: np.ndarray, y: np.ndarray) -> Calibrator:
    """Platt scaling: a one-feature logistic regression on the logit of ``raw``."""
    lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
    return Calibrator(kind="sigmoid", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


_FITTERS = {"isotonic": fit_isotonic, "sigmoid": fit_sigmoid}


def choose_calibrator(raw: np.ndarray, y: np.ndarray, seed: int) -> tuple[Calibrator, dict]:
    """Pick isotonic or sigmoid by 2-fold cross-fitted log loss, then refit it on all rows.

    Cross-fitting keeps isotonic's flexibility from winning by memorising the rows it is
    judged on. Returns the calibrator and the log loss of each kind.
    """
    fold = np.random.default_rng(seed).permutation(len(y)) % 2
    scores = {}
    for kind, fit in _FITTERS.items():
        pred = np.empty(len(y))
        for k in (0, 1):
            train, test = fold != k, fold == k
            if len(np.unique(y[train])) < 2:
                pred[test] = y[train].mean()
                continue
            pred[test] = fit(raw[train], y[train]).transform(raw[test])
        scores[kind] = float(log_loss(y, np.clip(pred, _EPS, 1 - _EPS), labels=[0, 1]))
    best = min(scores, key=scores.get)
    return _FITTERS[best](raw, y), scores


class InputSpec(BaseModel):
    """How a frame of features becomes a model's input: the feature order and the fixed
    category list of every categorical input."""

    feature_names: list[str]
    categories: dict[str, list[str]]

    def frame(self, data: pd.DataFrame) -> pd.DataFrame:
        """Model inputs as LightGBM trains on them: float columns, fixed-category columns."""
        out = {}
        for name in self.feature_names:
            if name in self.categories:
                dtype = pd.CategoricalDtype(self.categories[name])
                out[name] = data[name].astype("string").astype(object).astype(dtype)
            else:
                out[name] = pd.to_numeric(data[name], errors="coerce").astype(np.float64)
        return pd.DataFrame(out, index=data.index)

    def matrix(self, data: pd.DataFrame) -> np.ndarray:
        """Model inputs as a float matrix, categories as their codes (NaN when unknown)."""
        frame = self.frame(data)
        for name in self.categories:
            codes = frame[name].cat.codes.to_numpy(dtype=np.float64)
            frame[name] = np.where(codes < 0, np.nan, codes)
        return frame.to_numpy(dtype=np.float64)


class ModelSpec(InputSpec):
    """What serving needs besides the booster: input order, category lists, calibrator."""

    model_name: str
    calibrator: Calibrator
    best_iteration: int
    event: str


def category_lists(train: pd.DataFrame, categorical: list[str]) -> dict[str, list[str]]:
    """The sorted distinct values of each categorical column in the training rows."""
    return {c: sorted(train[c].dropna().astype(str).unique().tolist()) for c in categorical}


def split_validation(user_ids: pd.Series, seed: int) -> np.ndarray:
    """Boolean mask of the calibration half (True) of the validation users, by seeded hash."""
    def bucket(user_id: str) -> bool:
        return hashlib.blake2b(f"{seed}:{user_id}".encode(), digest_size=8).digest()[0] % 2 == 0
    return np.fromiter((bucket(u) for u in user_ids.astype(str)), dtype=bool, count=len(user_ids))


def base_params(config: TrainingConfig, y: np.ndarray) -> dict[str, Any]:
    """LightGBM parameters: binary objective, positives weighted by the negative/positive ratio.

    Early stopping watches AUC, not log loss: the class weighting skews the raw probabilities
    (the calibrator fixes them afterwards), so raw log loss would stop on miscalibration,
    not on ranking quality.
    """
    pos = float(np.sum(y))
    if pos == 0 or pos == len(y):
        raise DataError("training labels hold a single class; use more --cutoffs", field="label")
    return {
        "objective": "binary", "metric": "auc", "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves, "min_child_samples": config.min_child_samples,
        "feature_fraction": config.feature_fraction, "lambda_l2": config.lambda_l2,
        "scale_pos_weight": (len(y) - pos) / pos, "seed": config.seed, "deterministic": True,
        "num_threads": config.num_threads, "verbosity": -1, "max_cat_to_onehot": 8,
    }


def fit_booster(spec: ModelSpec, train: pd.DataFrame, stop: pd.DataFrame, params: dict[str, Any],
                config: TrainingConfig) -> lgb.Booster:
    """Train on ``train`` with early stopping on ``stop`` (the validation calibration half)."""
    cats = list(spec.categories)
    dtrain = lgb.Dataset(spec.frame(train), label=train["label"].to_numpy(),
                         categorical_feature=cats, free_raw_data=True)
    dstop = lgb.Dataset(spec.frame(stop), label=stop["label"].to_numpy(), reference=dtrain,
                        categorical_feature=cats)
    return lgb.train(params, dtrain, num_boost_round=config.num_boost_round, valid_sets=[dstop],
                     callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)])


def raw_scores(booster: lgb.Booster, spec: ModelSpec, data: pd.DataFrame) -> np.ndarray:
    """Uncalibrated probabilities of the event from the numpy path serving uses."""
    return booster.predict(spec.matrix(data), num_iteration=spec.best_iteration)


def predict(booster: lgb.Booster, spec: ModelSpec, data: pd.DataFrame) -> np.ndarray:
    """Calibrated probabilities of the event for every row of ``data``."""
    return spec.calibrator.transform(raw_scores(booster, spec, data))
