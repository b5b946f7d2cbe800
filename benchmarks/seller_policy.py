"""Benchmark: seller policies on the seller side of the simulator (issue 12's goals).

For each seed (default 1-5): a 50,000-decision simulation of decision point
``seller_offer`` (:mod:`experiments.seller_simulator`: 5,000 sellers and prospective
sellers) with ``random``, ``static`` (the documents' seller rule book), ``squarecb`` (the
linear VW learner with squarecb), ``service`` (the seller point's configured chooser, as
the service builds it) and the oracle; the true expected reward of the last 10,000
decisions as a share of the oracle's and of the static rules'. Goals: median over seeds
>= 0.90 of the oracle and >= 1.10x static, for squarecb and for service.

Long-running (about a minute per seed); not part of the test suite. Writes
benchmarks/results/seller_policy.json. Usage: python benchmarks/seller_policy.py
[--seeds 1-5] [--decisions 50000] [--users 5000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.cli import parse_seeds
from experiments.runner import simulate, spread
from experiments.seller_simulator import SELLERS, synthetic_seller_population
from experiments.simulator import SimulationConfig
from nextbest.config import SELLER_POINT, Settings

RESULTS = Path(__file__).parent / "results" / "seller_policy.json"
POLICIES = ["random", "static", "squarecb", "service"]
GOALS = {"median_of_oracle": 0.90, "median_vs_static": 1.10}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1-5")
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=5_000)
    args = parser.parse_args()
    settings = Settings().for_point(SELLER_POINT)
    per_seed: dict[int, dict] = {}
    started = time.perf_counter()
    for seed in parse_seeds(args.seeds):
        population = synthetic_seller_population(settings, args.users, seed)
        result = simulate(settings, population,
                          SimulationConfig(decisions=args.decisions, seed=seed), POLICIES,
                          side=SELLERS)
        per_seed[seed] = result.to_json()
        ratios = per_seed[seed]["ratios"]
        print(f"seed {seed}: " + ", ".join(
            f"{name} {r['of_oracle']:.3f} of oracle, {r['vs_static']:.3f}x static"
            for name, r in ratios.items() if name != "static"), flush=True)
    summary = spread(per_seed)
    met = {}
    for name in ("squarecb", "service"):
        met[name] = {
            "median_of_oracle": summary[name]["of_oracle"]["median"]
            >= GOALS["median_of_oracle"],
            "median_vs_static": summary[name]["vs_static"]["median"]
            >= GOALS["median_vs_static"]}
    config = settings.bandit
    payload = {
        "decision_point": SELLER_POINT, "seeds": list(per_seed), "decisions": args.decisions,
        "users": args.users, "last_decisions": max(args.decisions // 5, 1),
        "exploration": config.exploration.model_dump(),
        "goals": GOALS, "goals_met": met, "spread": summary,
        "per_seed": {str(seed): {
            "ratios": p["ratios"],
            "expected_reward_last": {name: m["expected_reward_last"]
                                     for name, m in p["policies"].items()},
            "oracle_expected_reward_last": p["oracle_expected_reward_last"],
            "arm_share_by_tier": {name: m["arm_share_by_tier"]
                                  for name, m in p["policies"].items()}}
            for seed, p in per_seed.items()},
        "time_seconds": time.perf_counter() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2))
    for name in ("random", "static", "squarecb", "service"):
        of, vs = summary[name]["of_oracle"], summary[name].get("vs_static", {})
        print(f"{name:<9} median {of['median']:.3f} of oracle (min {of['min']:.3f}), "
              f"{vs.get('median', float('nan')):.3f}x static (min {vs.get('min', float('nan')):.3f})")
    print(f"goals met: {met}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
