"""Benchmark: policy quality and speed of the simulator.

Runs the default 50,000-decision simulation (seed 7) with every policy plus the fixed-arm
baselines, and the same run with ``--drift``. Reports, from the true expected reward of
each policy's choices:

* squarecb over the last 10,000 decisions as a share of the oracle (goal >= 90%), of the
  best static rule (static or always-ARM; goal >= 110%) and of random (goal >= 130%);
* with drift: decisions after the shift until squarecb's rolling 2,000-decision mean is
  back within 90% of the oracle's (goal <= 10,000);
* decisions per second in-process of squarecb (goal >= 2,000), with the static policy's
  speed on the same stream as the reference.

``--also-seeds 8,9`` adds squarecb vs the static rules on other seeds (the spread).

Writes benchmarks/results/simulate.json. Usage: python benchmarks/simulate.py [--decisions N]
[--seed S] [--also-seeds 8,9,10,11]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from experiments.runner import simulate
from experiments.simulator import SimulationConfig, synthetic_population
from nextbest.config import Settings

RESULTS = Path(__file__).parent / "results" / "simulate.json"
POLICIES = ["random", "static", "always_coupon", "always_installment", "always_certification",
            "epsilon", "squarecb", "oracle"]


def last_mean(trace, k: int) -> float:
    """Mean true expected reward of the last ``k`` decisions."""
    return float(trace.expected[-k:].mean())


def recovery(result, window: int = 2000, share: float = 0.9) -> int | None:
    """Decisions after the drift until squarecb's rolling mean is within ``share`` of oracle."""
    start = result.stream.drift_index
    ours = result.traces["squarecb"].expected[start:]
    oracle = result.traces["oracle"].expected[start:]
    kernel = np.ones(window) / window
    ours_roll = np.convolve(ours, kernel, mode="valid")
    oracle_roll = np.convolve(oracle, kernel, mode="valid")
    hits = np.nonzero(ours_roll >= share * oracle_roll)[0]
    return int(hits[0] + window) if hits.size else None


def static_ratio(settings: Settings, seed: int, decisions: int, k: int) -> float:
    """squarecb's mean true expected reward over the last ``k`` decisions / static's, on
    the population and stream of ``seed``."""
    population = synthetic_population(settings, 5_000, seed)
    result = simulate(settings, population, SimulationConfig(decisions=decisions, seed=seed),
                      ["static", "squarecb"])
    return last_mean(result.traces["squarecb"], k) / last_mean(result.traces["static"], k)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--also-seeds", default="",
                        help="comma list of more seeds: squarecb vs static on each (spread)")
    args = parser.parse_args()
    settings = Settings()
    started = time.perf_counter()
    population = synthetic_population(settings, 5_000, args.seed)
    config = SimulationConfig(decisions=args.decisions, seed=args.seed)
    plain = simulate(settings, population, config, POLICIES)
    k = min(10_000, args.decisions // 5)
    last = {name: last_mean(trace, k) for name, trace in plain.traces.items()}
    statics = {n: v for n, v in last.items() if n == "static" or n.startswith("always_")}
    best_static = max(statics, key=statics.get)
    drift = simulate(settings, population, config.model_copy(update={"drift": True}),
                     ["static", "squarecb", "oracle"])
    drift_last = {name: last_mean(trace, k) for name, trace in drift.traces.items()}
    sq = plain.metrics["squarecb"]
    out = {
        "decisions": args.decisions, "seed": args.seed, "last_k": k,
        "expected_reward_last": last,
        "squarecb_vs_oracle": last["squarecb"] / last["oracle"],
        "squarecb_vs_best_static": last["squarecb"] / last[best_static],
        "best_static": best_static,
        "squarecb_vs_random": last["squarecb"] / last["random"],
        "epsilon_vs_oracle": last["epsilon"] / last["oracle"],
        "drift_recovery_decisions": recovery(drift),
        "drift_expected_reward_last": drift_last,
        "drift_squarecb_vs_oracle_last": drift_last["squarecb"] / drift_last["oracle"],
        "throughput_decisions_per_second": sq.decisions_per_second,
        "reference_static_decisions_per_second": plain.metrics["static"].decisions_per_second,
        "ratio_to_reference": sq.decisions_per_second
        / plain.metrics["static"].decisions_per_second,
        "time_seconds": time.perf_counter() - started,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "goals": {"squarecb_vs_oracle": 0.9, "squarecb_vs_best_static": 1.1,
                  "squarecb_vs_random": 1.3, "drift_recovery_decisions": 10_000,
                  "throughput_decisions_per_second": 2_000},
    }
    if args.also_seeds:
        out["squarecb_vs_static_by_seed"] = {
            args.seed: last["squarecb"] / last["static"],
            **{seed: static_ratio(settings, seed, args.decisions, k)
               for seed in map(int, args.also_seeds.split(","))}}
        out["time_seconds"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
