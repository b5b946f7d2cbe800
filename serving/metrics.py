"""nextbest's own Prometheus series, beside BentoML's request metrics on ``/metrics``.

Created in each worker after BentoML set up multiprocess collection (so every worker's
counts reach ``/metrics``); labels come from bounded sets only: the configured arms (plus
``none``), the tiers of :data:`features.segmentation.TIERS` (plus ``unknown``) and the
decision point, never a user id or a free-text value.

- ``nextbest_decisions_total{decision_point, arm, tier}``
- ``nextbest_rewards_total{decision_point, arm, tier, outcome}`` (outcome: converted,
  not_converted, duplicate, late)
- ``nextbest_model_info{model, version}`` (1 for the champion version this worker serves)
- ``nextbest_features_age_days``: days since the online store's latest ``as_of``
- ``nextbest_learner_lag_rewards``: rewards in the decision log the deciding model has not
  learned yet
- ``nextbest_http_requests_total{route, method, status}`` and
  ``nextbest_http_request_seconds{route, method}``: by route template (serving/guard.py)
- ``nextbest_event_loop_max_stall_seconds{cause}``: the longest the worker's event loop was
  kept from running other requests since it started; ``cause="all"``, ``cause="own"``
  without the time its thread waited for a CPU taken by other processes, ``cause="blocked"``
  the longest part of a stall its thread spent on no CPU (the disk, a lock), and
  ``cause="gc"`` the longest garbage-collector pause (:mod:`serving.loopwatch`)
- ``nextbest_event_loop_recent_max_stall_seconds{cause}``: the same over the last 2-4 s
  (``all``, ``own``, ``blocked``), for a reader polling it (benchmarks/serve.py's checkpoint
  phase)
- ``nextbest_gc_collections{generation}`` and ``nextbest_gc_longest_pause_seconds{generation}``:
  the collector's runs per generation since the worker started, and the longest of each

:func:`metrics_text` renders every worker's series for ``/metrics``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from features.segmentation import TIERS
from nextbest.config import Settings

DECISION_POINT = "buyer_offer"
NO_ARM = "none"
OTHER = "unknown"


class DomainMetrics:
    """The series of one worker process."""

    def __init__(self, settings: Settings):
        import prometheus_client as prom  # after BentoML set PROMETHEUS_MULTIPROC_DIR

        self.arms = {arm.name for arm in settings.bandit.arms}
        self.tiers = set(TIERS)
        self.decisions = prom.Counter(
            "nextbest_decisions", "Decisions made, by decision point, arm and tier",
            ["decision_point", "arm", "tier"])
        self.rewards = prom.Counter(
            "nextbest_rewards", "Feedback received, by decision point, arm, tier and outcome",
            ["decision_point", "arm", "tier", "outcome"])
        self.model_info = prom.Gauge(
            "nextbest_model_info", "1 for each champion model version served",
            ["model", "version"], multiprocess_mode="livemax")
        self.features_age = prom.Gauge(
            "nextbest_features_age_days", "Days since the online store's latest features as_of",
            multiprocess_mode="livemax")
        self.learner_lag = prom.Gauge(
            "nextbest_learner_lag_rewards",
            "Rewards logged that the deciding model has not learned yet",
            multiprocess_mode="livemax")
        self.requests = prom.Counter(
            "nextbest_http_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"])
        self.request_seconds = prom.Histogram(
            "nextbest_http_request_seconds", "HTTP request duration by route template",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.loop_stall = prom.Gauge(
            "nextbest_event_loop_max_stall_seconds", "Longest event-loop stall of a worker "
            "since it started (own: less waits for a CPU; blocked: the longest part of one spent "
            "off the CPU, on the disk or a lock; gc: the collector's longest pause)",
            ["cause"],
            multiprocess_mode="livemax")
        self.recent_stall = prom.Gauge(
            "nextbest_event_loop_recent_max_stall_seconds", "Longest event-loop stall of a "
            "worker in the last 2-4 seconds (own: less waits for a CPU; blocked: off the CPU)",
            ["cause"],
            multiprocess_mode="livemax")
        self.gc_collections = prom.Gauge(
            "nextbest_gc_collections", "Garbage collections of each generation since the "
            "worker started", ["generation"], multiprocess_mode="livesum")
        self.gc_longest = prom.Gauge(
            "nextbest_gc_longest_pause_seconds", "The longest garbage collection of each "
            "generation since the worker started", ["generation"], multiprocess_mode="livemax")
        self._versions: dict[str, str] = {}

    def recent_stall_seconds(self, stall: float, own: float, blocked: float) -> None:
        """The longest stall of the last few seconds (serving/loopwatch.py)."""
        self.recent_stall.labels("all").set(stall)
        self.recent_stall.labels("own").set(own)
        self.recent_stall.labels("blocked").set(blocked)

    def collections(self, generation: int, count: int, longest: float) -> None:
        """The garbage collector's work in one generation so far (serving/loopwatch.py)."""
        self.gc_collections.labels(str(generation)).set(count)
        self.gc_longest.labels(str(generation)).set(longest)

    def _arm(self, arm: str | None) -> str:
        return NO_ARM if arm is None else arm if arm in self.arms else OTHER

    def _tier(self, tier: str | None) -> str:
        return tier if tier in self.tiers else OTHER

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request under its route template (never its raw path)."""
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def decided(self, arm: str | None, tier: str | None) -> None:
        """Count one decision."""
        self.decisions.labels(DECISION_POINT, self._arm(arm), self._tier(tier)).inc()

    def rewarded(self, arm: str | None, tier: str | None, status: str, converted: bool) -> None:
        """Count one feedback by what happened to it."""
        outcome = status if status in ("duplicate", "late") else (
            "converted" if converted else "not_converted")
        self.rewards.labels(DECISION_POINT, self._arm(arm), self._tier(tier), outcome).inc()

    def models(self, versions: dict[str, str | None]) -> None:
        """Show the versions served now (the previous ones drop to 0)."""
        for model, version in self._versions.items():
            self.model_info.labels(model, version).set(0)
        self._versions = {m: v for m, v in versions.items() if v is not None and m != "warning"}
        for model, version in self._versions.items():
            self.model_info.labels(model, version).set(1)

    def freshness(self, as_of: str | None, lag: int, today: date | None = None) -> None:
        """Features age (days since ``as_of``) and the learner's lag in rewards."""
        if as_of:
            today = today or datetime.now(UTC).date()
            self.features_age.set((today - date.fromisoformat(as_of[:10])).days)
        self.learner_lag.set(lag)


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus text of every worker of this service (multiprocess collection), and
    its content type."""
    import prometheus_client as prom
    from prometheus_client import multiprocess

    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
