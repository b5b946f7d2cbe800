"""The decision points of one process: an engine per point, and the routing between them.

A decision point (``decision_points.<name>`` in config: ``buyer_offer`` by default,
``seller_offer`` for consignors) has its own arms, policy rules, reward, VW model,
checkpoint, learner lease and statistics, so each gets its own
:class:`~decisions.engine.DecisionEngine`, scoped with ``settings.for_point(name)``. All of
them write the one decision log, each row marked with its point: a request names its point
(none: ``buyer_offer``), and feedback finds the engine of its decision by the event id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any

from decisions.decision_log import FeedbackResult
from decisions.engine import DecisionEngine
from nextbest.config import DEFAULT_POINT, Settings
from nextbest.errors import ConfigError, Conflict, NotFound


class DecisionPoints:
    """The engines of every enabled decision point, the default point's first."""

    def __init__(self, engines: Mapping[str, DecisionEngine]):
        self.engines = dict(engines)

    @classmethod
    def open(cls, settings: Settings,
             open_one: Callable[[Settings], DecisionEngine]) -> DecisionPoints:
        """One engine per enabled point, made by ``open_one`` from the settings scoped to
        it; the ones already open are closed when a later one fails. ConfigError when the
        default point is switched off (requests that name no point need it)."""
        if DEFAULT_POINT not in settings.point_names:
            raise ConfigError(f"decision point {DEFAULT_POINT!r} is switched off; it decides "
                              "every request that names no decision point",
                              field=f"decision_points.{DEFAULT_POINT}.enabled")
        engines: dict[str, DecisionEngine] = {}
        try:
            for name in settings.point_names:
                engines[name] = open_one(settings.for_point(name))
        except BaseException:
            for engine in engines.values():
                engine.close()
            raise
        return cls(engines)

    @classmethod
    def single(cls, engine: DecisionEngine) -> DecisionPoints:
        """Only ``engine`` (of any point): what a caller with one engine hands over."""
        return cls({engine.point: engine})

    @property
    def default(self) -> DecisionEngine:
        """The engine of ``buyer_offer`` (or the only one)."""
        return self.engines.get(DEFAULT_POINT) or next(iter(self.engines.values()))

    def __iter__(self) -> Iterator[DecisionEngine]:
        return iter(self.engines.values())

    def get(self, name: str | None) -> DecisionEngine:
        """The engine of decision point ``name`` (None: the default); NotFound naming
        ``decision_point`` and the points there are."""
        engine = self.engines.get(name or DEFAULT_POINT)
        if engine is None:
            raise NotFound(f"decision point {name!r} is not served here; the decision points "
                           f"are {', '.join(self.engines)}", field="decision_point")
        return engine

    def feedback(self, event_id: str, converted: bool, revenue: float = 0.0, *,
                 point: str | None = None, now: datetime | None = None,
                 key_id: str | None = None) -> FeedbackResult:
        """Join a reward to its decision in the engine of its point: ``point`` when the
        caller names it (it must be the decision's: Conflict otherwise), else the engine that
        remembers the decision, else the one its logged row names (read once, handed on).
        NotFound for an unknown event; Conflict when its point is no longer served."""
        if point is not None:
            return self.get(point).feedback(event_id, converted, revenue, now=now,
                                            key_id=key_id)
        for engine in self.engines.values():
            if engine.remembers(event_id):
                return engine.feedback(event_id, converted, revenue, now=now, key_id=key_id)
        logged = self.default.log.get_decision(event_id)
        if logged is None:
            raise NotFound(f"no decision with event_id {event_id!r}", field="event_id")
        named = logged.decision.decision_point
        if named not in self.engines:
            raise Conflict(f"event {event_id!r} is a decision of decision point {named!r}, "
                           "which is not served any more (enabled: false?)",
                           field="decision_point")
        return self.engines[named].feedback(event_id, converted, revenue, now=now,
                                            key_id=key_id, logged=logged)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """On the event loop, around synchronous calls that may write any point's log
        (feedback, campaign firings): every log's gate, entered without blocking the loop
        (one gate when the points share a file, as they do by default)."""
        gates = list({id(engine.gate): engine.gate for engine in self}.values())
        async with AsyncExitStack() as stack:
            for gate in gates:
                await stack.enter_async_context(gate.writing())
            yield

    # -- every point at once ----------------------------------------------------------------
    def checkpoint_if_due(self) -> None:
        for engine in self.engines.values():
            engine.checkpoint_if_due()

    def learner_lag(self) -> int:
        """Rewards in the log that the deciding models do not cover yet (all points)."""
        return sum(engine.learner_lag() for engine in self.engines.values())

    def stats(self, name: str | None = None) -> dict[str, Any]:
        """``/bandit/stats`` of one point (default ``buyer_offer``), with the points there
        are."""
        return {**self.get(name).stats(), "decision_points": list(self.engines)}

    def remembered_users(self) -> set[str]:
        return set().union(*(engine.remembered_users() for engine in self.engines.values()))

    def forget_user(self, user_id: str) -> int:
        return sum(engine.forget_user(user_id) for engine in self.engines.values())

    def erase_user(self, user_id: str) -> int:
        """Delete every decision of ``user_id`` at every point (one log holds them all)."""
        for engine in self.engines.values():
            engine.forget_user(user_id)
        return self.default.erase_user(user_id)

    def export_user(self, user_id: str) -> list[dict[str, Any]]:
        """Every decision of ``user_id`` at every point, with its reward."""
        for engine in self.engines.values():
            engine.flush()
        return self.default.export_user(user_id)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
