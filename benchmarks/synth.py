"""Benchmark: time ``features.synth.synthesize`` (default 1M users x 730 days).

Prints and writes ``benchmarks/results/synth.json``: seconds, rows per table, rows per
second, peak RSS, and the ratio of the generation time to a reference measured in the same
run (pyarrow reading every written table back, i.e. the Parquet I/O floor).

The data stays in ``--out`` (``raw/`` and ``latent/``) so the features benchmark can reuse
it: ``python benchmarks/synth.py --out /tmp/bench_1m``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import pyarrow.parquet as pq

from features.synth import TABLES, synthesize  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "synth.json"


def _read_back_seconds(raw_dir: Path) -> float:
    """Reference: seconds for pyarrow to read every raw table written."""
    began = time.perf_counter()
    for table in TABLES:
        pq.read_table(raw_dir / f"{table}.parquet")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_1m"))
    args = parser.parse_args()
    summary = synthesize(args.users, args.days, args.seed, args.out / "raw", args.out / "latent")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reference = _read_back_seconds(args.out / "raw")
    total_rows = sum(summary.rows.values())
    result = {
        "benchmark": "synth",
        "users": args.users, "days": args.days, "seed": args.seed, "out": str(args.out),
        "seconds": summary.seconds,
        "rows": summary.rows,
        "rows_per_second": round(total_rows / summary.seconds),
        "peak_rss_mib": round(peak_mib, 1),
        "reference": "pyarrow reads all written tables back",
        "reference_seconds": round(reference, 3),
        "ratio_to_reference": round(summary.seconds / reference, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(summary.line())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
