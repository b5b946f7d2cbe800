"""A watchdog of the event loop: how long the loop was kept from running anything else.

Every route runs on one event loop per worker, so anything slow done on it (a VW checkpoint
written inline, a log scan, a wait on a SQLite lock) delays every other request of that
worker by as much. :class:`LoopWatchdog` is a task that sleeps ``interval`` seconds again
and again; how much later than asked it wakes is how long the loop was kept busy elsewhere
(a stall). It keeps the longest stall since it started and hands every new longest one to
``on_stall`` (the ``nextbest_event_loop_max_stall_seconds`` gauge of
:class:`serving.metrics.DomainMetrics`).

On a host shared with other work, a stall also holds the time the loop's thread was ready
to run but waited for a CPU (Linux ``/proc/self/task/<tid>/schedstat``): that is the host's
load, not this process's doing. The stall without it, the ``own`` stall (work or blocking
calls of this process), is tracked beside it (``on_own_stall``); where schedstat is not
available the two are the same. The longest pause of Python's garbage collector, which
stops every thread, is tracked too (``on_gc_pause``): the usual cause of an own stall.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Callable
from typing import Any

INTERVAL_SECONDS = 0.005
# Collector thresholds for a serving worker (CPython's default: 700, 10, 10). Measured with
# benchmarks/serve.py's open loop at ~190 requests/s: each request leaves objects alive for
# seconds (asyncio timer handles keep the request's context), so the default thresholds
# promote them to the older generations and scan them again and again: the longest pause was
# 200-270 ms; with these, 50-80 ms and p99 latencies 1.5-3x lower.
GC_THRESHOLDS = (10_000, 10, 1_000)


def quiet_collector() -> None:
    """Keep the garbage collector's pauses short in a worker that has finished starting.

    ``gc.freeze()`` moves everything start-up loaded (~450k objects: BentoML, MLflow,
    LightGBM, VW) out of every later collection: full collections over them stalled the loop
    0.4-0.7 s. Then :data:`GC_THRESHOLDS` make collections of the older generations rarer
    (a full one only after 1,000 collections of the middle one). Call it once, from the
    worker's start-up hook."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class RunqueueClock:
    """Seconds the calling thread has spent runnable but waiting for a CPU, so far."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(
                f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> float:
        if self._fd is None:
            return 0.0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LoopWatchdog:
    """Measures event-loop stalls from inside the loop (start it with :meth:`run`)."""

    def __init__(self, on_stall: Callable[[float], None] | None = None,
                 on_own_stall: Callable[[float], None] | None = None,
                 on_gc_pause: Callable[[float], None] | None = None,
                 interval: float = INTERVAL_SECONDS):
        self.interval = interval
        self.on_stall = on_stall
        self.on_own_stall = on_own_stall
        self.on_gc_pause = on_gc_pause
        self.max_stall = 0.0
        self.max_own_stall = 0.0
        self.max_gc_pause = 0.0
        self._gc_began = 0.0
        self._gc_reported = 0.0

    async def run(self) -> None:
        """Sleep, measure the oversleep, repeat until cancelled (timing the collector's
        pauses meanwhile)."""
        loop = asyncio.get_running_loop()
        waited = RunqueueClock()
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                began, began_waiting = loop.time(), waited()
                await asyncio.sleep(self.interval)
                stall = loop.time() - began - self.interval
                self.observe(stall, stall - (waited() - began_waiting))
                self._report_gc_pause()
        finally:
            gc.callbacks.remove(self._on_gc)
            waited.close()

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        """``gc.callbacks`` hook: time each collection, keep the longest.

        It only records: a collection can start inside any code holding any lock (a
        Prometheus metric's, say), so calling ``on_gc_pause`` from here could deadlock;
        :meth:`run` reports the new longest pause on its next wake-up."""
        if phase == "start":
            self._gc_began = time.perf_counter()
            return
        self.max_gc_pause = max(self.max_gc_pause, time.perf_counter() - self._gc_began)

    def _report_gc_pause(self) -> None:
        """Hand a longest GC pause not reported yet to ``on_gc_pause``."""
        pause = self.max_gc_pause
        if pause > self._gc_reported:
            self._gc_reported = pause
            if self.on_gc_pause is not None:
                self.on_gc_pause(pause)

    def observe(self, stall: float, own: float | None = None) -> None:
        """Record one oversleep of ``stall`` seconds, ``own`` of them not spent waiting
        for a CPU (default: all of them)."""
        own = stall if own is None else min(own, stall)
        if stall > self.max_stall:
            self.max_stall = stall
            if self.on_stall is not None:
                self.on_stall(stall)
        if own > self.max_own_stall:
            self.max_own_stall = own
            if self.on_own_stall is not None:
                self.on_own_stall(own)
