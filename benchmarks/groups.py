"""Benchmark: do the group tags find the synthetic marketplace's latent groups?

Generates a marketplace (``features.synth``: risk, behaviour-path and sentiment groups drawn
from latent flags), builds the features of one ``as_of`` with the DuckDB engine and the
configured tag and risk rules, and compares each group's tag with its truth
(``features.synth.group_truth``):

- precision: of the users tagged, the share with the latent flag;
- recall: of the users with the flag who showed enough of it before as_of (the evidence
  each group needs is printed with it), the share tagged.

Goal: both at least 0.8 for every group. Prints a table and writes
benchmarks/results/groups.json.

    .venv/bin/python benchmarks/groups.py [--users 20000] [--seed 7] [--as-of 2025-12-01]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

from features.build import build_features
from features.synth import EVIDENCE, group_truth, synthesize
from nextbest.config import load_settings, path_overrides

RESULTS = Path(__file__).resolve().parent / "results" / "groups.json"
GOAL = 0.8


def score_groups(features: pd.DataFrame, trait: pd.DataFrame,
                 evidence: pd.DataFrame) -> pd.DataFrame:
    """Per group tag: users tagged, users to find, precision and recall (see the module)."""
    tags = features.set_index("user_id")["tags"].reindex(trait.index)
    rows = []
    for group in trait.columns:
        tagged = tags.map(lambda names, g=group: g in names if isinstance(names, list | tuple)
                          or hasattr(names, "__iter__") else False).astype(bool)
        truth = trait[group] & evidence[group]
        hits = int((tagged & trait[group]).sum())
        found = int((tagged & truth).sum())
        rows.append({"group": group, "tagged": int(tagged.sum()), "with_trait": int(
            trait[group].sum()), "to_find": int(truth.sum()),
            "precision": round(hits / tagged.sum(), 4) if tagged.sum() else None,
            "recall": round(found / truth.sum(), 4) if truth.sum() else None,
            "evidence": EVIDENCE[group]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2025, 12, 1))
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(None, environ=path_overrides(root))
        synthesize(args.users, args.days, args.seed, settings.paths.raw_dir,
                   settings.paths.latent_dir)
        features = build_features(settings, args.as_of, refresh_store=False, progress=False)
        trait, evidence = group_truth(settings.paths.raw_dir, settings.paths.latent_dir,
                                      args.as_of)
    scores = score_groups(features, trait, evidence)
    met = bool(((scores["precision"] >= GOAL) & (scores["recall"] >= GOAL)).all())
    result = {"benchmark": "groups", "users": args.users, "days": args.days, "seed": args.seed,
              "as_of": args.as_of.isoformat(), "goal": GOAL, "goal_met": met,
              "seconds": round(time.perf_counter() - began, 1),
              "groups": scores.to_dict(orient="records")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(scores.drop(columns="evidence").to_string(index=False))
    print(f"goal (precision and recall >= {GOAL} for every group): "
          f"{'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
