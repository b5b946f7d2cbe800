"""Play every policy on the same simulated stream and measure what each earned.

For each request in order: conversions whose delay has passed are reported to the policy
(:meth:`SimPolicy.feedback`, through the engine's ``feedback`` for the bandits), then the
policy chooses, and the outcome is drawn with the stream's common random number (so every
policy faces the same luck). Non-conversions are reported after
``no_conversion_after_minutes``. The oracle is always played, since regret is measured
against it.

The simulated requests are in-page answers (``/next_best_action``): contact caps count
campaign messages only, so none bind here.
"""

from __future__ import annotations

import heapq
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from decisions.choosers import Truth
from decisions.encoding import DecisionInput
from decisions.policy import RequestContext, UserView, user_view
from decisions.reward import earned, reward_of
from experiments.policies import EnginePolicy, SimPolicy
from experiments.simulator import TRAIT_COLUMNS, SimulationConfig, Stream, make_stream
from features.segmentation import TIERS
from nextbest.config import RewardConfig, Settings

START = datetime(2026, 1, 5, tzinfo=UTC)
ProgressFn = Callable[[str, int, int], None]


class PolicyMetrics(BaseModel):
    """What one policy earned on the stream (rewards in ``settings.bandit.reward.kind``)."""

    decisions: int
    cumulative_reward: float
    mean_reward: float
    mean_reward_last: float          # realised, last 20% of the run
    expected_reward_last: float      # true expected reward of the choices, last 20%
    profit: float                    # revenue (its commission for sellers) - arm cost
    revenue: float
    arm_cost: float
    regret: float                    # sum of (oracle's expected reward - own), all steps
    conversion_rate: float
    arm_share: dict[str, float]
    arm_share_by_tier: dict[str, dict[str, float]]
    seconds: float
    decisions_per_second: float


@dataclass
class Trace:
    """Per-step outcome of one policy, each array of shape ``(n,)``."""

    arm: np.ndarray          # arm index, -1 for no action
    converted: np.ndarray
    revenue: np.ndarray
    cost: np.ndarray
    reward: np.ndarray
    expected: np.ndarray     # true expected reward of the chosen action
    control: np.ndarray
    seconds: float


ITEM_PREFIX = "item-"  # request t shows item "item-t": the oracle finds the step by it
SIM_SWEEP_SECONDS = 3600.0  # simulated time between sweeps: 1/168 of a 7-day reward window


def simulation_settings(settings: Settings) -> Settings:
    """``settings`` with the sweeper run every simulated hour, not every ``sweep_seconds``
    (a few decisions). The simulated requests are in-page answers, which contact caps never
    apply to."""
    bandit = settings.bandit
    sweep = max(bandit.sweep_seconds, SIM_SWEEP_SECONDS)
    return settings.model_copy(update={"bandit": bandit.model_copy(
        update={"sweep_seconds": sweep})})


def user_views(population: pd.DataFrame) -> list[UserView]:
    """One :class:`UserView` per population row (:func:`decisions.policy.user_view`): what
    a store record would hold, never the latent traits only the simulator knows."""
    observable = population.drop(columns=[c for c in TRAIT_COLUMNS if c in population.columns])
    return [user_view(str(row["user_id"]), row, churn_probability=row["churn_probability"],
                      purchase_propensity=row["purchase_propensity"],
                      personalization=bool(row.get("personalization", True)))
            for row in observable.to_dict("records")]


def contexts(stream: Stream) -> list[RequestContext]:
    """The request context of every step."""
    return [RequestContext(channel="app", page=str(page), item_id=f"{ITEM_PREFIX}{i}",
                           item_price=float(price), category=str(cat), hour=int(hour))
            for i, (page, price, cat, hour) in enumerate(
                zip(stream.page, stream.item_price, stream.category, stream.hour, strict=True))]


def stream_truth(stream: Stream, settings: Settings) -> Truth:
    """The oracle's view of the stream: the true expected reward of each eligible arm."""
    return values_truth(stream.expected_reward, settings)


def values_truth(values: np.ndarray, settings: Settings) -> Truth:
    """A :data:`Truth` reading each eligible arm's value of a request from ``values``
    (shape ``(n, k)``, arms in ``settings.bandit.arms`` order): the oracle's chooser then
    plays them greedily. A request is found by its ``item_id`` (:func:`contexts` names item
    ``t`` of step ``t``)."""
    arm_index = {arm.name: i for i, arm in enumerate(settings.bandit.arms)}

    def truth(decision: DecisionInput) -> list[float]:
        step = int(str(decision.context.item_id).removeprefix(ITEM_PREFIX))
        return [float(values[step, arm_index[arm]]) for arm in decision.arms]

    return truth


def play(policy: SimPolicy, stream: Stream, views: list[UserView],
         requests: list[RequestContext], settings: Settings, config: SimulationConfig,
         progress: ProgressFn | None = None) -> Trace:
    """Run ``policy`` over the stream with delayed feedback; returns its :class:`Trace`."""
    n = len(stream)
    arm_index = {arm.name: i for i, arm in enumerate(settings.bandit.arms)}
    trace = Trace(arm=np.full(n, -1), converted=np.zeros(n, bool), revenue=np.zeros(n),
                  cost=np.zeros(n), reward=np.zeros(n), expected=np.zeros(n),
                  control=np.zeros(n, bool), seconds=0.0)
    queue: list[tuple[float, int, object, bool, float]] = []
    started = time.perf_counter()
    every = max(n // 20, 1)
    for t in range(n):
        minute = float(stream.minute[t])
        while queue and queue[0][0] <= minute:
            due, _, choice, converted, revenue = heapq.heappop(queue)
            policy.feedback(choice, converted, revenue, START + timedelta(minutes=due))
        now = START + timedelta(minutes=minute)
        choice = policy.choose(t, views[stream.user_index[t]], requests[t], now)
        a = -1 if choice.action is None else arm_index[choice.action]
        p = stream.base_probability[t] if a < 0 else stream.probability[t, a]
        converted = bool(stream.uniform[t] < p)
        price = float(stream.item_price[t])
        revenue = stream.revenue(t, a) if converted else 0.0
        trace.arm[t], trace.converted[t], trace.control[t] = a, converted, choice.control
        trace.reward[t] = reward_of(settings.bandit, choice.action, converted, revenue, price)
        trace.revenue[t] = revenue
        trace.cost[t] = stream.cost[t, a] if (converted and a >= 0) else 0.0
        trace.expected[t] = (stream.base_expected_reward[t] if a < 0
                             else stream.expected_reward[t, a])
        delay = stream.delay[t] if converted else config.no_conversion_after_minutes
        heapq.heappush(queue, (minute + float(delay), t, choice, converted, revenue))
        if progress and (t + 1) % every == 0:
            progress(policy.name, t + 1, n)
    while queue:  # report the outcomes still pending so a kept log is complete
        due, _, choice, converted, revenue = heapq.heappop(queue)
        policy.feedback(choice, converted, revenue, START + timedelta(minutes=due))
    trace.seconds = time.perf_counter() - started
    return trace


def summarise(trace: Trace, oracle: Trace, tiers: np.ndarray, arms: list[str],
              reward: RewardConfig | None = None) -> PolicyMetrics:
    """The metrics of one trace, regret against the oracle's trace. ``profit`` is what the
    platform earns of the revenue (:func:`decisions.reward.earned` under ``reward``: all of
    it, or its commission at a seller decision point) minus the arm costs."""
    kept = trace.revenue if reward is None else earned(reward, trace.revenue)
    n = trace.arm.shape[0]
    last = slice(n - max(n // 5, 1), n)
    names = np.array(arms + ["none"])
    chosen = names[trace.arm]  # -1 indexes "none"
    share = pd.Series(chosen).value_counts(normalize=True)
    by_tier = pd.crosstab(tiers, chosen, normalize="index")
    return PolicyMetrics(
        decisions=n,
        cumulative_reward=float(trace.reward.sum()),
        mean_reward=float(trace.reward.mean()),
        mean_reward_last=float(trace.reward[last].mean()),
        expected_reward_last=float(trace.expected[last].mean()),
        profit=float((kept - trace.cost).sum()),
        revenue=float(trace.revenue.sum()),
        arm_cost=float(trace.cost.sum()),
        regret=float((oracle.expected - trace.expected).sum()),
        conversion_rate=float(trace.converted.mean()),
        arm_share={str(k): float(v) for k, v in share.items()},
        arm_share_by_tier={str(t): {str(a): float(v) for a, v in row.items()}
                           for t, row in by_tier.iterrows()},
        seconds=trace.seconds,
        decisions_per_second=n / trace.seconds if trace.seconds > 0 else float("inf"),
    )


@dataclass
class SimulationResult:
    """Everything a run produced: the stream, the per-policy traces and their metrics."""

    config: SimulationConfig
    stream: Stream
    tiers: np.ndarray
    arms: list[str]
    traces: dict[str, Trace]
    metrics: dict[str, PolicyMetrics]
    reward_kind: str  # settings.bandit.reward.kind: what "reward" means in the metrics
    decision_point: str = "buyer_offer"
    tier_order: tuple[str, ...] = TIERS  # the tiers of ``tiers``, in report order

    def ratios(self) -> dict[str, dict[str, float | None]]:
        """Per policy, the true expected reward of its last 20% of decisions as a share of
        the oracle's (``of_oracle``) and of the static rules' (``vs_static``, None when
        static was not played)."""
        n = len(self.stream)
        last = slice(n - max(n // 5, 1), n)
        oracle = float(self.traces["oracle"].expected[last].mean())
        static = (float(self.traces["static"].expected[last].mean())
                  if "static" in self.traces else None)
        return {name: {"of_oracle": m.expected_reward_last / oracle if oracle else None,
                       "vs_static": m.expected_reward_last / static if static else None}
                for name, m in self.metrics.items()}

    def to_json(self) -> dict:
        """The ``--json`` document of ``nextbest simulate``."""
        oracle = self.traces["oracle"].expected  # always played: regret is measured on it
        oracle_last = float(oracle[len(oracle) - max(len(oracle) // 5, 1):].mean())
        return {
            "decision_point": self.decision_point,
            "decisions": self.config.decisions, "seed": self.config.seed,
            "users": self.config.users, "drift": self.config.drift,
            "drift_index": self.stream.drift_index, "arms": self.arms,
            "reward_kind": self.reward_kind,
            "policies": {name: m.model_dump() for name, m in self.metrics.items()},
            "oracle_expected_reward_last": oracle_last,
            "ratios": self.ratios(),
        }


def spread(per_seed: dict[int, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Median, min and max over seeds of each policy's ``of_oracle`` and ``vs_static``
    (from each seed's :meth:`SimulationResult.to_json`), with the per-seed values."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    policies = dict.fromkeys(p for payload in per_seed.values() for p in payload["ratios"])
    for policy in policies:
        for key in ("of_oracle", "vs_static"):
            values = {seed: payload["ratios"][policy][key] for seed, payload in per_seed.items()
                      if payload["ratios"].get(policy, {}).get(key) is not None}
            if values:
                numbers = np.array(list(values.values()))
                out.setdefault(policy, {})[key] = {
                    "median": float(np.median(numbers)), "min": float(numbers.min()),
                    "max": float(numbers.max()),
                    "worst_seed": int(min(values, key=values.__getitem__)),
                    "by_seed": {str(seed): float(v) for seed, v in values.items()}}
    return out


USERS_FILE = "users.parquet"  # beside kept logs: who the simulated users were
USER_ATTRIBUTES = ("tier", "segment", "region", "is_student")


def write_users(population: pd.DataFrame, path: Path) -> None:
    """The simulated users' attributes (``user_id``, tier, segment, region, is_student) for
    reports that join a kept log on ``user_id`` (``nextbest audit fairness --users``)."""
    columns = ["user_id", *(c for c in USER_ATTRIBUTES if c in population.columns)]
    population[columns].to_parquet(path, index=False)


@dataclass(frozen=True)
class Side:
    """Who a simulation decides for: how its stream is drawn from a population, how a
    population row becomes the :class:`UserView` the engine sees, and the column holding
    the tier arm shares are broken down by (with its tiers in report order)."""

    subject: str
    make_stream: Callable[[Settings, pd.DataFrame, SimulationConfig], Stream]
    views: Callable[[pd.DataFrame], list[UserView]]
    tier_column: str
    tiers: tuple[str, ...]


BUYERS = Side("buyer", make_stream, user_views, "tier", TIERS)


def simulate(settings: Settings, population: pd.DataFrame, config: SimulationConfig,
             policies: list[str], *, log_dir: Path | None = None,
             progress: ProgressFn | None = None, side: Side = BUYERS) -> SimulationResult:
    """Run each named policy (plus the oracle) on one seeded stream over ``population``.

    ``settings`` is scoped to the decision point played (``settings.for_point``) and
    ``side`` says whom it decides for (:data:`BUYERS`, or
    :data:`experiments.seller_simulator.SELLERS` at a seller decision point).

    Every policy's decision log (the service's SQLite format, ``NAME.sqlite``) is kept in
    ``log_dir`` when given, for ``evaluate-policy``, ``abtest`` and ``audit fairness``, with
    the users' attributes in ``log_dir/users.parquet``; else discarded. The
    result's ``config.users`` is the population's size, whatever ``config`` said.
    """
    config = config.model_copy(update={"users": len(population)})
    sim_settings = simulation_settings(settings)
    stream = side.make_stream(sim_settings, population, config)
    views = side.views(population)
    requests = contexts(stream)
    arms = [arm.name for arm in sim_settings.bandit.arms]
    tiers = population[side.tier_column].to_numpy()[stream.user_index].astype(str)
    names = list(dict.fromkeys(["oracle", *policies]))
    traces: dict[str, Trace] = {}
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        write_users(population, Path(log_dir) / USERS_FILE)
    keep = nullcontext(str(log_dir)) if log_dir is not None else tempfile.TemporaryDirectory()
    truth = stream_truth(stream, sim_settings)
    with keep as scratch:
        for name in names:
            policy = EnginePolicy(sim_settings, name, config.seed,
                                  Path(scratch) / f"{name}.sqlite", truth=truth)
            try:
                traces[name] = play(policy, stream, views, requests, sim_settings, config,
                                    progress)
            finally:
                policy.close()
    metrics = {name: summarise(traces[name], traces["oracle"], tiers, arms,
                               sim_settings.bandit.reward)
               for name in names if name in policies}
    return SimulationResult(config=config, stream=stream, tiers=tiers, arms=arms,
                            traces=traces, metrics=metrics,
                            reward_kind=sim_settings.bandit.reward.kind,
                            decision_point=sim_settings.decision_point, tier_order=side.tiers)
