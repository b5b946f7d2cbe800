"""Run the simulation through the live HTTP service, and in-process, and check they agree.

``nextbest simulate --via-http URL`` proves that the in-process simulation measures what the
service does: the simulated population is written into the online store the service reads
(the CLI and the service share the settings, hence the store), then one seeded request
stream is played twice with the same runner (:func:`experiments.runner.play`):

* ``http``: every request is a ``POST /next_best_action``, every outcome a ``POST /feedback``
  (:class:`HttpPolicy`), one request at a time, each with a timeout;
* ``in_process``: the service's :class:`~decisions.engine.DecisionEngine` on a scratch log,
  with the service's own bandit seed and algorithm (:class:`~experiments.policies.EnginePolicy`).

Both modes see the users exactly as the service does (tier, segment, tags and model scores
from ``POST /score``, features through :func:`decisions.policy.user_view`), and both
report each outcome at once (no conversion delay), so that a single-worker inline service
on a fresh decision log may make the very same choices. Agreement is judged on the mean
reward per decision (a paired 95% interval of the per-request difference: both modes
replay the same requests with the same luck) and on the arm shares.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from scipy import stats

from decisions.policy import RequestContext, UserView, user_view
from experiments.policies import Choice, EnginePolicy
from experiments.runner import (
    PolicyMetrics,
    Trace,
    contexts,
    play,
    stream_truth,
    summarise,
)
from experiments.simulator import TRAIT_COLUMNS, SimulationConfig, Stream, make_stream
from features.store import Preferences, open_store
from nextbest.config import Settings
from nextbest.errors import MissingComponent, ValidationFailed

MAX_DECISIONS = 20_000
DEFAULT_DECISIONS = 3_000
DEFAULT_TIMEOUT_SECONDS = 10.0
SHARE_TOLERANCE = 0.05  # arm shares "agree" when no arm's share differs by more than this
IMMEDIATE_MINUTES = 1e-6  # "no conversion" reported before the next request arrives
# Columns of the simulated population that a real store record does not have.
NOT_IN_STORE = (*TRAIT_COLUMNS, "churn_probability", "purchase_propensity")


class ServiceUnavailable(MissingComponent):
    """The service did not answer, or answered a request with an error."""


class Agreement(BaseModel):
    """Do the two modes agree? ``reward_diff`` is http minus in-process."""

    reward_diff: float
    reward_diff_ci95: tuple[float, float]
    rewards_agree: bool  # the interval contains 0
    max_arm_share_diff: float
    share_tolerance: float
    arm_shares_agree: bool
    identical_actions: float  # share of requests where both modes chose the same arm


class ViaHttpResult(BaseModel):
    """The ``--json`` document of ``nextbest simulate --via-http``."""

    url: str
    policy: str
    decisions: int = Field(gt=0)
    users: int
    seed: int
    in_process: PolicyMetrics
    http: PolicyMetrics
    http_errors: int  # always 0: the first HTTP error stops the run (exit code 4)
    feedback_status: dict[str, int]
    agreement: Agreement


def post_json(client: httpx.Client, route: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to ``route`` and return the JSON answer, or raise naming the route."""
    try:
        answer = client.post(route, json=body)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"POST {route} failed: {exc!r}", field="via_http") from exc
    if answer.status_code >= 300:
        raise ServiceUnavailable(f"POST {route} answered {answer.status_code}: "
                                 f"{answer.text[:300]}", field="via_http")
    return answer.json()


class HttpPolicy:
    """A :class:`~experiments.policies.SimPolicy` that asks the live service for each choice.

    The service stamps decisions and feedback with its own clock; ``now`` is not sent.
    Any transport error or non-2xx answer stops the run (:class:`ServiceUnavailable`).
    """

    def __init__(self, client: httpx.Client, name: str):
        self.client = client
        self.name = name
        self.feedback_status: Counter[str] = Counter()

    def choose(self, step: int, user: UserView, context: RequestContext,
               now: datetime) -> Choice:
        decision = post_json(self.client, "/next_best_action", {
            "user_id": user.user_id, "context": context.model_dump(mode="json", exclude_none=True)})
        return Choice(action=decision["action"], probability=decision["probability"],
                      control=decision["control"], event_id=decision["event_id"])

    def feedback(self, choice: Choice, converted: bool, revenue: float, now: datetime) -> None:
        if choice.event_id is None:
            return
        result = post_json(self.client, "/feedback", {
            "event_id": choice.event_id, "converted": converted, "revenue": revenue})
        self.feedback_status[result["status"]] += 1

    def close(self) -> None:
        """The client belongs to the caller."""


def publish_population(settings: Settings, population: pd.DataFrame, as_of: date) -> int:
    """Write the population into the service's online store (and its consent, when the
    population has a ``personalization`` column); returns the records written."""
    store = open_store(settings)
    try:
        frame = population.drop(columns=[c for c in NOT_IN_STORE if c in population.columns])
        written = store.write(frame.drop(columns=["personalization"], errors="ignore"), as_of)
        if "personalization" in population.columns:
            for user_id, allowed in zip(population["user_id"], population["personalization"],
                                        strict=True):
                store.set_preferences(str(user_id), Preferences(personalization=bool(allowed)))
        return written
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def served_views(client: httpx.Client, population: pd.DataFrame,
                 batch: int) -> list[UserView]:
    """One :class:`UserView` per population row, as the service builds it: the service's
    ``/score`` answer (tier, segment, tags, model scores) over the row's store columns."""
    stored = population.drop(columns=[c for c in NOT_IN_STORE if c in population.columns])
    rows = stored.to_dict("records")
    views: list[UserView] = []
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        scored = post_json(client, "/score", {"user_ids": [str(r["user_id"]) for r in part]})
        for row, score in zip(part, scored, strict=True):
            if not score["known"]:
                raise ValidationFailed(
                    f"simulated user {score['user_id']} is unknown to the service: does it "
                    "read the same online store (same NEXTBEST__* settings)?", field="via_http")
            record = row | {key: score[key] for key in ("tier", "segment", "tags")}
            views.append(user_view(score["user_id"], record,
                                   churn_probability=score["churn_probability"],
                                   purchase_propensity=score["purchase_propensity"],
                                   personalization=bool(row.get("personalization", True))))
    return views


def immediate(stream: Stream) -> Stream:
    """The stream with every outcome reported at once (delay 0)."""
    return replace(stream, delay=np.zeros(len(stream)))


def paired_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` interval of ``mean(a - b)`` for paired samples (one stream, two modes)."""
    diff = a - b
    if np.all(diff == diff[0]):
        return float(diff[0]), float(diff[0])
    interval = stats.ttest_rel(a, b).confidence_interval(confidence_level=level)
    return float(interval.low), float(interval.high)


def agreement(http: Trace, local: Trace, http_m: PolicyMetrics, local_m: PolicyMetrics,
              tolerance: float = SHARE_TOLERANCE) -> Agreement:
    """Compare the two modes' rewards (paired interval) and arm shares (max absolute
    difference)."""
    low, high = paired_interval(http.reward, local.reward)
    arms = set(http_m.arm_share) | set(local_m.arm_share)
    share_diff = max((abs(http_m.arm_share.get(a, 0.0) - local_m.arm_share.get(a, 0.0))
                      for a in arms), default=0.0)
    return Agreement(
        reward_diff=float(http.reward.mean() - local.reward.mean()),
        reward_diff_ci95=(low, high), rewards_agree=bool(low <= 0.0 <= high),
        max_arm_share_diff=share_diff, share_tolerance=tolerance,
        arm_shares_agree=bool(share_diff <= tolerance),
        identical_actions=float((http.arm == local.arm).mean()))


def check_request(settings: Settings, config: SimulationConfig, policy: str) -> None:
    """Refuse runs that are unbounded or that the service cannot play."""
    if config.decisions > MAX_DECISIONS:
        raise ValidationFailed(f"decisions: at most {MAX_DECISIONS} through HTTP, got "
                               f"{config.decisions}", field="decisions")
    served = settings.bandit.exploration.algorithm
    if policy != served:
        raise ValidationFailed(f"policies: the service runs {served!r} "
                               f"(bandit.exploration.algorithm), cannot compare {policy!r}",
                               field="policies")


def compare_via_http(settings: Settings, url: str, population: pd.DataFrame,
                     config: SimulationConfig, *, policy: str | None = None,
                     timeout: float = DEFAULT_TIMEOUT_SECONDS, as_of: date | None = None,
                     api_key: str | None = None) -> ViaHttpResult:
    """Play one seeded stream through the service at ``url`` and in-process; compare them.

    ``settings`` must be the service's (same store, bandit seed and algorithm); the
    in-process run uses them unchanged, with immediate feedback in both modes.
    """
    policy = policy or settings.bandit.exploration.algorithm
    check_request(settings, config, policy)
    publish_population(settings, population, as_of or datetime.now(UTC).date())
    stream = immediate(make_stream(settings, population, config))
    run_config = config.model_copy(update={"no_conversion_after_minutes": IMMEDIATE_MINUTES})
    requests = contexts(stream)
    arms = [arm.name for arm in settings.bandit.arms]
    tiers = population["tier"].to_numpy()[stream.user_index].astype(str)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, timeout=timeout, headers=headers) as client:
        views = served_views(client, population, settings.serving.max_batch)
        with tempfile.TemporaryDirectory() as scratch:
            oracle_policy = EnginePolicy(settings, "oracle", config.seed,
                                         Path(scratch) / "oracle.sqlite",
                                         truth=stream_truth(stream, settings))
            local = EnginePolicy(settings, policy, settings.bandit.seed,
                                 Path(scratch) / f"{policy}.sqlite")
            try:
                oracle = play(oracle_policy, stream, views, requests, settings, run_config)
                local_trace = play(local, stream, views, requests, settings, run_config)
            finally:
                oracle_policy.close()
                local.close()
        remote = HttpPolicy(client, policy)
        http_trace = play(remote, stream, views, requests, settings, run_config)
    local_m = summarise(local_trace, oracle, tiers, arms)
    http_m = summarise(http_trace, oracle, tiers, arms)
    return ViaHttpResult(
        url=url, policy=policy, decisions=len(stream), users=len(population), seed=config.seed,
        in_process=local_m, http=http_m, http_errors=0,
        feedback_status=dict(remote.feedback_status),
        agreement=agreement(http_trace, local_trace, http_m, local_m))


def format_via_http(result: ViaHttpResult) -> str:
    """The comparison table of ``simulate --via-http``."""
    lines = [f"{result.policy} on {result.decisions} decisions, {result.users} users, seed "
             f"{result.seed}; service {result.url}",
             f"{'mode':<12}{'mean reward':>14}{'conv':>8}{'dec/s':>9}  arm share"]
    for mode, m in (("in_process", result.in_process), ("http", result.http)):
        shares = ", ".join(f"{a} {s:.3f}" for a, s in sorted(m.arm_share.items()))
        lines.append(f"{mode:<12}{m.mean_reward:>14.4f}{m.conversion_rate:>8.3f}"
                     f"{m.decisions_per_second:>9.0f}  {shares}")
    a = result.agreement
    lines += [
        f"reward difference (http - in-process) {a.reward_diff:+.4f}, 95% CI "
        f"[{a.reward_diff_ci95[0]:+.4f}, {a.reward_diff_ci95[1]:+.4f}]: "
        f"{'agree' if a.rewards_agree else 'DISAGREE'}",
        f"largest arm share difference {a.max_arm_share_diff:.3f} (tolerance "
        f"{a.share_tolerance:.2f}): {'agree' if a.arm_shares_agree else 'DISAGREE'}",
        f"identical actions {a.identical_actions:.1%}; HTTP errors {result.http_errors}; "
        f"feedback {dict(sorted(result.feedback_status.items()))}",
    ]
    return "\n".join(lines)
