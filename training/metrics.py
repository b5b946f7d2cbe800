"""Validation metrics of a binary probability model, computed here (not by mlflow.evaluate).

Every function takes ``y`` (shape ``(n,)``, values 0/1, the event happened) and ``p``
(shape ``(n,)``, the predicted probability of the event) and returns a float.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from nextbest.errors import DataError

_EPS = 1e-15


class Metrics(BaseModel):
    """The metrics logged for the model and for each baseline on the same validation set."""

    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    lift_top_decile: float
    ece: float

    def prefixed(self, prefix: str) -> dict[str, float]:
        """The metrics as an MLflow-ready dict, e.g. ``baseline_rfm_roc_auc``."""
        return {f"{prefix}{name}": float(value) for name, value in self.model_dump().items()}


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and classes at the boundary; metrics need both classes present."""
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise DataError(f"labels ({y.shape[0]}) and probabilities ({p.shape[0]}) differ in length",
                        field="p")
    if np.isnan(p).any():
        raise DataError("probabilities contain NaN", field="p")
    classes = set(np.unique(y).tolist())
    if classes != {0.0, 1.0}:
        raise DataError(f"validation labels must hold both classes 0 and 1, got {sorted(classes)}",
                        field="y")
    return y, np.clip(p, _EPS, 1 - _EPS)


def lift_top_decile(y: np.ndarray, p: np.ndarray) -> float:
    """Event rate among the 10% highest-scored rows divided by the overall event rate.

    Ties at the decile boundary are broken by row order after a stable sort, so the top
    decile always holds exactly ``ceil(n / 10)`` rows.
    """
    y, p = _check(y, p)
    k = max(1, int(np.ceil(len(y) / 10)))
    top = np.argsort(-p, kind="stable")[:k]
    return float(y[top].mean() / y.mean())


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE = sum over equal-width probability bins b of (n_b / n) * |mean(y_b) - mean(p_b)|."""
    y, p = _check(y, p)
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def evaluate(y: np.ndarray, p: np.ndarray) -> Metrics:
    """All validation metrics of probabilities ``p`` against labels ``y``."""
    y, p = _check(y, p)
    return Metrics(
        roc_auc=float(roc_auc_score(y, p)),
        pr_auc=float(average_precision_score(y, p)),
        log_loss=float(log_loss(y, p, labels=[0, 1])),
        brier=float(brier_score_loss(y, p)),
        lift_top_decile=lift_top_decile(y, p),
        ece=expected_calibration_error(y, p),
    )


class LtvMetrics(BaseModel):
    """Lifetime-value forecast metrics on one validation population (the ones practitioners
    use for CLV): total forecast errors (signed, relative to the actual totals), mean
    absolute error per user, Spearman rank correlation with actual spend, the share of
    actual spend captured by the top 10% of forecasts, and the normalised Gini of the
    forecast's ranking (1: ranks spend perfectly, 0: no better than random)."""

    users: int
    actual_spend: float
    forecast_spend: float
    spend_error: float
    actual_purchases: float
    forecast_purchases: float
    purchases_error: float
    mae_spend: float
    spearman: float
    top_decile_capture: float
    gini: float

    def prefixed(self, prefix: str) -> dict[str, float]:
        """The metrics as an MLflow-ready dict, e.g. ``baseline_bgnbd_gg_spearman``."""
        return {f"{prefix}{name}": float(value) for name, value in self.model_dump().items()}


def _check_forecast(actual: np.ndarray, forecast: np.ndarray, name: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(actual, dtype=float).ravel()
    forecast = np.asarray(forecast, dtype=float).ravel()
    if actual.shape != forecast.shape:
        raise DataError(f"actual ({actual.size}) and forecast ({forecast.size}) {name} differ "
                        "in length", field=name)
    if np.isnan(forecast).any() or np.isnan(actual).any():
        raise DataError(f"{name} contain NaN", field=name)
    if actual.sum() <= 0:
        raise DataError(f"no actual {name} in the validation window: nothing to compare",
                        field=name)
    return actual, forecast


def top_share(actual: np.ndarray, forecast: np.ndarray, share: float = 0.1) -> float:
    """Share of the total of ``actual`` held by the ``share`` of rows with the highest
    ``forecast`` (``ceil(share * n)`` rows, ties broken by row order after a stable sort)."""
    k = max(1, int(np.ceil(len(actual) * share)))
    top = np.argsort(-forecast, kind="stable")[:k]
    return float(actual[top].sum() / actual.sum())


def normalised_gini(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Gini of ``actual`` ordered by ``forecast`` over the Gini of ``actual`` ordered by itself
    (the Lorenz-curve area between the ordering and random, relative to the best ordering)."""
    def gini(order: np.ndarray) -> float:
        cumulative = np.cumsum(actual[order]) / actual.sum()
        return float(np.mean(cumulative) - (len(actual) + 1) / (2 * len(actual)))

    best = gini(np.argsort(-actual, kind="stable"))
    return gini(np.argsort(-forecast, kind="stable")) / best if best > 0 else 0.0


def evaluate_ltv(spend: np.ndarray, purchases: np.ndarray, forecast_spend: np.ndarray,
                 forecast_purchases: np.ndarray) -> LtvMetrics:
    """All LTV metrics of a forecast against the actual spend and purchases, shape ``(n,)``."""
    spend, forecast_spend = _check_forecast(spend, forecast_spend, "spend")
    purchases, forecast_purchases = _check_forecast(purchases, forecast_purchases, "purchases")
    return LtvMetrics(
        users=len(spend), actual_spend=float(spend.sum()),
        forecast_spend=float(forecast_spend.sum()),
        spend_error=float(forecast_spend.sum() / spend.sum() - 1),
        actual_purchases=float(purchases.sum()),
        forecast_purchases=float(forecast_purchases.sum()),
        purchases_error=float(forecast_purchases.sum() / purchases.sum() - 1),
        mae_spend=float(np.mean(np.abs(forecast_spend - spend))),
        spearman=float(spearmanr(forecast_spend, spend).statistic),
        top_decile_capture=top_share(spend, forecast_spend),
        gini=normalised_gini(spend, forecast_spend))
