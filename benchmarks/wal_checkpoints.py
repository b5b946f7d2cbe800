"""Benchmark: the decision log's commits with SQLite's own WAL checkpoints, with a
checkpointer thread that only copies, and with the thread that also restarts the WAL behind
the file's write gate (nextbest/storage.py ``WalCheckpointer``, ``WriteGate``).

The service commits every decision on its event loop, and SQLite checkpoints the WAL
inside whichever commit takes it past ``wal_autocheckpoint`` pages: two syncs and a copy of
the pages changed since the last checkpoint, during which the loop serves nothing. This
fills a decision log in a temporary directory with ``--prefill`` decisions (random event
ids and users, as the service writes them, built by the learner benchmark's generator),
then commits ``--decisions`` more at ``--rate`` a second on an asyncio loop, one at a time
through the log's gate as the service does, each after ``--loop-cpu-ms`` of Python on the
loop (a request's other work: it holds the GIL the checkpointer thread needs back after
each SQLite call), in four modes alternating for ``--rounds`` rounds on the same file:

- ``sqlite``: SQLite's own checkpoints (every 1,000 pages), no thread;
- ``copy``: the thread copies the WAL every ``checkpoint_seconds`` and the writer
  checkpoints itself every 10,000 pages (two stops ago);
- ``restart_unsynced``: the thread also restarts the WAL, with the gate closed, past
  ``RESTART_WAL_PAGES``; it syncs nothing itself, so the gated copy syncs every page
  copied since the last restart (the previous stop's design);
- ``restart``: as above, and the thread syncs what each round copied, and the WAL before
  it closes the gate (the engine's design now); the writer never checkpoints.

Each of ``--page-sizes`` gets a log file of its own, created with that page size (the
decision log's ``PAGE_SIZE``, SQLite's default 4,096, unless given): a commit writes each
page it changed to the WAL whole, so the page size sets how many bytes a decision puts
through the WAL, its syncs and its copies (4,096 against 1,024: 25 against 8.8 KiB a
decision, and yet 1,024 made the commits slower beside the checkpointer thread).

Reported per mode: the loop's pauses (a commit's synchronous time over 3 ms: what every
request on the loop waits through) and their total, the decisions delayed over 3 ms (the
await of the gate plus the commit: what only the decision waits through), the longest
waits for the gate, the mean commit, the writing thread's CPU a decision, the WAL file's
size at the end, and the ratio of the loop's total pause to SQLite's own in the same run.

    .venv/bin/python benchmarks/wal_checkpoints.py [--prefill 200000] [--decisions 20000]
        [--rate 1000] [--rounds 2] [--seed 1] [--loop-cpu-ms 0.6]
        [--modes sqlite,copy,restart_unsynced,restart] [--page-sizes 4096]

Prints and writes benchmarks/results/wal_checkpoints.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner import random_decision  # noqa: E402  (benchmarks/ is on sys.path)

from decisions import decision_log  # noqa: E402
from decisions.decision_log import DecisionLog, LoggedDecision  # noqa: E402
from decisions.encoding import encode_arms  # noqa: E402
from decisions.engine import WAL_CHECKPOINT_SECONDS  # noqa: E402
from nextbest import storage  # noqa: E402
from nextbest.config import load_settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "wal_checkpoints.json"
SLOW_S = 0.003  # a commit this long checkpointed (a plain one takes ~0.1 ms)
USERS = 2000


SETTINGS = load_settings(None, environ={})  # the default configuration's arms and encoder
ARMS = encode_arms(SETTINGS.bandit)


def decisions(count: int, rng: random.Random, first: int) -> list[LoggedDecision]:
    """``count`` logged decisions with random event ids and users of a pool of USERS."""
    made = []
    for i in range(first, first + count):
        logged, _ = random_decision(SETTINGS, ARMS, rng, i)
        update = {"event_id": f"{rng.getrandbits(96):024x}",
                  "user_id": f"u{rng.randrange(USERS):06d}"}
        made.append(logged.model_copy(update={"decision": logged.decision.model_copy(
            update=update)}))
    return made


def prefill(path: Path, count: int, rng: random.Random, page_size: int) -> None:
    """``count`` decisions in batched commits (a scratch connection: fast), in a file of
    ``page_size`` bytes a page."""
    decision_log.PAGE_SIZE = page_size  # read when the file is created
    log = DecisionLog(path, durable=False)
    for start in range(0, count, 10_000):
        for logged in decisions(min(10_000, count - start), rng, start):
            log.record_decision(logged)
        log.flush()
    log.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # each run's WAL from empty
    log.close()


MODES = {  # mode: (checkpoint_seconds, RESTART_WAL_PAGES, BOUNDED_WAL_PAGES)
    "sqlite": (None, storage.RESTART_WAL_PAGES, storage.BOUNDED_WAL_PAGES),
    "copy": (WAL_CHECKPOINT_SECONDS, 10**12, 10_000),
    "restart_unsynced": (WAL_CHECKPOINT_SECONDS, storage.RESTART_WAL_PAGES,
                         storage.BOUNDED_WAL_PAGES),
    "restart": (WAL_CHECKPOINT_SECONDS, storage.RESTART_WAL_PAGES, storage.BOUNDED_WAL_PAGES),
}
FLUSH = storage.flush


def busy(seconds: float) -> None:
    """Hold the GIL for ``seconds`` as a request's Python work does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def commit_paced(path: Path, batch: list[LoggedDecision], rate: float,
                 mode: str, loop_cpu: float) -> dict[str, Any]:
    """Commit ``batch`` one decision at a time at ``rate`` a second, each after
    ``loop_cpu`` seconds of Python on the loop, on an event loop through the log's gate;
    the numbers."""
    seconds, storage.RESTART_WAL_PAGES, storage.BOUNDED_WAL_PAGES = MODES[mode]
    # restart_unsynced: the previous stop's restart (the thread syncs none of the file, so
    # the gated copy syncs every page copied since the last restart)
    storage.flush = (lambda _path: None) if mode == "restart_unsynced" else FLUSH
    log = DecisionLog(path, checkpoint_seconds=seconds)
    commits, delays, waits = [], [], []

    async def run() -> None:
        start = time.perf_counter()
        for i, logged in enumerate(batch):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            busy(loop_cpu)
            asked = time.perf_counter()
            async with log.gate.writing():
                began = time.perf_counter()
                log.record_decision(logged)
                done = time.perf_counter()
            commits.append(done - began)
            waits.append(began - asked)
            delays.append(done - asked)

    cpu = time.thread_time()
    asyncio.run(run())
    cpu = time.thread_time() - cpu
    wal = os.path.getsize(f"{path}-wal")
    (page_size,) = log.conn.execute("PRAGMA page_size").fetchone()
    checkpointer = log.conn.checkpointer  # type: ignore[attr-defined]
    rounds = checkpointer.checkpoints if checkpointer is not None else 0
    restarts = checkpointer.restarts if checkpointer is not None else 0
    log.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next run's WAL from empty
    log.close()
    slow = [t for t in commits if t > SLOW_S]
    delayed = sorted(delays)
    return {
        "mode": mode, "page_size": page_size, "decisions": len(batch),
        "loop_pauses_over_3ms": len(slow), "loop_pause_total_ms": round(sum(slow) * 1e3, 1),
        "loop_pause_max_ms": round(max(commits) * 1e3, 1),
        "loop_pause_us_per_decision": round(sum(slow) / len(batch) * 1e6, 1),
        "decisions_delayed_over_3ms": sum(d > SLOW_S for d in delays),
        "decision_p99_ms": round(delayed[int(len(delayed) * 0.99)] * 1e3, 3),
        "decision_max_ms": round(delayed[-1] * 1e3, 1),
        "mean_commit_us": round(statistics.fmean(commits) * 1e6, 1),
        "longest_gate_waits_ms": [round(w * 1e3, 1) for w in sorted(waits)[-8:][::-1]],
        "cpu_us_per_decision": round(cpu / len(batch) * 1e6, 1),
        "wal_file_mib": round(wal / 2**20, 1), "thread_checkpoints": rounds,
        "wal_restarts": restarts, "gate_waits": log.gate.waits,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill", type=int, default=200_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="decisions a second")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loop-cpu-ms", type=float, default=0.6,
                        help="Python work on the loop per decision besides its commit (a "
                             "request's, holding the GIL the checkpointer thread needs)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--page-sizes", default=str(decision_log.PAGE_SIZE),
                        help="comma-separated; a log file created with each")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; the modes are {', '.join(MODES)}")
    try:
        page_sizes = [int(size) for size in args.page_sizes.split(",") if size]
    except ValueError:
        parser.error(f"--page-sizes: {args.page_sizes!r} is not a list of integers")
    if not page_sizes or any(size < 512 or size > 65536 or size & (size - 1)
                             for size in page_sizes):
        parser.error("--page-sizes: each must be a power of two from 512 to 65536")
    started = time.perf_counter()
    rng = random.Random(args.seed + 1)  # the runs' decisions; each prefill's from seed
    runs = []
    with tempfile.TemporaryDirectory(prefix="nextbest-wal-") as tmp:
        paths = {}
        for size in page_sizes:
            paths[size] = Path(tmp) / f"decisions-{size}.sqlite"
            prefill(paths[size], args.prefill, random.Random(args.seed), size)
        first = args.prefill
        for round_ in range(args.rounds):
            for mode in modes:
                batch = decisions(args.decisions, rng, first)
                first += args.decisions
                for size in page_sizes:  # the same decisions into each file
                    run = commit_paced(paths[size], batch, args.rate, mode,
                                       args.loop_cpu_ms / 1e3)
                    run["round"] = round_ + 1
                    print(json.dumps(run))
                    runs.append(run)

    def runs_of(mode: str, size: int) -> list[dict[str, Any]]:
        return [r for r in runs if r["mode"] == mode and r["page_size"] == size]

    def total(mode: str, size: int) -> float:
        return sum(r["loop_pause_total_ms"] for r in runs_of(mode, size))

    def mean(mode: str, size: int, key: str) -> float:
        return round(statistics.fmean(r[key] for r in runs_of(mode, size)), 1)

    report = {
        "benchmark": "wal_checkpoints", "time_s": round(time.perf_counter() - started, 1),
        "prefill": args.prefill, "decisions_per_run": args.decisions, "rate": args.rate,
        "loop_cpu_ms": args.loop_cpu_ms,
        "seed": args.seed, "checkpoint_seconds": WAL_CHECKPOINT_SECONDS,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "runs": runs,
        "restart_wal_pages": MODES["restart"][1], "modes": modes, "page_sizes": page_sizes,
        "loop_pause_ratio_to_sqlite": {
            f"{mode}@{size}": round(total(mode, size) / total("sqlite", size), 3)
            for mode in modes for size in page_sizes
            if mode != "sqlite" and "sqlite" in modes and total("sqlite", size)},
        "by_page_size": {
            f"{mode}@{size}": {"loop_pause_total_ms": round(total(mode, size), 1),
                               "mean_commit_us": mean(mode, size, "mean_commit_us"),
                               "cpu_us_per_decision": mean(mode, size, "cpu_us_per_decision")}
            for mode in modes for size in page_sizes},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
