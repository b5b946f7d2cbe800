"""Offline evaluation of a candidate policy on a decision log (``nextbest evaluate-policy``).

Only decisions that showed an arm are evaluated (control-group and no-action decisions have
no arm to re-weight). The logging policy's observed value is the mean reward of those
decisions; each estimator of :data:`experiments.ope.ESTIMATORS` gives the candidate's value
with a bootstrap interval. DR's reward model is the cross-fitted LightGBM of
:func:`experiments.ope.fit_reward_model` on the log's context columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from experiments.logs import context_columns
from experiments.ope import ESTIMATORS, fit_reward_model
from experiments.policies import candidate_action_dist
from nextbest.config import Settings
from nextbest.errors import DataError


class Estimate(BaseModel):
    """One estimator's value of the candidate with its ``(1 - alpha)`` bootstrap interval."""

    mean: float
    low: float
    high: float


class OpeReport(BaseModel):
    """What ``evaluate-policy`` prints."""

    policy: str
    n: int
    alpha: float
    logging_value: Estimate
    estimates: dict[str, Estimate]
    mean_importance_weight: float
    context_columns: list[str]


def evaluable(log: pd.DataFrame) -> pd.DataFrame:
    """The decisions that showed an arm, with a usable probability; refuse bad logs."""
    if "probability" not in log.columns:
        raise DataError("the log has no 'probability' column (the logging policy's probability "
                        "of the logged action); off-policy evaluation needs it",
                        field="probability")
    shown = log[log["action"].notna() & ~log["control"]].reset_index(drop=True)
    if shown.empty:
        raise DataError("the log holds no decision that showed an arm", field="action")
    p = shown["probability"]
    if p.isna().any() or (p <= 0).any():
        bad = int((p.isna() | (p <= 0)).sum())
        raise DataError(f"{bad} of {len(shown)} logged decisions have a missing or zero "
                        "probability of the logged action; such a log cannot be "
                        "importance-weighted (log the pmf of the deciding policy)",
                        field="probability")
    return shown


def evaluate(log: pd.DataFrame, settings: Settings, policy: str, *, alpha: float = 0.05,
             n_bootstrap: int = 200, seed: int = 0) -> OpeReport:
    """Estimate ``policy``'s value on a normalised log (:func:`experiments.logs.read_log`)."""
    shown = evaluable(log)
    arms = [arm.name for arm in settings.bandit.arms]
    unknown = sorted(set(shown["action"]) - set(arms))
    if unknown:
        raise DataError(f"logged actions {unknown} are not arms of the config {arms}",
                        field="action")
    action = shown["action"].map({a: i for i, a in enumerate(arms)}).to_numpy(int)
    reward = shown["reward"].to_numpy(float)
    pscore = shown["probability"].to_numpy(float)
    dist = candidate_action_dist(policy, shown, settings)
    columns = context_columns(shown)
    q = fit_reward_model(shown[columns], action, reward, len(arms), seed=seed)
    estimates = {}
    for estimator in ESTIMATORS:
        interval = estimator.estimate_interval(reward, action, pscore, dist, q, alpha=alpha,
                                               n_bootstrap=n_bootstrap, seed=seed)
        estimates[estimator.name] = Estimate(**interval)
    weights = dist[np.arange(len(action)), action] / pscore
    return OpeReport(policy=policy, n=len(shown), alpha=alpha,
                     logging_value=Estimate(**_mean_interval(reward, alpha, n_bootstrap, seed)),
                     estimates=estimates, mean_importance_weight=float(weights.mean()),
                     context_columns=columns)


def _mean_interval(values: np.ndarray, alpha: float, n_bootstrap: int,
                   seed: int) -> dict[str, float]:
    """Bootstrap interval of a plain mean (the logging policy's observed value)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    means = np.array([values[rng.integers(0, n, n)].mean() for _ in range(n_bootstrap)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def format_report(report: OpeReport) -> str:
    """A readable table of the estimates for the terminal."""
    pct = int(round((1 - report.alpha) * 100))
    lines = [f"candidate policy {report.policy!r} on {report.n} logged decisions "
             f"(mean importance weight {report.mean_importance_weight:.3f})",
             f"{'estimator':<12}{'value':>12}{f'{pct}% low':>12}{f'{pct}% high':>12}"]
    rows = [("logged", report.logging_value)] + list(report.estimates.items())
    for name, est in rows:
        lines.append(f"{name:<12}{est.mean:>12.4f}{est.low:>12.4f}{est.high:>12.4f}")
    return "\n".join(lines)
