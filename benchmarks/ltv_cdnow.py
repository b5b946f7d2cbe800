"""Benchmark: the LTV model against BG/NBD + Gamma-Gamma on the real CDNOW log.

The CDNOW master file (23,570 customers who first bought in Q1 1997, their purchases to
June 1998) ships with ``lifetimes``. This imports it exactly as a user would::

    nextbest data import orders CDNOW_master.txt --map buyer_id=1,ts=2,amount=4

then runs ``nextbest train ltv --as-of 1997-10-01 --horizon-days 91`` (validation on the
holiday quarter; training cutoffs whose windows close by 1997-10-01), which logs LightGBM
and the baseline in one MLflow run. Goal: LightGBM's total spend and purchase forecasts no
further from the actual totals than BG/NBD + Gamma-Gamma's, and its Spearman rank
correlation with actual spend at least theirs. The default cutoffs (``training.cutoffs``
6, every ``training.cutoff_step_days`` 30) decide the goal; other cutoff plans are run
too and reported, so the result does not rest on one lucky choice.

Prints a table and writes benchmarks/results/ltv_cdnow.json.

    .venv/bin/python benchmarks/ltv_cdnow.py [--plans 6x30,3x30,4x30,8x14]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import lifetimes.datasets

from features.importers import import_table
from nextbest.config import load_settings, path_overrides
from training.ltv import BASELINE, train_ltv
from training.metrics import LtvMetrics

RESULTS = Path(__file__).resolve().parent / "results" / "ltv_cdnow.json"
CDNOW = Path(lifetimes.datasets.__file__).parent / "CDNOW_master.txt"
MAPPING = {"buyer_id": "1", "ts": "2", "amount": "4"}
AS_OF, HORIZON = date(1997, 10, 1), 91


def goal_met(model: LtvMetrics, baseline: LtvMetrics) -> bool:
    """Totals no further from the actual ones than the baseline's, Spearman at least its."""
    return (abs(model.spend_error) <= abs(baseline.spend_error)
            and abs(model.purchases_error) <= abs(baseline.purchases_error)
            and model.spearman >= baseline.spearman)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", default="6x30,3x30,4x30,8x14",
                        help="training cutoff plans CUTOFFSxSTEP_DAYS; the first decides")
    args = parser.parse_args()
    plans = [tuple(int(x) for x in plan.split("x")) for plan in args.plans.split(",")]
    runs = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        env = path_overrides(tmp)
        imported = import_table("orders", CDNOW, MAPPING,
                                load_settings(None, environ=env).paths.raw_dir)
        for cutoffs, step in plans:
            settings = load_settings(None, environ={
                **env, "NEXTBEST__TRAINING__CUTOFF_STEP_DAYS": str(step)})
            result = train_ltv(settings, as_of=AS_OF, horizon=HORIZON, cutoffs=cutoffs,
                               say=lambda _line: None)
            runs.append({"cutoffs": cutoffs, "step_days": step,
                         "training_cutoffs": [str(c) for c in result.plan.training],
                         "iterations": result.iterations,
                         "lightgbm": result.metrics.model_dump(),
                         BASELINE: result.baseline.model_dump(),
                         "goal_met": goal_met(result.metrics, result.baseline),
                         "mlflow_run_id": result.run_id})
    result = {"benchmark": "ltv_cdnow", "data": f"{CDNOW.name} ({imported.accepted:,} rows)",
              "import": "nextbest data import orders CDNOW_master.txt --map "
                        "buyer_id=1,ts=2,amount=4",
              "as_of": AS_OF.isoformat(), "horizon_days": HORIZON,
              "goal": "|spend error| and |purchase error| <= BG/NBD+GG's, Spearman >= its",
              "goal_met": runs[0]["goal_met"],
              "seconds": round(time.perf_counter() - began, 1), "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'plan':<8} {'model':<9} {'spend':>8} {'purch.':>8} {'MAE':>7} {'Spearman':>9} "
          f"{'top10%':>7} {'Gini':>6}")
    for run in runs:
        for name in ("lightgbm", BASELINE):
            m = run[name]
            print(f"{run['cutoffs']}x{run['step_days']:<6} {name:<9} {m['spend_error']:>+8.1%} "
                  f"{m['purchases_error']:>+8.1%} {m['mae_spend']:>7.2f} {m['spearman']:>9.4f} "
                  f"{m['top_decile_capture']:>7.1%} {m['gini']:>6.3f}")
    print(f"goal (default plan {runs[0]['cutoffs']}x{runs[0]['step_days']}): "
          f"{'met' if result['goal_met'] else 'missed'}; other plans: "
          + ", ".join(f"{r['cutoffs']}x{r['step_days']} {'met' if r['goal_met'] else 'missed'}"
                      for r in runs[1:]))


if __name__ == "__main__":
    main()
