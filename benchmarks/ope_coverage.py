"""Benchmark: coverage of the DR estimator on simulated epsilon-greedy logs.

For each of 100 seeds: a simulated stream of requests (``experiments.simulator``), logged by
an epsilon-greedy policy around the static rule book (epsilon 0.3, so every arm has
probability >= 0.1), with conversions drawn from the true response. The target policy is
a *different* rule (certification on luxury categories, coupon for price-sensitive users,
installment on high-priced items, else coupon); its true value on the stream is the mean
true expected reward of its choices. DR (cross-fitted LightGBM reward model) estimates it
with a 95% bootstrap interval; IPS and SNIPS are reported beside it.

Goals: DR within 5% of the truth, and its interval covering the truth in >= 90 of 100 seeds.
Writes benchmarks/results/ope_coverage.json. Usage: python benchmarks/ope_coverage.py
[--seeds 100] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from decisions.choosers import static_arm
from experiments.ope import ESTIMATORS, fit_reward_model
from experiments.simulator import SimulationConfig, make_stream, synthetic_population
from features.contract import LUXURY_CATEGORIES
from nextbest.config import Settings

RESULTS = Path(__file__).parent / "results" / "ope_coverage.json"
EPSILON = 0.3


def target_arm(tags: list[str], category: str, price: float) -> str:
    """The target policy: a rule different from the logging policy's."""
    if category in LUXURY_CATEGORIES:
        return "certification"
    if "price_sensitive" in tags:
        return "coupon"
    return "installment" if price >= 500 else "coupon"


def one_seed(settings: Settings, population: pd.DataFrame, seed: int, n: int) -> dict:
    """Log, estimate and compare to the truth for one seed."""
    arms = [a.name for a in settings.bandit.arms]
    stream = make_stream(settings, population, SimulationConfig(decisions=n, seed=seed))
    users = population.iloc[stream.user_index].reset_index(drop=True)
    rng = np.random.default_rng([seed, 99])
    greedy = np.array([arms.index(static_arm(settings.bandit, t, tags, p, arms)) for t, tags, p in
                       zip(users["tier"], users["tags"], stream.item_price, strict=True)])
    logging = np.full((n, len(arms)), EPSILON / len(arms))
    logging[np.arange(n), greedy] += 1 - EPSILON
    action = (rng.random(n)[:, None] > np.cumsum(logging, axis=1)).sum(axis=1)
    converted = stream.uniform < stream.probability[np.arange(n), action]
    cost = stream.cost[np.arange(n), action]
    reward = converted * (stream.item_price - cost)
    target_idx = np.array([arms.index(target_arm(tags, c, p)) for tags, c, p in
                           zip(users["tags"], stream.category, stream.item_price, strict=True)])
    target = np.eye(len(arms))[target_idx]
    truth = float(stream.expected_reward[np.arange(n), target_idx].mean())
    context = pd.DataFrame({
        "tier": users["tier"], "segment": users["segment"],
        "tags": [",".join(t) for t in users["tags"]], "page": stream.page,
        "category": stream.category, "item_price": stream.item_price, "hour": stream.hour,
        "aov": users["aov"], "monetary_365d": users["monetary_365d"],
        "recency_days": users["recency_days"], "frequency_total": users["frequency_total"]})
    pscore = logging[np.arange(n), action]
    q = fit_reward_model(context, action, reward, len(arms), seed=seed)
    out = {"seed": seed, "truth": truth, "logged_mean": float(reward.mean())}
    for est in ESTIMATORS:
        out[est.name] = est.estimate_interval(reward, action, pscore, target, q,
                                              n_bootstrap=200, seed=seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=20_000)
    args = parser.parse_args()
    settings = Settings()
    population = synthetic_population(settings, 5_000, 7)
    started = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        rows.append(one_seed(settings, population, seed, args.decisions))
        r = rows[-1]
        print(f"seed {seed:3d} truth {r['truth']:.3f} dr {r['dr']['mean']:.3f} "
              f"[{r['dr']['low']:.3f}, {r['dr']['high']:.3f}]", flush=True)
    elapsed = time.perf_counter() - started
    summary = {}
    for name in ("ips", "snips", "dr"):
        rel = np.array([abs(r[name]["mean"] - r["truth"]) / r["truth"] for r in rows])
        covered = sum(r[name]["low"] <= r["truth"] <= r[name]["high"] for r in rows)
        summary[name] = {"covered": int(covered), "of": len(rows),
                         "mean_abs_rel_error": float(rel.mean()),
                         "median_abs_rel_error": float(np.median(rel)),
                         "share_within_5pct": float((rel <= 0.05).mean()),
                         "relative_bias": float(np.mean([(r[name]["mean"] - r["truth"])
                                                         / r["truth"] for r in rows]))}
    out = {"seeds": args.seeds, "decisions": args.decisions, "epsilon": EPSILON,
           "summary": summary, "time_seconds": elapsed,
           "throughput_seeds_per_second": args.seeds / elapsed,
           "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "reference": "IPS on the same logs (ratio = DR / IPS mean absolute relative error)",
           "ratio_dr_to_ips_error": summary["dr"]["mean_abs_rel_error"]
           / summary["ips"]["mean_abs_rel_error"],
           "goals": {"dr_within": 0.05, "dr_covered_at_least": 90},
           "per_seed": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "per_seed"}, indent=2))


if __name__ == "__main__":
    main()
