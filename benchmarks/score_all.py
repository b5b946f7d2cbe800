"""Benchmark: ``nextbest score --all`` over a 1M-user online store.

The world (built once under ``--world``, reused when it is there): the synthetic
marketplace of ``benchmarks/synth.py`` in ``--data`` (generated when absent, like
``feature_build.py``), its features built into the world's SQLite online store
(``nextbest features build``), and churn and propensity champions trained on it
(``nextbest train ... --cutoffs 2``). Then it times the command as a user runs it, in its own
process (start-up and model loading included): a full scan of the store in chunks, both
models on every user, one Parquet file.

The reference, measured in the same run: scoring the same users from the features Parquet
file the store was filled from (pyarrow read, ``ChampionModels.score_frame``, Parquet write
of the same columns), the floor of any batch scoring that does not read the store. The
benchmark also checks the output: one row per store user, and for a sample of users the
same scores as ``/score`` computes for one record. Goal: 1M users in under 60 s.

    .venv/bin/python benchmarks/score_all.py [--users 1000000] [--data /tmp/bench_1m]

Prints and writes benchmarks/results/score_all.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feature_build import ensure_data  # benchmarks/feature_build.py

from features.store import open_store
from nextbest.config import load_settings, path_overrides
from serving.cli_score import parquet_schema
from serving.scoring import SCORE_COLUMNS, Scorer
from training.loader import load_champions

RESULTS = Path(__file__).resolve().parent / "results" / "score_all.json"
# `nextbest ARGS` that reports its own peak memory (GiB) on its last line.
MEASURED_CLI = ("import resource, sys\nfrom nextbest.cli import main\ncode = main(sys.argv[1:])\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)\n"
                "sys.exit(code)")
GOAL_SECONDS = 60.0
SAMPLE = 2000


def world_env(root: Path, raw: Path) -> dict[str, str]:
    """This environment with every nextbest path under ``root`` and the raw data at ``raw``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST")}
    return env | path_overrides(root) | {"NEXTBEST_CONFIG": str(root / "nextbest.yaml"),
                                         "NEXTBEST__PATHS__RAW_DIR": str(raw)}


def nextbest(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run one ``nextbest`` command; its wall seconds and output (raise if it fails)."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nextbest {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - began, proc.stdout + proc.stderr


def build_world(root: Path, env: dict[str, str]) -> dict[str, float]:
    """Features into the store and both champions, unless an earlier run built them."""
    if (root / "world.json").exists():
        return json.loads((root / "world.json").read_text())
    root.mkdir(parents=True, exist_ok=True)
    (root / "nextbest.yaml").write_text(yaml.safe_dump(
        {"training": {"num_boost_round": 100, "early_stopping_rounds": 10}}))
    seconds = {"features_build": nextbest(["features", "build"], env, root)[0]}
    for model in ("churn", "propensity"):
        seconds[f"train_{model}"] = nextbest(["train", model, "--cutoffs", "2"], env, root)[0]
    (root / "world.json").write_text(json.dumps(seconds))
    return seconds


def reference_seconds(scorer: Scorer, features: Path, out: Path) -> float:
    """Score the users of the features file the store was filled from, as Parquet."""
    began = time.perf_counter()
    frame = pq.read_table(features).to_pandas()
    table = scorer.score_table(frame.assign(as_of=frame["as_of"].astype(str)))
    pq.write_table(pa.Table.from_pandas(table, schema=parquet_schema({}),
                                        preserve_index=False), out)
    return time.perf_counter() - began


def check_sample(scorer: Scorer, scores: pd.DataFrame, seed: int) -> float:
    """The largest difference between the file's scores and the one-record path's on a
    sample of users (a mismatch in tier, segment or tags fails outright)."""
    rows = scores.set_index("user_id")
    worst = 0.0
    for user_id in random.Random(seed).sample(list(rows.index), min(SAMPLE, len(rows))):
        one, row = scorer.score(user_id), rows.loc[user_id]
        assert (one.tier, one.segment, one.features_as_of) == (
            row.tier, row.segment, row.features_as_of), (user_id, one, row)
        assert list(one.tags) == list(row.tags), (user_id, one.tags, row.tags)
        worst = max(worst, abs(one.churn_probability - row.churn_probability),
                    abs(one.purchase_propensity - row.purchase_propensity))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench_1m"))
    parser.add_argument("--world", type=Path, default=None,
                        help="where the store and models live (default: DATA/score_world)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    raw = ensure_data(args.data, args.users, args.seed)
    root = args.world or args.data / "score_world"
    env = world_env(root, raw)
    world_seconds = build_world(root, env)
    settings = load_settings(None, environ=env)
    out = root / "scores.parquet"
    out.unlink(missing_ok=True)

    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURED_CLI, "score", "--all", "--out",
                           str(out)], env=env, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"nextbest score --all failed:\n{proc.stdout}\n{proc.stderr}")
    *said, child_rss = proc.stdout.strip().splitlines()
    printed = "\n".join(said)
    scores = pq.read_table(out).to_pandas()
    with open_store(settings) as store:
        scorer = Scorer(settings, store, load_champions(settings))
        store_users = int(store.meta()["users"])
        worst = check_sample(scorer, scores, args.seed)
        as_of = store.meta()["as_of"][:10]
        features = Path(settings.paths.features_dir) / f"as_of={as_of}" / "features.parquet"
        reference = reference_seconds(scorer, features, root / "reference.parquet")
    assert len(scores) == store_users == scores["user_id"].nunique(), (len(scores), store_users)
    assert tuple(scores.columns) == SCORE_COLUMNS
    result = {
        "benchmark": "score_all", "users": len(scores), "cores": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2),
        "world_build_seconds": {k: round(v, 1) for k, v in world_seconds.items()},
        "command": "nextbest score --all --out PATH (its own process)",
        "seconds": round(seconds, 2), "command_said": printed.strip(),
        "users_per_second": round(len(scores) / seconds),
        "output_mib": round(out.stat().st_size / 2**20, 1),
        "peak_rss_gib": round(float(child_rss), 2),
        "reference": "score_frame over the features Parquet file, Parquet out (in-process)",
        "reference_seconds": round(reference, 2),
        "ratio_to_reference": round(seconds / reference, 2),
        "sample_checked": min(SAMPLE, len(scores)),
        "sample_max_abs_score_difference": worst,
        "churn_mean": round(float(np.mean(scores["churn_probability"])), 4),
        "goal_seconds": GOAL_SECONDS, "goal_met": seconds < GOAL_SECONDS,
        "peak_rss_gib_this_process": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
