"""Benchmark: online-store bulk write and single-user ``get`` latency, SQLite and Redis.

Writes ``--users`` synthetic feature records (about 60 columns, like features.parquet) into
each backend, then times ``--gets`` single-user ``get`` calls on random users. The reference,
measured in the same run on the same records, is the floor of any JSON store: a plain dict
lookup plus ``json.loads``. Prints and writes ``benchmarks/results/store.json`` with write
time and throughput, get latency p50/p99 in microseconds, peak RSS and the ratios of each
backend's p50 to the reference's.

Redis runs as a throw-away ``redis-server`` on a free 127.0.0.1 port (tests/redis_server.py).

    .venv/bin/python benchmarks/store.py --users 100000 --gets 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests"))

from redis_server import running_redis  # noqa: E402

from features.store import OnlineStore, RedisStore, SqliteStore, encode_records  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "store.json"
AS_OF = date(2024, 6, 1)
TIERS = np.array(["platinum", "gold", "silver", "dormant", "churned", "new"])
TAGS = np.array(["high_value", "price_sensitive", "browse_no_buy", "cart_abandoner", "at_risk"])


def synthetic_features(users: int, seed: int) -> pd.DataFrame:
    """``users`` rows shaped like features.parquet: numbers with NaNs, categories, tags."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {"user_id": [f"u{i:08d}" for i in range(users)],
                                  "as_of": pd.Timestamp(AS_OF)}
    for name in ["tenure_days", "recency_days", "frequency_total", "monetary_total", "aov",
                 "spend_trend", "days_since_login", "browse_to_buy_30d", "category_entropy",
                 "return_rate", "coupon_share", "sell_through_rate", "days_to_sell",
                 "commission_paid"]:
        values = rng.gamma(2.0, 50.0, users)
        values[rng.random(users) < 0.2] = np.nan
        columns[name] = values
    for window in (7, 30, 90, 365):
        for kind in ("frequency", "monetary", "views", "favorites", "carts", "searches"):
            columns[f"{kind}_{window}d"] = rng.poisson(3.0, users).astype(float)
    columns.update({
        "cart_abandonments_30d": rng.poisson(1.0, users), "items_listed": rng.poisson(1.0, users),
        "items_sold": rng.poisson(0.5, users), "is_seller": rng.random(users) < 0.2,
        "region": rng.choice(["north", "south", "east", "west"], users),
        "channel": rng.choice(["organic", "invite", "ads"], users),
        "top_category": rng.choice(["bags", "shoes", "watches", "jewelry"], users),
        "tier": rng.choice(TIERS, users), "segment": rng.choice(["champions", "loyal"], users),
        "r_score": rng.integers(0, 6, users), "f_score": rng.integers(0, 6, users),
        "m_score": rng.integers(0, 6, users), "cluster": rng.integers(0, 5, users),
        "seller_tier": rng.choice(["vip", "potential", "sleeping"], users),
        "tags": [list(TAGS[rng.random(len(TAGS)) < 0.25]) for _ in range(users)],
    })
    return pd.DataFrame(columns)


def latencies_us(call: Callable[[str], object], user_ids: list[str]) -> dict[str, float]:
    """p50, p99 and mean of ``call(user_id)`` over ``user_ids``, in microseconds."""
    times = np.empty(len(user_ids))
    clock = time.perf_counter_ns
    for i, user_id in enumerate(user_ids):
        began = clock()
        call(user_id)
        times[i] = clock() - began
    times /= 1000.0
    return {"p50_us": round(float(np.percentile(times, 50)), 2),
            "p99_us": round(float(np.percentile(times, 99)), 2),
            "mean_us": round(float(times.mean()), 2)}


def measure(store: OnlineStore, frame: pd.DataFrame, sample: list[str]) -> dict[str, object]:
    """Bulk-write ``frame`` into ``store``, check one record, then time gets on ``sample``."""
    began, began_cpu = time.perf_counter(), time.process_time()
    written = store.write(frame, AS_OF)
    seconds, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    assert written == len(frame), f"{store.backend} wrote {written} of {len(frame)} rows"
    assert store.get(sample[0])["user_id"] == sample[0]
    return {"write_seconds": round(seconds, 3), "write_cpu_seconds": round(cpu, 3),
            "write_rows_per_second": round(written / seconds),
            **latencies_us(store.get, sample)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--gets", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "redis"],
                        default=["sqlite", "redis"])
    args = parser.parse_args()

    frame = synthetic_features(args.users, args.seed)
    sample = list(np.random.default_rng(args.seed + 1).choice(frame["user_id"], args.gets))
    began = time.process_time()
    chunks = list(encode_records(frame, AS_OF))
    encode_cpu_seconds = time.process_time() - began
    plain = {u: r for chunk in chunks for u, r in zip(chunk.ids, chunk.records, strict=True)}
    records = chunks[0].records
    reference = latencies_us(lambda user_id: json.loads(plain[user_id]), sample)

    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="nextbest-store-bench-") as tmp:
        if "sqlite" in args.backends:
            with SqliteStore(Path(tmp) / "store.sqlite") as sqlite:
                results["sqlite"] = measure(sqlite, frame, sample)
        if "redis" in args.backends:
            with running_redis(Path(tmp)) as url, RedisStore(url, "bench:") as redis:
                results["redis"] = measure(redis, frame, sample)
    for backend in results.values():
        backend["p50_ratio_to_reference"] = round(backend["p50_us"] / reference["p50_us"], 2)

    result = {
        "benchmark": "store", "users": args.users, "gets": args.gets, "seed": args.seed,
        "columns": frame.shape[1], "record_bytes_mean": round(float(np.mean(
            [len(r) for r in records[:10_000]]))),
        "encode_cpu_seconds": round(encode_cpu_seconds, 3),
        "reference": "dict lookup + json.loads of the same records",
        "reference_latency": reference,
        **results,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
