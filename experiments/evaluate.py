"""Offline evaluation of a candidate policy on a decision log (``nextbest evaluate-policy``).

Only decisions that showed an arm are evaluated (control-group and no-action decisions have
no arm to re-weight). The logging policy's observed value is the mean reward of those
decisions; each estimator of :data:`experiments.ope.ESTIMATORS` gives the candidate's value
with a bootstrap interval. DR's reward model is the cross-fitted LightGBM of
:func:`experiments.ope.fit_reward_model` on the log's context columns
(:func:`experiments.logs.context_columns`).

Every estimate is only as good as the log's support of the candidate: the report gives
the effective sample size of the importance weights, the largest weight and the share of
the candidate's probability on arms the logger rarely chose, and warns when they say the
numbers are not to be trusted.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from pydantic import BaseModel

from experiments.logs import context_columns
from experiments.ope import (
    ESTIMATORS,
    effective_sample_size,
    fit_reward_model,
    importance_weights,
    low_support_share,
)
from experiments.policies import candidate_action_dist
from nextbest.config import Settings
from nextbest.errors import DataError

# An arm the logger chose with a probability below this is "rarely acted on".
LOW_PROBABILITY = 0.05
# Warn when the candidate puts more than this share of its probability there ...
MAX_LOW_SUPPORT_SHARE = 0.05
# ... or when the importance weights leave fewer effective decisions than this share of the
# log, or than this number.
MIN_ESS_SHARE = 0.1
MIN_ESS = 100


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
    max_importance_weight: float
    effective_sample_size: float     # Kish: (sum w)^2 / sum w^2
    low_support_threshold: float
    low_support_share: float         # candidate's probability on arms the logger chose
    #                                  with probability < low_support_threshold
    low_support_from: str            # "logged pmf" (exact) or "importance weights" (estimate)
    warnings: list[str]
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


def logged_arms(shown: pd.DataFrame, settings: Settings
                ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The configured arms and, per logged decision that showed one, its arm's index, its
    reward and its logged probability; DataError naming a logged arm no longer configured."""
    arms = [arm.name for arm in settings.bandit.arms]
    unknown = sorted(set(shown["action"]) - set(arms))
    if unknown:
        raise DataError(f"logged actions {unknown} are not arms of the config {arms}",
                        field="action")
    action = shown["action"].map({a: i for i, a in enumerate(arms)}).to_numpy(int)
    return (arms, action, shown["reward"].to_numpy(float),
            shown["probability"].to_numpy(float))


def evaluate(log: pd.DataFrame, settings: Settings, policy: str, *, alpha: float = 0.05,
             n_bootstrap: int = 200, seed: int = 0) -> OpeReport:
    """Estimate ``policy``'s value on a normalised log (:func:`experiments.logs.read_log`)."""
    shown = evaluable(log)
    arms, action, reward, pscore = logged_arms(shown, settings)
    dist = candidate_action_dist(policy, shown, settings)
    columns = context_columns(shown)
    q = fit_reward_model(shown[columns], action, reward, len(arms), seed=seed)
    estimates = {}
    for estimator in ESTIMATORS:
        interval = estimator.estimate_interval(reward, action, pscore, dist, q, alpha=alpha,
                                               n_bootstrap=n_bootstrap, seed=seed)
        estimates[estimator.name] = Estimate(**interval)
    weights = importance_weights(action, pscore, dist)
    logging_dist = logged_pmf(shown, arms)
    low_support = low_support_share(dist, LOW_PROBABILITY, logging_dist=logging_dist,
                                    action=action, pscore=pscore)
    ess = effective_sample_size(weights)
    return OpeReport(policy=policy, n=len(shown), alpha=alpha,
                     logging_value=Estimate(**_mean_interval(reward, alpha, n_bootstrap, seed)),
                     estimates=estimates, mean_importance_weight=float(weights.mean()),
                     max_importance_weight=float(weights.max()), effective_sample_size=ess,
                     low_support_threshold=LOW_PROBABILITY, low_support_share=low_support,
                     low_support_from=("logged pmf" if logging_dist is not None
                                       else "importance weights"),
                     warnings=support_warnings(len(shown), ess, float(weights.max()),
                                               low_support),
                     context_columns=columns)


def logged_pmf(log: pd.DataFrame, arms: list[str]) -> np.ndarray | None:
    """The logging policy's probability of every arm, ``(n, k)``, from the log's ``pmf``
    column (JSON ``{arm: p}``, as the service logs it); None when the log has no pmf."""
    if "pmf" not in log.columns:
        return None
    dist = np.zeros((len(log), len(arms)))
    for i, raw in enumerate(log["pmf"]):
        if not isinstance(raw, str) or not raw.startswith("{"):
            return None
        pmf = json.loads(raw)
        dist[i] = [float(pmf.get(arm, 0.0)) for arm in arms]
    return dist


def support_warnings(n: int, ess: float, max_weight: float, low_support: float) -> list[str]:
    """What makes the estimates untrustworthy, in words (empty when nothing does)."""
    warnings = []
    if low_support > MAX_LOW_SUPPORT_SHARE:
        warnings.append(
            f"the candidate puts {low_support:.0%} of its probability on arms the logging "
            f"policy chose with probability below {LOW_PROBABILITY:g}: the log barely shows "
            "what happens there, so IPS and SNIPS rest on a few heavily weighted decisions and "
            "DR on its reward model; the estimates and their intervals may be far off")
    if ess < MIN_ESS or ess < MIN_ESS_SHARE * n:
        warnings.append(
            f"effective sample size {ess:.0f} of {n} decisions (largest importance weight "
            f"{max_weight:.1f}): too few effective decisions, the intervals understate the "
            "uncertainty")
    return warnings


def _mean_interval(values: np.ndarray, alpha: float, n_bootstrap: int,
                   seed: int) -> dict[str, float]:
    """Bootstrap interval of a plain mean (the logging policy's observed value)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    means = np.array([values[rng.integers(0, n, n)].mean() for _ in range(n_bootstrap)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def format_report(report: OpeReport) -> str:
    """A readable table of the estimates for the terminal (the warnings go to stderr)."""
    pct = int(round((1 - report.alpha) * 100))
    lines = [f"candidate policy {report.policy!r} on {report.n} logged decisions",
             f"importance weights: mean {report.mean_importance_weight:.3f}, largest "
             f"{report.max_importance_weight:.1f}, effective sample size "
             f"{report.effective_sample_size:.0f}; {report.low_support_share:.1%} of the "
             f"candidate's probability on arms logged with p < {report.low_support_threshold:g}",
             f"{'estimator':<12}{'value':>12}{f'{pct}% low':>12}{f'{pct}% high':>12}"]
    rows = [("logged", report.logging_value)] + list(report.estimates.items())
    for name, est in rows:
        lines.append(f"{name:<12}{est.mean:>12.4f}{est.low:>12.4f}{est.high:>12.4f}")
    return "\n".join(lines)
