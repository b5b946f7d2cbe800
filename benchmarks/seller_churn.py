"""Benchmark: the seller churn model against its recency baseline on the synthetic marketplace.

For each seed, synthesises a marketplace (``--users`` users over two years), then runs
``nextbest train seller_churn`` with the default configuration (6 monthly training cutoffs,
validation at the latest cutoff whose 90-day window is complete): label = no new listing in
the 90 days after the cutoff, population = sellers who listed or sold in the year before it.
The goal: the LightGBM model's ROC AUC on the out-of-time evaluation half above the baseline's
(the training event rate per bucket of days since the seller's last listing), on every seed.

Prints one line per seed and writes benchmarks/results/seller_churn.json.

    .venv/bin/python benchmarks/seller_churn.py [--users 20000] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from features.synth import synthesize
from nextbest.config import load_settings, path_overrides
from training.pipeline import train

RESULTS = Path(__file__).resolve().parent / "results" / "seller_churn.json"


def run_seed(users: int, seed: int, root: Path) -> dict:
    """Synthesise, train seller churn in ``root`` and return the run's numbers."""
    env = path_overrides(root) | {
        "NEXTBEST__MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db"}
    settings = load_settings(None, environ=env)
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    synthesize(users, 730, seed, settings.paths.raw_dir, settings.paths.latent_dir,
               start=date(2024, 1, 1))
    began = time.perf_counter()
    result = train(settings, "seller_churn", say=lambda _: None)
    recency = result.baselines["recency"]
    return {"seed": seed, "users": users, "validation_cutoff": str(result.plan.validation),
            "training_cutoffs": [str(c) for c in result.plan.training],
            "n_train": result.n_train, "n_valid": result.n_valid,
            "roc_auc": round(result.metrics.roc_auc, 4),
            "pr_auc": round(result.metrics.pr_auc, 4),
            "baseline_recency_roc_auc": round(recency.roc_auc, 4),
            "baseline_recency_pr_auc": round(recency.pr_auc, 4),
            "beats_baseline": result.metrics.roc_auc > recency.roc_auc,
            "promoted": result.decision.promoted,
            "train_seconds": round(time.perf_counter() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="seller_churn_") as tmp:
            run = run_seed(args.users, seed, Path(tmp))
        runs.append(run)
        print(f"seed {seed}: seller churn ROC AUC {run['roc_auc']:.4f} vs recency baseline "
              f"{run['baseline_recency_roc_auc']:.4f} ({run['n_train']:,} training rows, "
              f"{run['n_valid']:,} validation rows, {run['train_seconds']} s)")
    result = {
        "goal": "seller churn ROC AUC above the recency-of-last-listing baseline",
        "median_roc_auc": statistics.median(r["roc_auc"] for r in runs),
        "median_baseline_recency_roc_auc": statistics.median(
            r["baseline_recency_roc_auc"] for r in runs),
        "goal_met": all(r["beats_baseline"] for r in runs),
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"goal met: {result['goal_met']} -> {RESULTS}")


if __name__ == "__main__":
    main()
