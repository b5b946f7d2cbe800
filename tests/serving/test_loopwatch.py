"""The event-loop watchdog: a callback that blocks the loop shows as a stall, in the gauge."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from serving.loopwatch import (
    GC_THRESHOLDS,
    LoopWatchdog,
    RunqueueClock,
    StallTracer,
    quiet_collector,
    schedstat_seconds,
)


def watch(watchdog: LoopWatchdog, on_the_loop: Callable[[], object], settle: float) -> None:
    """Run ``watchdog`` on a fresh loop, call ``on_the_loop`` on it between two waits of
    ``settle`` seconds, then stop the watchdog."""

    async def scenario() -> None:
        task = asyncio.create_task(watchdog.run())
        await asyncio.sleep(settle)
        on_the_loop()
        await asyncio.sleep(settle)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_blocking_callback_is_measured_as_a_stall() -> None:
    seen: list[float] = []
    watchdog = LoopWatchdog(seen.append, interval=0.005)
    watch(watchdog, lambda: time.sleep(0.06), 0.02)  # a checkpoint written on the loop
    # The watchdog cannot wake before the blocking call returns: at least 60 - 5 ms late.
    assert watchdog.max_stall >= 0.055
    assert seen and seen[-1] == watchdog.max_stall
    assert seen == sorted(seen)  # only each new longest stall is reported


def test_garbage_collections_are_timed_while_it_runs() -> None:
    pauses: list[float] = []
    watchdog = LoopWatchdog(on_gc_pause=pauses.append)
    watch(watchdog, gc.collect, 0.01)
    assert pauses and pauses[-1] == watchdog.max_gc_pause > 0.0
    assert watchdog._on_gc not in gc.callbacks  # removed when the watchdog stops
    gc.collect()
    assert watchdog.max_gc_pause == pauses[-1]


def test_a_collection_inside_a_held_lock_does_not_call_out() -> None:
    # A collection can start in code that holds a lock the callback would need (as a
    # Prometheus gauge's lock was): the hook records; the loop reports later.
    lock = threading.Lock()
    pauses: list[float] = []

    blocked: list[float] = []

    def report(pause: float) -> None:
        if not lock.acquire(blocking=False):  # a blocking acquire would hang here
            blocked.append(pause)
            return
        pauses.append(pause)
        lock.release()

    watchdog = LoopWatchdog(on_gc_pause=report)
    gc.callbacks.append(watchdog._on_gc)
    try:
        with lock:
            gc.collect()  # the hook must not call report() here
    finally:
        gc.callbacks.remove(watchdog._on_gc)
    assert blocked == [] and pauses == [] and watchdog.max_gc_pause > 0.0
    watchdog._report_gc_pause()
    assert pauses == [watchdog.max_gc_pause]


def test_smaller_stalls_do_not_lower_the_maximum() -> None:
    seen: list[float] = []
    watchdog = LoopWatchdog(seen.append)
    for stall in (0.002, 0.010, 0.004, 0.010, 0.012):
        watchdog.observe(stall)
    assert watchdog.max_stall == watchdog.max_own_stall == 0.012
    assert seen == [0.002, 0.010, 0.012]


def test_time_spent_waiting_for_a_cpu_is_not_the_process_own_stall() -> None:
    own: list[float] = []
    watchdog = LoopWatchdog(on_own_stall=own.append)
    watchdog.observe(0.050, own=0.004)  # the host kept the thread off the CPU 46 ms
    watchdog.observe(0.008, own=0.008)
    watchdog.observe(0.003, own=0.009)  # never more than the stall itself
    assert watchdog.max_stall == 0.050 and watchdog.max_own_stall == 0.008
    assert own == [0.004, 0.008]


def test_runqueue_clock_reads_this_thread() -> None:
    clock = RunqueueClock()
    try:
        assert clock.available, "no /proc/self/task/<tid>/schedstat: a Linux kernel with " \
            "CONFIG_SCHEDSTATS gives it"
        ran, first = clock.both()
        sum(range(2_000_000))  # ~20 ms on a CPU
        assert first >= 0.0 and clock.both()[1] >= first
        assert clock.both()[0] - ran > 0.005
    finally:
        clock.close()


def test_a_schedstat_line_reads_as_seconds_on_a_cpu_and_waiting_for_one() -> None:
    assert schedstat_seconds(b"2500000000 1000000 42\n") == (2.5, 0.001)
    with pytest.raises(ValueError, match="not a schedstat line"):
        schedstat_seconds("")


def test_a_stall_off_the_cpu_is_blocked_and_a_busy_one_is_not(caplog) -> None:
    """A callback that waits (the disk, a lock: a sleep here) stalls the loop on no CPU:
    blocked, and logged. One that computes as long stalls it as much, but is not blocked."""
    asleep: list[float] = []
    watchdog = LoopWatchdog(on_blocked=asleep.append)
    with caplog.at_level("WARNING", logger="serving.loopwatch"):
        watch(watchdog, lambda: time.sleep(0.08), 0.02)
    assert watchdog.max_stall >= 0.075
    assert watchdog.max_blocked >= 0.065 and asleep[-1] == watchdog.max_blocked
    warned = [r.getMessage() for r in caplog.records if "blocked" in r.getMessage()]
    assert len(warned) == 1 and "on no CPU (the disk or a lock)" in warned[0]
    caplog.clear()

    def compute(seconds: float = 0.06) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    busy = LoopWatchdog()
    with caplog.at_level("WARNING", logger="serving.loopwatch"):
        watch(busy, compute, 0.02)
    assert busy.max_own_stall >= 0.055
    assert busy.max_blocked < 0.02  # at most the interval's idle and scheduling noise
    assert not [r for r in caplog.records if "blocked" in r.getMessage()]


def test_a_blocked_stall_is_logged_at_most_once_a_minute(caplog) -> None:
    watchdog = LoopWatchdog()
    with caplog.at_level("WARNING", logger="serving.loopwatch"):
        watchdog.observe(0.2, 0.2, now=100.0, blocked=0.15)
        watchdog.observe(0.3, 0.3, now=130.0, blocked=0.25)  # within the minute: quiet
        watchdog.observe(0.03, 0.03, now=170.0, blocked=0.03)  # under the threshold
        watchdog.observe(0.1, 0.1, now=175.0, blocked=0.08)
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "the event loop was blocked 150 ms on no CPU (the disk or a lock) in a 200 ms stall; "
        "serving.stall_trace_ms shows where the next one waits",
        "the event loop was blocked 80 ms on no CPU (the disk or a lock) in a 100 ms stall; "
        "serving.stall_trace_ms shows where the next one waits"]


@pytest.mark.integration
def test_the_service_exposes_its_longest_stall(client: httpx.Client) -> None:
    assert client.post("/score", json={"user_id": "anyone"}).status_code == 200
    text = client.get("/metrics").text
    for cause in ("all", "own", "blocked", "gc"):
        name = 'nextbest_event_loop_max_stall_seconds{cause="' + cause + '"}'
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert found is not None, f"the {cause} gauge is missing from /metrics"
        assert 0.0 <= float(found.group(1)) < 60.0


def test_quiet_collector_freezes_start_up_and_sets_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        quiet_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_collections_are_counted_per_generation_with_the_longest() -> None:
    seen: list[tuple[int, int, float]] = []
    watchdog = LoopWatchdog(on_collections=lambda g, n, longest: seen.append((g, n, longest)))
    gc.callbacks.append(watchdog._on_gc)
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.callbacks.remove(watchdog._on_gc)
    assert watchdog.collections[0] >= 1 and watchdog.collections[2] >= 2
    assert watchdog.longest_collection[2] > 0.0
    watchdog._report_gc_pause()
    reported = {g: (n, longest) for g, n, longest in seen}
    assert reported[2] == (watchdog.collections[2], watchdog.longest_collection[2])
    seen.clear()
    watchdog._report_gc_pause()  # nothing new: nothing reported again
    assert seen == []


def test_a_stall_is_traced_to_the_code_that_blocked_the_loop() -> None:
    tracer = StallTracer(0.02)
    watchdog = LoopWatchdog(tracer=tracer.start())

    def save_checkpoint_inline() -> None:
        time.sleep(0.1)  # what a checkpoint written on the loop would do

    watch(watchdog, save_checkpoint_inline, 0.03)
    assert len(tracer.traces) == 1  # one stall, one trace
    assert "save_checkpoint_inline" in tracer.traces[0]
    # asleep in the kernel, not working: what the Python stack alone cannot tell
    assert re.match(r"kernel: S( in \w+)?\n", tracer.traces[0]), tracer.traces[0][:80]


def test_a_stall_trace_shows_what_the_other_threads_do() -> None:
    """The loop waits for a lock a worker thread holds: the trace names that thread and
    where it is, besides the loop's own stack."""
    tracer = StallTracer(0.02)
    watchdog = LoopWatchdog(tracer=tracer.start())
    lock = threading.Lock()
    holding = threading.Event()

    def hold_the_lock_in_a_thread() -> None:
        with lock:
            holding.set()
            time.sleep(0.1)

    def wait_for_the_thread() -> None:
        worker = threading.Thread(target=hold_the_lock_in_a_thread, name="checkpoint-saver")
        worker.start()
        holding.wait(5)
        with lock:  # the loop blocks on the thread's lock
            pass
        worker.join()

    watch(watchdog, wait_for_the_thread, 0.03)
    tracer.stop()
    assert len(tracer.traces) == 1
    trace = tracer.traces[0]
    assert "in wait_for_the_thread" in trace  # the loop's stack
    assert "-- thread checkpoint-saver:" in trace
    assert "hold_the_lock_in_a_thread" in trace.split("-- thread checkpoint-saver:")[1]


def test_the_recent_longest_stall_covers_the_last_window_then_forgets() -> None:
    seen: list[tuple[float, float, float]] = []
    watchdog = LoopWatchdog(on_recent=lambda *stall: seen.append(stall))
    start = watchdog._window_began
    watchdog.observe(0.030, 0.010, now=start + 0.1, blocked=0.007)
    watchdog.observe(0.005, 0.005, now=start + 2.5)  # next window: the 30 ms still counts
    assert seen[-1] == (0.030, 0.010, 0.007)
    watchdog.observe(0.004, 0.004, now=start + 4.5, blocked=0.001)  # two windows on: forgotten
    assert seen[-1] == (0.005, 0.005, 0.001)
    watchdog.observe(0.002, 0.002, now=start + 9.0)  # after a quiet gap: nothing older
    assert seen[-1] == (0.002, 0.002, 0.0)
    assert watchdog.max_stall == 0.030  # the since-start maximum is unaffected
