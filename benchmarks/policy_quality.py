"""Benchmark: the service's policy against the oracle and the static rules, over seeds.

For each seed (default 1-10): a 50,000-decision simulation with ``static``, ``squarecb``
(the linear learner), ``service`` (the configured chooser as the default config sets it;
``--reward-model lightgbm`` or ``none`` overrides its reward model) and the oracle; the
true expected reward of the last 10,000 decisions as a share of the oracle's and of the
static rules'. Goals (issue 15): median over seeds >= 0.95 of the oracle and >= 1.12x
static; the worst seed >= 1.08x.

Also, on the first seed: drift recovery of ``service`` (decisions after the shift until its
rolling 2,000-decision mean is within 90% of the oracle's; goal <= 10,000), the in-process
decision latency with a fitted reward model (p50, goal < 2 ms), and the learner's
throughput replaying a log with refits running in its worker (goal >= 5,000 rewards/s).

Long-running (about a minute per seed per policy); not part of the test suite. Writes
benchmarks/results/policy_quality.json. Usage: python benchmarks/policy_quality.py
[--seeds 1-10] [--decisions 50000] [--reward-model config|lightgbm|none]
[--no-extras]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from decisions.engine import DecisionEngine
from experiments.cli import parse_seeds
from experiments.runner import contexts, simulate, spread, user_views
from experiments.simulator import SimulationConfig, make_stream, synthetic_population
from nextbest.config import Settings

RESULTS = Path(__file__).parent / "results" / "policy_quality.json"
POLICIES = ["static", "squarecb", "service"]
GOALS = {"median_of_oracle": 0.95, "median_vs_static": 1.12, "worst_vs_static": 1.08,
         "drift_recovery_decisions": 10_000, "decision_p50_ms": 2.0,
         "learner_rewards_per_second": 5_000}



def with_reward_model(settings: Settings, kind: str) -> Settings:
    bandit = settings.bandit.model_copy(update={"reward_model": settings.bandit.reward_model
                                                .model_copy(update={"kind": kind})})
    return settings.model_copy(update={"bandit": bandit})


def recovery(result, name: str, window: int = 2000, share: float = 0.9) -> int | None:
    """Decisions after the drift until ``name``'s rolling mean is within ``share`` of the
    oracle's."""
    start = result.stream.drift_index
    kernel = np.ones(window) / window
    ours = np.convolve(result.traces[name].expected[start:], kernel, mode="valid")
    oracle = np.convolve(result.traces["oracle"].expected[start:], kernel, mode="valid")
    hits = np.nonzero(ours >= share * oracle)[0]
    return int(hits[0] + window) if hits.size else None


def decision_latency(settings: Settings, seed: int, warm: int = 6000,
                     timed: int = 2000) -> dict[str, float | str | None]:
    """In-process decide() latency of an inline engine whose reward model is fitted: warm it
    with ``warm`` decisions and immediate feedback, then time ``timed`` decisions."""
    population = synthetic_population(settings, 2000, seed)
    stream = make_stream(settings, population, SimulationConfig(decisions=warm + timed,
                                                                seed=seed))
    views, requests = user_views(population), contexts(stream)
    with tempfile.TemporaryDirectory() as tmp:
        engine = DecisionEngine(settings, log_path=Path(tmp) / "log.sqlite", durable=False)
        try:
            for t in range(warm):
                d = engine.decide(views[stream.user_index[t]], requests[t])
                if d.action is not None:
                    converted = bool(stream.uniform[t] < 0.12)
                    engine.feedback(d.event_id, converted,
                                    float(stream.item_price[t]) if converted else 0.0)
            samples = []
            for t in range(warm, warm + timed):
                started = time.perf_counter()
                engine.decide(views[stream.user_index[t]], requests[t])
                samples.append((time.perf_counter() - started) * 1000)
            version = getattr(engine._model()[0], "reward_model_version", None)
        finally:
            engine.close()
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p99_ms": samples[int(0.99 * len(samples))],
            "reward_model_version": version}


def learner_throughput(settings: Settings, log: Path) -> dict[str, float]:
    """Rewards per second of a durable learner replaying ``log`` from scratch, with its
    reward model refits running in the refit worker (the service's set-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "log.sqlite"
        shutil.copy(log, copy)
        quiet = settings.model_copy(update={"bandit": settings.bandit.model_copy(update={
            "reward_model": settings.bandit.reward_model.model_copy(
                update={"log_mlflow": False})})})
        started = time.perf_counter()
        engine = DecisionEngine(quiet, log_path=copy, bandit_dir=Path(tmp) / "bandit")
        seconds = time.perf_counter() - started  # opening replays the whole log
        rewards = engine.stats()["rewards"]
        engine.close()
    return {"rewards": rewards, "seconds": seconds, "rewards_per_second": rewards / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--reward-model", default="config",
                        choices=["config", "lightgbm", "none"])
    parser.add_argument("--no-extras", action="store_true",
                        help="skip drift, latency and learner throughput")
    args = parser.parse_args()
    settings = Settings()
    if args.reward_model != "config":
        settings = with_reward_model(settings, args.reward_model)
    started = time.perf_counter()
    per_seed: dict[int, dict] = {}
    keep = Path(tempfile.mkdtemp(prefix="policy_quality_"))
    seeds = parse_seeds(args.seeds)
    for seed in seeds:
        population = synthetic_population(settings, 5_000, seed)
        result = simulate(settings, population,
                          SimulationConfig(decisions=args.decisions, seed=seed), POLICIES,
                          log_dir=keep / str(seed) if seed == seeds[0] else None)
        per_seed[seed] = result.to_json()
        ratios = per_seed[seed]["ratios"]
        print(seed, {p: {k: round(v, 4) for k, v in r.items()} for p, r in ratios.items()},
              flush=True)
    stats = spread(per_seed)
    service = stats["service"]
    out = {
        "decisions": args.decisions, "seeds": seeds, "last_k": args.decisions // 5,
        "reward_model": settings.bandit.reward_model.model_dump(),
        "spread": stats,
        "service_median_of_oracle": service["of_oracle"]["median"],
        "service_median_vs_static": service["vs_static"]["median"],
        "service_worst_vs_static": service["vs_static"]["min"],
        "squarecb_median_of_oracle": stats["squarecb"]["of_oracle"]["median"],
        "squarecb_median_vs_static": stats["squarecb"]["vs_static"]["median"],
        "squarecb_worst_vs_static": stats["squarecb"]["vs_static"]["min"],
        "decisions_per_second": {str(s): {p: m["decisions_per_second"]
                                          for p, m in payload["policies"].items()}
                                 for s, payload in per_seed.items()},
        "goals": GOALS,
    }
    if not args.no_extras:
        first = seeds[0]
        population = synthetic_population(settings, 5_000, first)
        drift = simulate(settings, population, SimulationConfig(
            decisions=args.decisions, seed=first, drift=True), ["service"])
        out["drift_recovery_decisions"] = recovery(drift, "service")
        out["decision_latency"] = decision_latency(settings, first)
        out["learner"] = learner_throughput(settings, keep / str(first) / "service.sqlite")
    shutil.rmtree(keep, ignore_errors=True)
    out["time_seconds"] = time.perf_counter() - started
    out["goals_met"] = {
        "median_of_oracle": out["service_median_of_oracle"] >= GOALS["median_of_oracle"],
        "median_vs_static": out["service_median_vs_static"] >= GOALS["median_vs_static"],
        "worst_vs_static": out["service_worst_vs_static"] >= GOALS["worst_vs_static"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({k: v for k, v in out.items() if k not in ("spread",
                                                                "decisions_per_second")},
                     indent=2, default=str))


if __name__ == "__main__":
    main()
