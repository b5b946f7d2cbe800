"""``nextbest policies evaluate | promote | compare``: champion and challengers on the log.

The *current* policy is the one that logged the decisions: its value on the log is the
reward it observed. A candidate's value is its doubly robust estimate on the same decisions
(:class:`experiments.ope.DoublyRobust`, the cross-fitted LightGBM reward model of
:func:`experiments.ope.fit_reward_model`). The gain is the paired per-decision difference

    gain_i = [sum_a pi_c(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i))] - r_i

with a seeded bootstrap ``(1 - alpha)`` interval over decisions. A candidate is *promotable*
only when the whole interval of its gain lies above zero: an interval that includes a loss
is refused, saying so.

A candidate's probability of each arm on each logged decision (``pi_c``):

- a fixed policy (``random``, ``static``, ``file.py:function``, a saved VW model):
  :func:`experiments.policies.candidate_action_dist`;
- a learning configuration (bandit overrides): *replayed* in log order, as it would have
  run: its pmf on each decision before it learns that decision's reward, and its reward
  model refit on the rewards before it (progressive validation, as Personalizer's offline
  evaluation does).

``compare`` reads the live log with the shadow's table: how often the shadow agreed with the
live policy, and the DR estimate of the shadow's value from its logged pmfs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from decisions.choosers import ChooserSpec
from decisions.encoding import BanditExample
from decisions.lifecycle import (
    candidate,
    candidate_settings,
    candidate_spec,
    live_policy,
    record_promotion,
)
from decisions.policy import CreditRule, PolicyLayer
from decisions.reward_model import TrainingRow, fit_reward_model
from experiments.evaluate import Estimate, evaluable, logged_arms
from experiments.logs import context_columns
from experiments.ope import DoublyRobust, importance_weights
from experiments.ope import fit_reward_model as fit_q
from experiments.policies import candidate_action_dist, logged_input
from nextbest.config import Settings
from nextbest.errors import Conflict, DataError

EXPERIMENT = "policy_promotion"


class CandidateEstimate(BaseModel):
    """One candidate against the current (logging) policy on the same decisions."""

    name: str
    value: Estimate          # DR estimate of the candidate's mean reward per decision
    gain: Estimate           # candidate minus current, paired
    effective_sample_size: float
    promotable: bool
    reason: str


class PolicyEvaluation(BaseModel):
    """What ``policies evaluate`` prints."""

    n: int
    alpha: float
    current: Estimate        # the logging policy's observed mean reward
    live_policy: str | None  # the promoted candidate in force, None: the configured one
    candidates: dict[str, CandidateEstimate]


# --------------------------------------------------------------------------- the estimates

def recent(log: pd.DataFrame, window: int) -> pd.DataFrame:
    """The newest ``window`` decisions that showed an arm, oldest first."""
    shown = evaluable(log)
    if "ts" in shown.columns:
        shown = shown.sort_values("ts", kind="mergesort")
    return shown.tail(window).reset_index(drop=True)


def replay_action_dist(settings: Settings, log: pd.DataFrame) -> np.ndarray:
    """A learning configuration's pmf on each logged decision, ``(n, k)``, replayed in
    order: it decides, then learns that decision's reward (module docstring)."""
    if "features" not in log.columns:
        raise DataError("a learning configuration can only be replayed on the service's "
                        "decision log (it needs the logged features)", field="policy")
    arms = [arm.name for arm in settings.bandit.arms]
    index = {arm: i for i, arm in enumerate(arms)}
    chooser = ChooserSpec("bandit").build(settings.bandit)
    layer = PolicyLayer(settings.bandit, CreditRule.from_settings(settings))
    config = settings.bandit.reward_model
    dist = np.zeros((len(log), len(arms)))
    learned: list[TrainingRow] = []
    try:
        for i, row in enumerate(log.to_dict("records")):
            decision = logged_input(row, arms, layer)
            if decision.arms:
                for arm, p in zip(decision.arms, chooser.pmf(decision), strict=True):
                    dist[i, index[arm]] = p
            if not bool(row.get("learnable", True)) or pd.isna(row.get("reward")):
                continue
            example = BanditExample.model_validate_json(row["features"])
            converted = bool(row.get("converted"))
            chooser.learn(example, row["action"], float(row["reward"]),
                          float(row["probability"]), converted)
            learned.append(TrainingRow(seq=i + 1, features=example.model_dump(),
                                       arm=row["action"], converted=converted))
            if getattr(chooser, "refit_due", lambda: False)():
                chooser.install(fit_reward_model(config, learned[-config.window:],
                                                 seed=settings.bandit.seed))
    finally:
        chooser.close()
    totals = dist.sum(axis=1, keepdims=True)
    return np.divide(dist, totals, out=np.zeros_like(dist), where=totals > 0)


def candidate_dist(settings: Settings, name: str, log: pd.DataFrame) -> np.ndarray:
    """The candidate's probability of every arm on every logged decision."""
    fixed = candidate(settings, name).policy
    if fixed is not None:
        return candidate_action_dist(fixed, log, settings)
    return replay_action_dist(candidate_settings(settings, name), log)


def _interval(values: np.ndarray, alpha: float, n_bootstrap: int, seed: int) -> Estimate:
    """Mean of ``values`` with a seeded percentile bootstrap interval."""
    rng = np.random.default_rng([seed, 0xB007])
    n = values.shape[0]
    means = np.array([values[rng.integers(0, n, n)].mean() for _ in range(n_bootstrap)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(mean=float(values.mean()), low=float(low), high=float(high))


def dr_terms(reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, dist: np.ndarray,
             q: np.ndarray) -> np.ndarray:
    """Per-decision doubly robust terms, shape ``(n,)``; their mean is
    :class:`experiments.ope.DoublyRobust`'s estimate."""
    rows = np.arange(action.shape[0])
    return ((dist * q).sum(axis=1)
            + importance_weights(action, pscore, dist) * (reward - q[rows, action]))


def verdict(gain: Estimate, pct: int) -> tuple[bool, str]:
    """Promotable only when the gain's interval excludes a loss; the reason in words."""
    if gain.low > 0:
        return True, (f"the {pct}% interval of the gain, [{gain.low:.4f}, {gain.high:.4f}], "
                      "lies above zero")
    if gain.mean <= 0:
        return False, (f"the candidate is estimated to lose {-gain.mean:.4f} per decision "
                       f"({pct}% interval [{gain.low:.4f}, {gain.high:.4f}])")
    return False, (f"its {pct}% interval of the gain, [{gain.low:.4f}, {gain.high:.4f}], "
                   "includes a loss: the log does not show that it beats the current policy")


def evaluate_candidates(log: pd.DataFrame, settings: Settings, names: list[str], *,
                        seed: int = 0) -> PolicyEvaluation:
    """Estimate each named candidate against the current policy on the recent log."""
    cfg = settings.policies
    names = names or sorted(cfg.candidates)
    if not names:
        raise DataError("no candidate policies: add some under policies.candidates",
                        field="policies.candidates")
    for name in names:
        candidate(settings, name)  # NotFound before any work
    shown = recent(log, cfg.window)
    arms, action, reward, pscore = logged_arms(shown, settings)
    q = fit_q(shown[context_columns(shown)], action, reward, len(arms), seed=seed)
    pct = int(round((1 - cfg.alpha) * 100))
    out: dict[str, CandidateEstimate] = {}
    for name in names:
        dist = candidate_dist(settings, name, shown)
        terms = dr_terms(reward, action, pscore, dist, q)
        value = DoublyRobust().estimate_policy_value(reward, action, pscore, dist, q)
        assert abs(value - terms.mean()) < 1e-9 * max(1.0, abs(value))
        gain = _interval(terms - reward, cfg.alpha, cfg.n_bootstrap, seed)
        weights = importance_weights(action, pscore, dist)
        ess = float(weights.sum() ** 2 / max(float(np.square(weights).sum()), 1e-12))
        ok, reason = verdict(gain, pct)
        out[name] = CandidateEstimate(
            name=name, value=_interval(terms, cfg.alpha, cfg.n_bootstrap, seed), gain=gain,
            effective_sample_size=ess, promotable=ok, reason=reason)
    record = live_policy(settings)
    return PolicyEvaluation(n=len(shown), alpha=cfg.alpha,
                            current=_interval(reward, cfg.alpha, cfg.n_bootstrap, seed),
                            live_policy=record["name"] if record else None, candidates=out)


def format_evaluation(report: PolicyEvaluation) -> str:
    pct = int(round((1 - report.alpha) * 100))
    lines = [f"{report.n} recent logged decisions; current policy "
             f"({report.live_policy or 'as configured'}) earned {report.current.mean:.4f} "
             f"per decision [{report.current.low:.4f}, {report.current.high:.4f}]",
             f"{'candidate':<16}{'DR value':>10}{'gain':>10}{f'{pct}% low':>10}"
             f"{f'{pct}% high':>10}{'ESS':>8}  verdict"]
    for c in report.candidates.values():
        lines.append(f"{c.name:<16}{c.value.mean:>10.4f}{c.gain.mean:>10.4f}"
                     f"{c.gain.low:>10.4f}{c.gain.high:>10.4f}{c.effective_sample_size:>8.0f}"
                     f"  {'promotable' if c.promotable else 'not promotable'}: {c.reason}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- promote

def log_decision(settings: Settings, report: PolicyEvaluation, name: str,
                 promoted: bool) -> str:
    """One MLflow run (experiment ``policy_promotion``): the estimates, the intervals and
    the decision. Returns the run id."""
    from training.registry import configure, experiment_id

    client = configure(settings)
    run = client.create_run(experiment_id(settings, client, EXPERIMENT),
                            run_name=f"promote-{name}")
    run_id = run.info.run_id
    chosen = report.candidates[name]
    client.log_param(run_id, "candidate", name)
    client.log_param(run_id, "decisions", report.n)
    client.log_param(run_id, "alpha", report.alpha)
    client.log_param(run_id, "current", report.live_policy or "configured")
    client.set_tag(run_id, "decision", "promoted" if promoted else "refused")
    client.set_tag(run_id, "reason", chosen.reason[:5000])
    for key, est in (("current", report.current), ("candidate", chosen.value),
                     ("gain", chosen.gain)):
        for part in ("mean", "low", "high"):
            client.log_metric(run_id, f"{key}_{part}", getattr(est, part))
    client.log_metric(run_id, "promoted", float(promoted))
    client.log_text(run_id, report.model_dump_json(indent=2), "evaluation.json")
    client.set_terminated(run_id)
    return run_id


def promote(log: pd.DataFrame, settings: Settings, name: str, *,
            seed: int = 0) -> tuple[PolicyEvaluation, str, Path | None]:
    """Evaluate ``name``; make it the live policy only when promotable. Logs the decision
    to MLflow either way; raises Conflict (the reason) on refusal, after logging."""
    candidate_spec(settings, name)  # only what can decide live can be promoted
    report = evaluate_candidates(log, settings, [name], seed=seed)
    chosen = report.candidates[name]
    run_id = log_decision(settings, report, name, chosen.promotable)
    if not chosen.promotable:
        raise Conflict(f"refused to promote {name!r}: {chosen.reason} (MLflow run {run_id})",
                       field="policy")
    path = record_promotion(settings, name, {"mlflow_run_id": run_id,
                                             **json.loads(chosen.model_dump_json())})
    return report, run_id, path


# ------------------------------------------------------------------------------- compare

class ShadowComparison(BaseModel):
    """What ``policies compare`` prints."""

    shadow: str
    decisions: int               # live bandit decisions the shadow saw
    agreement: float             # share where the shadow chose the live arm
    agreement_by_arm: dict[str, float]
    live_value: Estimate         # the live policy's observed mean reward on them
    shadow_value: Estimate       # DR estimate of the shadow's, from its logged pmfs
    gain: Estimate


def compare_shadow(path: Path, log: pd.DataFrame, settings: Settings, *,
                   shadow: str | None = None, seed: int = 0) -> ShadowComparison:
    """Agreement and off-policy value of the shadow on the live log at ``path``."""
    name = shadow or settings.policies.shadow
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master")}
        rows = (pd.read_sql_query("select event_id, action as shadow_action, pmf as "
                                  "shadow_pmf, policy from shadow_decisions", conn)
                if "shadow_decisions" in tables else pd.DataFrame())
    if name is None and not rows.empty:
        name = str(rows["policy"].iloc[-1])
    rows = rows[rows["policy"] == name] if not rows.empty else rows
    if rows.empty:
        raise DataError(f"{path}: no shadow decisions{f' of {name!r}' if name else ''}; "
                        "set policies.shadow and let the service decide", field="shadow")
    shown = evaluable(log).merge(rows, on="event_id", how="inner")
    shown = shown[shown["reward"].notna()].reset_index(drop=True)
    if shown.empty:
        raise DataError("no shadowed decision has a reward yet", field="shadow")
    arms = [arm.name for arm in settings.bandit.arms]
    action = shown["action"].map({a: i for i, a in enumerate(arms)}).to_numpy(int)
    reward = shown["reward"].to_numpy(float)
    pscore = shown["probability"].to_numpy(float)
    dist = np.array([[json.loads(p).get(arm, 0.0) for arm in arms]
                     for p in shown["shadow_pmf"]])
    q = fit_q(shown[context_columns(shown)], action, reward, len(arms), seed=seed)
    terms = dr_terms(reward, action, pscore, dist, q)
    cfg = settings.policies
    agree = shown["shadow_action"] == shown["action"]
    return ShadowComparison(
        shadow=str(name), decisions=len(shown), agreement=float(agree.mean()),
        agreement_by_arm={str(a): float(g.mean()) for a, g in agree.groupby(shown["action"])},
        live_value=_interval(reward, cfg.alpha, cfg.n_bootstrap, seed),
        shadow_value=_interval(terms, cfg.alpha, cfg.n_bootstrap, seed),
        gain=_interval(terms - reward, cfg.alpha, cfg.n_bootstrap, seed))


def format_comparison(report: ShadowComparison) -> str:
    by_arm = ", ".join(f"{a} {s:.0%}" for a, s in report.agreement_by_arm.items())
    return "\n".join([
        f"shadow {report.shadow!r} on {report.decisions} live decisions with a reward",
        f"agreement with the live policy: {report.agreement:.1%} (by live arm: {by_arm})",
        f"live policy, observed:   {report.live_value.mean:.4f} "
        f"[{report.live_value.low:.4f}, {report.live_value.high:.4f}]",
        f"shadow, DR estimate:     {report.shadow_value.mean:.4f} "
        f"[{report.shadow_value.low:.4f}, {report.shadow_value.high:.4f}]",
        f"gain (shadow - live):    {report.gain.mean:.4f} "
        f"[{report.gain.low:.4f}, {report.gain.high:.4f}]"])


def jsonable(report: BaseModel) -> dict[str, Any]:
    return json.loads(report.model_dump_json())
