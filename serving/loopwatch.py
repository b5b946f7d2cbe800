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
available the two are the same. Of the own stall, the time the thread was on no CPU at all
(beyond the sleep asked for) is the ``blocked`` part (``on_blocked``): a wait for the disk
or a lock, which more CPU would not shorten. The longest pause of Python's garbage
collector, which stops every thread, is tracked too (``on_gc_pause``): the usual cause of
an own stall; and per generation, how many collections ran and the longest of each
(``on_collections``), so a long pause can be told from many short ones.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.005
# The window of the recent longest stall (``on_recent``): a reader polling every second sees
# every stall.
RECENT_SECONDS = 2.0
# Collector thresholds for a serving worker (CPython's default: 700, 10, 10), the default of
# ``serving.gc_thresholds``. Once nothing a request makes outlives it by long (the decision
# cache holds plain rows; serving/traffic.py cancels the request timeout's timer; no
# OpenTelemetry spans), a young collection only frees the cyclic garbage of the requests
# since the last one: its pause grows with the first threshold (10,000: ~20 ms on this
# host, 2,000: a few ms), and the older generations stay nearly empty, so full collections
# are both rare and short.
GC_THRESHOLDS = (2_000, 10, 100)


def quiet_collector(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Keep the garbage collector's pauses short in a worker that has finished starting.

    ``gc.freeze()`` moves everything start-up loaded (~450k objects: BentoML, MLflow,
    LightGBM, VW) out of every later collection: full collections over them stalled the loop
    0.4-0.7 s. Then ``thresholds`` (:data:`GC_THRESHOLDS` by default) keep the young
    collections short. Call it from the worker's start-up hook, and again after loading
    new models (what they loaded is long-lived too)."""
    gc.freeze()
    gc.set_threshold(*thresholds)


def schedstat_seconds(schedstat: bytes | str) -> tuple[float, float]:
    """A thread's ``/proc/.../schedstat`` as (seconds on a CPU, seconds runnable waiting for
    one); ValueError when it is not one."""
    fields = schedstat.split()
    if len(fields) < 2:
        raise ValueError(f"not a schedstat line: {schedstat!r}")
    return int(fields[0]) / 1e9, int(fields[1]) / 1e9


class RunqueueClock:
    """Seconds the calling thread has spent on a CPU, and runnable but waiting for one, so
    far (:meth:`both`)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(
                f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    @property
    def available(self) -> bool:
        """Whether this kernel tells (``schedstat``); without it every reading is 0."""
        return self._fd is not None

    def both(self) -> tuple[float, float]:
        """(seconds on a CPU, seconds runnable waiting for one) so far; (0, 0) where
        schedstat is not available."""
        if self._fd is None:
            return 0.0, 0.0
        try:
            return schedstat_seconds(os.pread(self._fd, 128, 0))
        except (OSError, ValueError):
            return 0.0, 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


OTHER_THREAD_FRAMES = 3  # of each other thread, in a stall's trace
# A stall with at least this long blocked on no CPU (the disk, a lock) logs a WARNING, at
# most once every BLOCKED_WARNING_EVERY seconds: with no trace configured, the operator
# still learns that the host's disk held every request of the worker.
BLOCKED_WARNING_SECONDS = 0.05
BLOCKED_WARNING_EVERY = 60.0


def kernel_state(native_id: int | None) -> str:
    """Where the kernel has a thread now: its state (``R`` running or waiting for a CPU,
    ``S`` asleep, ``D`` waiting for the disk, ...) and, asleep, the kernel function it
    waits in (``/proc``'s ``wchan``: ``jbd2_log_wait_commit`` is a write waiting for the
    file system's journal); "" where ``/proc`` does not say."""
    if native_id is None:
        return ""
    task = f"/proc/self/task/{native_id}"
    try:
        with open(f"{task}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
    try:
        with open(f"{task}/wchan") as wchan:
            waits_in = wchan.read().strip()
    except OSError:
        waits_in = ""
    return state if waits_in in ("", "0") else f"{state} in {waits_in}"


class StallTracer:
    """Logs where the event loop's thread is while the loop is stalled (a loop-stall trace).

    A daemon thread looks every ``threshold / 4`` seconds at the time of the loop's last
    turn (:meth:`beat`, called by the watchdog each time it wakes); once the loop has not
    turned for ``threshold`` seconds, it logs the loop thread's stack at that moment, its
    state in the kernel (:func:`kernel_state`: a Python stack in a SQLite call reads the
    same whether the thread computes or waits for the disk), and the innermost frames of
    every other thread, once per stall, with ``WARNING``. Opt in with
    ``serving.stall_trace_ms`` (the thread costs a wake-up every few ms)."""

    def __init__(self, threshold: float, thread_id: int | None = None):
        self.threshold = threshold
        self.thread_id = thread_id or threading.get_ident()
        self.native_id = next((thread.native_id for thread in threading.enumerate()
                               if thread.ident == self.thread_id), None)
        self.last_beat = time.monotonic()
        self.traces: list[str] = []  # the stacks logged, newest last (at most 100)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="loop-stall-tracer",
                                        daemon=True)

    def start(self) -> StallTracer:
        self._thread.start()
        return self

    def beat(self) -> None:
        """The loop turned: a stall, if any, is over."""
        self.last_beat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _other_threads(self, frames: dict[int, FrameType]) -> str:
        """The innermost frames of every other thread of ``frames`` (one snapshot with the
        loop's): a thread that holds the GIL (or a lock the loop waits for) through the
        stall shows what it does."""
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        out = []
        for ident, frame in frames.items():
            if ident not in (self.thread_id, threading.get_ident()):
                inner = "".join(traceback.format_stack(frame)[-OTHER_THREAD_FRAMES:])
                out.append(f"-- thread {names.get(ident, ident)}:\n{inner}")
        return "".join(out)

    def _watch(self) -> None:
        traced = None
        while not self._stop.wait(self.threshold / 4):
            beat = self.last_beat
            if time.monotonic() - beat < self.threshold or traced == beat:
                continue
            traced = beat
            frames = sys._current_frames()
            frame = frames.get(self.thread_id)
            if frame is None:
                continue
            state = kernel_state(self.native_id)
            stack = (f"kernel: {state or 'unknown'}\n" + "".join(traceback.format_stack(frame))
                     + self._other_threads(frames))
            self.traces = [*self.traces[-99:], stack]
            log.warning("event loop stalled for over %.0f ms; its thread is at:\n%s",
                        self.threshold * 1e3, stack)


class LoopWatchdog:
    """Measures event-loop stalls from inside the loop (start it with :meth:`run`)."""

    def __init__(self, on_stall: Callable[[float], None] | None = None,
                 on_own_stall: Callable[[float], None] | None = None,
                 on_gc_pause: Callable[[float], None] | None = None,
                 on_collections: Callable[[int, int, float], None] | None = None,
                 interval: float = INTERVAL_SECONDS, tracer: StallTracer | None = None,
                 on_recent: Callable[[float, float, float], None] | None = None,
                 on_blocked: Callable[[float], None] | None = None):
        self.interval = interval
        self.on_stall = on_stall
        self.on_own_stall = on_own_stall
        self.on_blocked = on_blocked
        self.on_gc_pause = on_gc_pause
        self.on_collections = on_collections
        self.tracer = tracer
        # The longest stall (all, own, blocked) of the current and the previous
        # RECENT_SECONDS.
        self.on_recent = on_recent
        self._window_began = time.monotonic()
        self._current = self._previous = self._recent_reported = (0.0, 0.0, 0.0)
        # Per generation (0, 1, 2): collections since start, and the longest one.
        self.collections = [0, 0, 0]
        self.longest_collection = [0.0, 0.0, 0.0]
        self._collections_reported = [0, 0, 0]
        self.max_stall = 0.0
        self.max_own_stall = 0.0
        self.max_blocked = 0.0
        self._blocked_warned = -BLOCKED_WARNING_EVERY  # when the last warning was logged
        self.max_gc_pause = 0.0
        self._gc_began = 0.0
        self._gc_reported = 0.0

    async def run(self) -> None:
        """Sleep, measure the oversleep, repeat until cancelled (timing the collector's
        pauses meanwhile)."""
        loop = asyncio.get_running_loop()
        clock = RunqueueClock()
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                began, (ran, waited) = loop.time(), clock.both()
                await asyncio.sleep(self.interval)
                if self.tracer is not None:
                    self.tracer.beat()
                stall = loop.time() - began - self.interval
                now_ran, now_waited = clock.both()
                own = stall - (now_waited - waited)
                # Off the CPU without waiting for one, beyond the sleep asked for: at least
                # this long the thread was blocked (the disk, a lock) rather than working.
                blocked = own - (now_ran - ran) if clock.available else 0.0
                self.observe(stall, own, blocked=blocked)
                self._report_gc_pause()
        finally:
            gc.callbacks.remove(self._on_gc)
            clock.close()
            if self.tracer is not None:
                self.tracer.stop()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """``gc.callbacks`` hook: time each collection, keep the longest.

        It only records: a collection can start inside any code holding any lock (a
        Prometheus metric's, say), so calling ``on_gc_pause`` from here could deadlock;
        :meth:`run` reports the new longest pause on its next wake-up."""
        if phase == "start":
            self._gc_began = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_began
        self.max_gc_pause = max(self.max_gc_pause, pause)
        generation = info.get("generation", 2)
        self.collections[generation] += 1
        self.longest_collection[generation] = max(self.longest_collection[generation], pause)

    def _report_gc_pause(self) -> None:
        """Hand a longest GC pause not reported yet to ``on_gc_pause``, and each generation's
        new collections to ``on_collections``."""
        pause = self.max_gc_pause
        if pause > self._gc_reported:
            self._gc_reported = pause
            if self.on_gc_pause is not None:
                self.on_gc_pause(pause)
        for generation, count in enumerate(self.collections):
            if count != self._collections_reported[generation]:
                self._collections_reported[generation] = count
                if self.on_collections is not None:
                    self.on_collections(generation, count,
                                        self.longest_collection[generation])

    def observe(self, stall: float, own: float | None = None,
                now: float | None = None, blocked: float = 0.0) -> None:
        """Record one oversleep of ``stall`` seconds, ``own`` of them not spent waiting
        for a CPU (default: all of them), ``blocked`` of those neither on a CPU nor waiting
        for one (the disk, a lock), at ``now`` (monotonic seconds)."""
        own = stall if own is None else min(own, stall)
        blocked = min(max(blocked, 0.0), own)
        now = time.monotonic() if now is None else now
        self._observe_recent(stall, own, blocked, now)
        if blocked >= BLOCKED_WARNING_SECONDS and \
                now - self._blocked_warned >= BLOCKED_WARNING_EVERY:
            self._blocked_warned = now
            log.warning("the event loop was blocked %.0f ms on no CPU (the disk or a lock) in "
                        "a %.0f ms stall; serving.stall_trace_ms shows where the next one "
                        "waits", blocked * 1e3, stall * 1e3)
        if blocked > self.max_blocked:
            self.max_blocked = blocked
            if self.on_blocked is not None:
                self.on_blocked(blocked)
        if stall > self.max_stall:
            self.max_stall = stall
            if self.on_stall is not None:
                self.on_stall(stall)
        if own > self.max_own_stall:
            self.max_own_stall = own
            if self.on_own_stall is not None:
                self.on_own_stall(own)

    def _observe_recent(self, stall: float, own: float, blocked: float, now: float) -> None:
        """Keep the longest stall of the current and the previous ``RECENT_SECONDS``
        window; hand their maximum (it covers at least the last window) to ``on_recent``
        whenever it changes, so a reader polling more often than that sees every stall of
        a stretch of time (the benchmark's checkpoint phase)."""
        if now - self._window_began >= RECENT_SECONDS:
            elapsed_windows = (now - self._window_began) // RECENT_SECONDS
            self._previous = self._current if elapsed_windows == 1 else (0.0, 0.0, 0.0)
            self._current = (0.0, 0.0, 0.0)
            self._window_began += elapsed_windows * RECENT_SECONDS
        self._current = tuple(map(max, self._current, (stall, own, blocked)))
        recent = tuple(map(max, self._current, self._previous))
        if recent != self._recent_reported:
            self._recent_reported = recent
            if self.on_recent is not None:
                self.on_recent(*recent)
