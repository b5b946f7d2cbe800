"""Benchmark the DuckDB feature build at scale.

Reuses a synthetic marketplace in ``--data`` (default /tmp/bench_1m, with raw/ and latent/)
or generates one with ``nextbest data synth`` in a child process (so the generator's memory
does not count). Then, in this process, it times:

- the build: ``build_features`` with the DuckDB engine (features, segmentation, Parquet
  write; the online store is not refreshed, it has its own benchmark), and
- the reference: DuckDB reading the same Parquet files and counting rows per user
  (``GROUP BY`` the user key of each table), the floor any per-user feature build pays.

It prints the numbers and writes them to benchmarks/results/features.json. Goals: the
build under 60 s, within 8x of the reference, peak memory (max RSS of this process, DuckDB
runs in it) under 6 GiB.

    .venv/bin/python benchmarks/feature_build.py [--users 1000000] [--data /tmp/bench_1m]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from features.build import build_features, default_as_of  # noqa: E402
from nextbest.config import load_settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "features.json"
USER_KEYS = {"users": "user_id", "orders": "buyer_id", "listings": "seller_id",
             "events": "user_id"}
GOAL_SECONDS, GOAL_RATIO, GOAL_RSS_GIB = 60.0, 8.0, 6.0


def ensure_data(data: Path, users: int, seed: int) -> Path:
    """The raw directory under ``data``, generated first if ``raw/orders.parquet`` is absent."""
    raw = data / "raw"
    if not (raw / "orders.parquet").is_file():
        print(f"generating {users:,} users x 730 days into {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "nextbest.cli", "data", "synth",
                        "--users", str(users), "--days", "730", "--seed", str(seed),
                        "--out", str(raw), "--latent-out", str(data / "latent")], check=True)
    return raw


def row_counts(raw: Path) -> dict[str, int]:
    """Rows per raw table (from the Parquet metadata)."""
    con = duckdb.connect()
    counts = {name: con.execute(f"SELECT count(*) FROM read_parquet('{raw / name}.parquet')")
              .fetchone()[0] for name in USER_KEYS if (raw / f"{name}.parquet").is_file()}
    con.close()
    return counts


def reference_seconds(raw: Path, threads: int, memory_limit: str,
                      repeats: int = 3) -> tuple[float, float]:
    """Median wall and CPU seconds of DuckDB counting rows per user in every raw table."""
    times, cpu = [], []
    for _ in range(repeats):
        con = duckdb.connect(config={"threads": threads, "memory_limit": memory_limit})
        began, began_cpu = time.perf_counter(), time.process_time()
        for name, key in USER_KEYS.items():
            path = raw / f"{name}.parquet"
            if path.is_file():
                con.sql(f"SELECT {key}, count(*) AS n FROM read_parquet('{path}') "
                            f"GROUP BY {key}").to_arrow_table()
        times.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
        con.close()
    return statistics.median(times), statistics.median(cpu)


def peak_rss_gib() -> float:
    """Max resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench_1m"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    raw = ensure_data(args.data, args.users, args.seed)
    settings = load_settings(None, environ={})
    threads = settings.features.duckdb_threads or os.cpu_count() or 1
    rows = row_counts(raw)
    as_of = default_as_of(settings, raw)
    reference_seconds(raw, threads, settings.features.duckdb_memory_limit, repeats=1)  # warm
    load_before = os.getloadavg()[0]
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        began, began_cpu = time.perf_counter(), time.process_time()
        frame = build_features(settings, as_of, engine="duckdb", raw_dir=raw, out_dir=Path(out),
                               refresh_store=False, progress=False, timings=stages)
        build, build_cpu = time.perf_counter() - began, time.process_time() - began_cpu
    reference, reference_cpu = reference_seconds(raw, threads,
                                                 settings.features.duckdb_memory_limit)
    result = {
        "benchmark": "features_build_duckdb",
        "as_of": as_of.isoformat(),
        "users": len(frame),
        "columns": frame.shape[1],
        "rows": rows,
        "cores": os.cpu_count(),
        # Other work on the machine slows both timings; the CPU ratio below is steadier.
        "load_average_1m_before": round(load_before, 2),
        "duckdb_threads": threads,
        "duckdb_memory_limit": settings.features.duckdb_memory_limit,
        "build_seconds": round(build, 2),
        "stage_seconds": stages,
        "reference_seconds": round(reference, 3),
        "ratio_to_reference": round(build / reference, 2),
        # CPU seconds (all threads) are less disturbed by other load on a shared machine.
        "build_cpu_seconds": round(build_cpu, 2),
        "reference_cpu_seconds": round(reference_cpu, 3),
        "cpu_ratio_to_reference": round(build_cpu / reference_cpu, 2),
        "users_per_second": round(len(frame) / build),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "goals": {"build_seconds": GOAL_SECONDS, "ratio_to_reference": GOAL_RATIO,
                  "peak_rss_gib": GOAL_RSS_GIB},
    }
    result["goals_met"] = {"build_seconds": build < GOAL_SECONDS,
                           "ratio_to_reference": build / reference <= GOAL_RATIO,
                           "peak_rss_gib": result["peak_rss_gib"] < GOAL_RSS_GIB}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
