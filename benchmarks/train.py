"""Benchmark the training stage: scale (time, memory) and quality (ROC AUC vs baselines).

Scale: 1M users x 6 cutoffs (reuses ``/tmp/bench_1m/raw`` when present, else synthesises it).
Each phase runs in its own child process so its peak memory (max RSS) is its own:

1. ``features``: ``build_features`` for the 7 cutoffs a churn run needs (the features
   stage's cost, reported separately; ``train`` would build them itself if absent);
2. ``train``: ``training.pipeline.train(churn)`` with the features reused: labels, LightGBM,
   calibration, baselines, MLflow logging and the gate;
3. ``reference``: DuckDB reading the raw orders and events and counting rows per user, the
   I/O floor any pass over the data pays (the ratio is train time / reference time).

Quality: ``synth --users 200000 --seed 7`` (or ``--quality-users``), then ``train churn`` and
``train propensity`` once with defaults; ROC AUC of LightGBM vs each baseline on the same
out-of-time evaluation rows.

    .venv/bin/python benchmarks/train.py [--users 1000000] [--quality-users 200000]
        [--skip-scale] [--skip-quality] [--work /tmp/nextbest_bench_train]

Loader: per-record latency of ``ChampionModels.score`` on the quality run's champions, with
``score_frame`` on one-row DataFrames as the reference (the pandas path it avoids).

Writes benchmarks/results/train.json. Goals: the training phase under 180 s and 8 GiB;
single-record scoring well under 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from nextbest.config import Settings, load_settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
GOAL_SECONDS, GOAL_RSS_GIB = 180.0, 8.0


def settings_for(work: Path, raw: Path) -> Settings:
    """Settings with raw data at ``raw`` and everything else under ``work``."""
    env = {
        "NEXTBEST__PATHS__RAW_DIR": str(raw),
        "NEXTBEST__PATHS__FEATURES_DIR": str(work / "features"),
        "NEXTBEST__PATHS__STORE_PATH": str(work / "store.sqlite"),
        "NEXTBEST__PATHS__MLRUNS_DIR": str(work / "mlruns"),
        "NEXTBEST__MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlruns/mlflow.db",
    }
    return load_settings(None, environ=env)


def peak_rss_gib() -> float:
    """Max resident set size of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def phase_features(settings: Settings, model: str, cutoffs: int) -> dict:
    """Build (or reuse) the features of every cutoff a ``model`` run needs."""
    from features.build import available_as_of, build_features
    from training.dataset import plan_cutoffs, resolve_validation_cutoff
    from training.labels import horizon_days

    raw = Path(settings.paths.raw_dir)
    plan = plan_cutoffs(resolve_validation_cutoff(settings, model, raw, None),
                        horizon_days(model, settings.training.labels), cutoffs,
                        settings.training.cutoff_step_days)
    done = set(available_as_of(settings))
    start = time.perf_counter()
    built = [c for c in plan.all() if c not in done]
    for cutoff in built:
        build_features(settings, cutoff, raw_dir=raw, refresh_store=False, progress=False)
    return {"seconds": round(time.perf_counter() - start, 2), "built": len(built),
            "cutoffs": [str(c) for c in plan.all()], "peak_rss_gib": peak_rss_gib()}


def phase_train(settings: Settings, model: str, cutoffs: int) -> dict:
    """One full ``train`` run; its result, wall time and peak memory."""
    from training.pipeline import train

    start = time.perf_counter()
    result = train(settings, model, cutoffs=cutoffs, say=lambda m: print(m, file=sys.stderr))
    return {"seconds": round(time.perf_counter() - start, 2), "stage_seconds": result.seconds,
            "n_train": result.n_train, "n_valid": result.n_valid,
            "best_iteration": result.best_iteration, "calibrator": result.calibrator,
            "roc_auc": round(result.metrics.roc_auc, 4),
            "baselines_roc_auc": {k: round(m.roc_auc, 4) for k, m in result.baselines.items()},
            "metrics": result.metrics.model_dump(), "version": result.version,
            "peak_rss_gib": peak_rss_gib()}


def phase_reference(settings: Settings) -> dict:
    """DuckDB scan of orders and events grouped by user: the I/O floor of one data pass."""
    import duckdb

    raw = Path(settings.paths.raw_dir)
    start = time.perf_counter()
    with duckdb.connect() as con:
        for table, key in (("orders", "buyer_id"), ("events", "user_id")):
            if (raw / f"{table}.parquet").is_file():
                con.execute(f"SELECT {key}, count(*) FROM read_parquet('{raw}/{table}.parquet') "
                            f"GROUP BY {key}").fetchall()
    return {"seconds": round(time.perf_counter() - start, 2), "peak_rss_gib": peak_rss_gib()}


def phase_loader(settings: Settings, model: str, cutoffs: int) -> dict:
    """Per-record latency of ``ChampionModels.score`` (numpy path) against the reference of
    ``score_frame`` on a one-row DataFrame (the pandas path), over the same records."""
    from features.build import available_as_of, load_features
    from training.loader import load_champions

    models = load_champions(settings)
    frame = load_features(settings, max(available_as_of(settings))).head(2000)
    records = frame.to_dict("records")
    models.score(records[0])
    start = time.perf_counter()
    for record in records:
        models.score(record)
    numpy_ms = (time.perf_counter() - start) / len(records) * 1000
    start = time.perf_counter()
    for i in range(200):
        models.score_frame(frame.iloc[i:i + 1])
    pandas_ms = (time.perf_counter() - start) / 200 * 1000
    return {"score_ms_per_record": round(numpy_ms, 4),
            "reference_score_frame_ms_per_row": round(pandas_ms, 4),
            "ratio_to_reference": round(numpy_ms / pandas_ms, 3), "versions": models.versions,
            "records": len(records), "peak_rss_gib": peak_rss_gib()}


PHASES = {"features": phase_features, "train": phase_train, "loader": phase_loader}


def run_phase(phase: str, work: Path, raw: Path, model: str = "churn", cutoffs: int = 6) -> dict:
    """Run one phase in a child process and return the JSON it prints last."""
    cmd = [sys.executable, __file__, "--phase", phase, "--work", str(work), "--raw", str(raw),
           "--model", model, "--cutoffs", str(cutoffs)]
    print(f"  {phase} {model} ({raw}) ...", flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"  {phase} {model}: {json.dumps(result)[:300]}", flush=True)
    return result


def ensure_synth(data: Path, users: int, seed: int) -> Path:
    """``data/raw`` generated by ``nextbest data synth`` unless it already exists."""
    raw = data / "raw"
    if not (raw / "orders.parquet").is_file():
        print(f"generating {users:,} users x 730 days (seed {seed}) into {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "nextbest.cli", "data", "synth", "--users",
                        str(users), "--days", "730", "--seed", str(seed), "--out", str(raw),
                        "--latent-out", str(data / "latent")], check=True)
    return raw


def scale(work: Path, users: int, cutoffs: int) -> dict:
    """Time and memory of a churn run over ``users`` x ``cutoffs``."""
    default = Path("/tmp/bench_1m")
    data = default if users == 1_000_000 and (default / "raw/orders.parquet").is_file() \
        else work / f"synth_{users}"
    raw = ensure_synth(data, users, 7)
    home = work / f"scale_{users}"
    feats = run_phase("features", home, raw, "churn", cutoffs)
    trained = run_phase("train", home, raw, "churn", cutoffs)
    ref = run_phase("reference", home, raw)
    return {"users": users, "cutoffs": cutoffs, "raw_dir": str(raw), "features": feats,
            "train": trained, "reference": ref,
            "ratio_to_reference": round(trained["seconds"] / max(ref["seconds"], 1e-9), 1),
            "rows_per_second": round(trained["n_train"] / trained["seconds"]),
            "goals": {"train_seconds": GOAL_SECONDS, "peak_rss_gib": GOAL_RSS_GIB},
            "goals_met": {"train_seconds": trained["seconds"] < GOAL_SECONDS,
                          "peak_rss_gib": trained["peak_rss_gib"] < GOAL_RSS_GIB}}


def quality(work: Path, users: int) -> dict:
    """ROC AUC of LightGBM and both baselines, churn and propensity, default settings."""
    raw = ensure_synth(work / f"synth_{users}", users, 7)
    home = work / f"quality_{users}"
    out: dict = {"users": users, "seed": 7}
    for model in ("churn", "propensity"):
        run_phase("features", home, raw, model, 6)
        out[model] = run_phase("train", home, raw, model, 6)
        base = out[model]["baselines_roc_auc"]
        out[model]["beats_baselines"] = all(out[model]["roc_auc"] > v for v in base.values())
    out["loader"] = run_phase("loader", home, raw)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--cutoffs", type=int, default=6)
    parser.add_argument("--quality-users", type=int, default=200_000)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--loader-only", action="store_true",
                        help="with --skip-quality: re-measure only the loader latency")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nextbest_bench_train"))
    parser.add_argument("--phase", choices=[*PHASES, "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="churn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        settings = settings_for(args.work, args.raw)
        result = phase_reference(settings) if args.phase == "reference" \
            else PHASES[args.phase](settings, args.model, args.cutoffs)
        print(json.dumps(result, default=str))
        return 0
    report: dict = {"benchmark": "train", "date": str(date.today()), "cores": os.cpu_count()}
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    report["quality"] = previous.get("quality") if args.skip_quality else \
        quality(args.work, args.quality_users)
    if args.loader_only:
        home = args.work / f"quality_{args.quality_users}"
        report["quality"]["loader"] = run_phase("loader", home, home)
    report["scale"] = previous.get("scale") if args.skip_scale else \
        scale(args.work, args.users, args.cutoffs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
