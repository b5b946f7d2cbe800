"""The dispatcher: sends due outbox messages to their channels, at least once.

One pass (:meth:`Dispatcher.run_once`) repeats until nothing is due:

1. claim a batch (``dispatch.batch``) in one write transaction: ``pending`` messages due at
   ``now`` on an enabled channel, and ``sending`` ones whose lease ran out, become
   ``sending`` until ``now + dispatch.lease_seconds`` with their attempt counted, so two
   dispatchers never claim the same message;
2. send them, at most ``dispatch.concurrency`` at a time (asyncio; one HTTP client with
   kept-alive connections per webhook channel);
3. in one transaction, record every attempt and settle each message: ``sent``; or
   ``pending`` again after an exponential backoff with full jitter (``backoff_seconds`` x
   2^(attempt-1), capped at ``backoff_max_seconds``, a uniform draw up to it); or ``dead``
   once ``max_attempts`` failed.

A dispatcher killed mid-batch loses nothing: its claims expire and another pass re-claims and
re-sends them, so at most the batch in flight is sent twice, with the same Idempotency-Key
(receivers dedupe on it). Time is a parameter (``now``), so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from campaigns.channels import Channel, SendResult, message_body, open_channels
from campaigns.store import Attempt, CampaignStore, Claim
from nextbest.config import DispatchConfig, Settings

log = logging.getLogger(__name__)


class DispatchReport(BaseModel):
    """What one pass did."""

    now: datetime
    batches: int
    claimed: int
    sent: int
    retried: int   # failed, pending again after a backoff
    dead: int      # failed for the last allowed time
    lost: int      # settled too late: the lease ran out and the message was claimed again
    seconds: float


def retry_delay(attempt: int, config: DispatchConfig, rng: random.Random) -> float:
    """Seconds before retrying after failed attempt ``attempt`` (1, 2, ...): a uniform draw
    in (0, min(backoff_max_seconds, backoff_seconds x 2^(attempt-1))] ("full jitter"), so
    the retries of a batch that failed together spread out instead of returning together."""
    ceiling = min(config.backoff_max_seconds, config.backoff_seconds * 2.0 ** (attempt - 1))
    return ceiling * (1.0 - rng.random())


class Dispatcher:
    """Sends the outbox of ``store`` through the enabled channels of ``settings``.

    ``environ`` holds the variables that ``secret_env`` names (the CLI passes the process
    environment); webhook secrets are read here, once. Not thread-safe: one pass at a time.
    """

    def __init__(self, settings: Settings, store: CampaignStore, *,
                 environ: Mapping[str, str] | None = None):
        self.config = settings.dispatch
        self.store = store
        self.arms = {arm.name: arm for arm in settings.bandit.arms}
        self.channels: dict[str, Channel] = open_channels(settings, environ or {})
        self.rng = random.Random(settings.seed)
        self.loop = asyncio.new_event_loop()
        slowest = max((c.timeout_seconds for c in settings.channels.values() if c.url),
                      default=0.0)
        waves = math.ceil(self.config.batch / self.config.concurrency)
        if slowest * waves >= self.config.lease_seconds:
            log.warning("dispatch.lease_seconds %.0f is shorter than a batch of timeouts "
                        "(%d waves x %.1f s): slow batches will be claimed and sent again",
                        self.config.lease_seconds, waves, slowest)

    def close(self) -> None:
        self.loop.run_until_complete(self._close_channels())
        self.loop.close()

    async def _close_channels(self) -> None:
        await asyncio.gather(*(channel.aclose() for channel in self.channels.values()))

    def run_once(self, now: datetime | None = None) -> DispatchReport:
        """Send batches until nothing is due; at ``now`` (fixed) or else the clock."""
        began = time.perf_counter()
        moment = now or datetime.now(UTC)
        counts = dict.fromkeys(("batches", "claimed", "sent", "retried", "dead", "lost"), 0)
        while True:
            moment = now or datetime.now(UTC)
            claims = self.store.claim_due(moment, channels=list(self.channels),
                                          limit=self.config.batch,
                                          lease_seconds=self.config.lease_seconds)
            if not claims:
                break
            results = self.loop.run_until_complete(self._send(claims))
            for key, n in self._settle(claims, results, moment).items():
                counts[key] += n
            counts["batches"] += 1
            counts["claimed"] += len(claims)
        return DispatchReport(now=moment, seconds=time.perf_counter() - began, **counts)

    def run(self, stop: threading.Event, interval: float, now: datetime | None = None,
            on_pass: Callable[[DispatchReport], None] | None = None) -> None:
        """Pass after pass, ``interval`` seconds apart, until ``stop`` is set (a batch in
        flight is finished and settled first)."""
        while not stop.is_set():
            report = self.run_once(now)
            if on_pass is not None:
                on_pass(report)
            if stop.wait(interval):
                return

    async def _send(self, claims: list[Claim]) -> list[SendResult]:
        gate = asyncio.Semaphore(self.config.concurrency)

        async def send(claim: Claim) -> SendResult:
            message = claim.message
            body = message_body(message, self.arms)
            async with gate:
                return await self.channels[message.channel].send(message.message_id, body)

        return await asyncio.gather(*(send(claim) for claim in claims))

    def _settle(self, claims: list[Claim], results: list[SendResult],
                moment: datetime) -> dict[str, int]:
        """Record each attempt (dated at its batch's claim) and settle its message."""
        counts = dict.fromkeys(("sent", "retried", "dead", "lost"), 0)
        with self.store.transaction():
            for claim, result in zip(claims, results, strict=True):
                message_id, attempt = claim.message.message_id, claim.attempt
                self.store.record_attempt(Attempt(
                    message_id=message_id, attempt=attempt, ts=moment, ok=result.ok,
                    status_code=result.status_code, error=result.error,
                    seconds=result.seconds))
                error = result.error or "failed"
                if result.ok:
                    outcome, settled = "sent", self.store.mark_sent(message_id, attempt, moment)
                elif attempt >= self.config.max_attempts:
                    outcome, settled = "dead", self.store.mark_dead(message_id, attempt, error)
                else:
                    retry_at = moment + timedelta(
                        seconds=retry_delay(attempt, self.config, self.rng))
                    outcome = "retried"
                    settled = self.store.mark_retry(message_id, attempt, retry_at, error)
                counts[outcome if settled else "lost"] += 1
        return counts
