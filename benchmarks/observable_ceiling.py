"""Benchmark: how close to the oracle any policy can get that sees only what the service sees.

The simulator's oracle knows each user's latent traits; the service sees their store record
(noisy reflections of the traits: a coupon share counted from a few orders, ...) and the
request's context. This measures the ceiling that gap leaves (issue 15): a LightGBM
regressor per arm is fitted to the **true** expected reward (not to sampled conversions) on
``--train-populations`` populations other than the one evaluated (``--train-decisions``
requests each; new users, so it learns what the observables say about a user, not who the
user is), and then plays the evaluated seed's stream greedily through the service's decision
engine (the oracle's chooser given these predictions instead of the truth: same eligibility,
control share and rules). Reported per seed, last 10,000 of 50,000 decisions, as a share of
the oracle's expected reward and against the static rules, like policy_quality.py.

``--same-users`` also fits, per seed, a model on ``--train-decisions`` other requests of the
evaluated population itself, so it may learn each user from their record: what a learner
with that much data about the same users could reach (the service's bandit sees 50,000
rewards in all, about 10 a user).

Writes benchmarks/results/observable_ceiling.json. Usage:
python benchmarks/observable_ceiling.py [--seeds 1-10] [--same-users]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from decisions.policy import UserView
from experiments.cli import parse_seeds
from experiments.policies import EnginePolicy
from experiments.runner import (
    contexts,
    play,
    simulation_settings,
    stream_truth,
    user_views,
    values_truth,
)
from experiments.simulator import (
    CATEGORIES,
    PAGES,
    SimulationConfig,
    Stream,
    make_stream,
    synthetic_population,
)
from nextbest.config import Settings

RESULTS = Path(__file__).parent / "results" / "observable_ceiling.json"
USERS = 5_000
LAST = 10_000
TRAIN_SEED_BASE = 10_000  # training populations 10_001, 10_002, ...: never an evaluated seed
LGB_PARAMS = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 63,
              "min_data_in_leaf": 50, "feature_fraction": 0.9, "bagging_fraction": 0.8,
              "bagging_freq": 1, "seed": 1, "deterministic": True, "num_threads": 2,
              "verbose": -1}


def user_frame(views: list[UserView]) -> pd.DataFrame:
    """Per user, what the service sees: the numeric features of the store record, tier and
    segment (codes) and the model scores; never a latent trait."""
    frame = pd.DataFrame([view.features for view in views]).astype(float)
    frame["tier_code"] = pd.Categorical([v.tier for v in views]).codes
    frame["segment_code"] = pd.Categorical([v.segment for v in views]).codes
    frame["tag_count"] = [len(v.tags) for v in views]
    frame["churn_probability"] = [v.churn_probability for v in views]
    frame["purchase_propensity"] = [v.purchase_propensity for v in views]
    return frame


def observables(views: list[UserView], stream: Stream) -> pd.DataFrame:
    """One row per request: the user's observables and the request's context."""
    users = user_frame(views)
    rows = users.iloc[stream.user_index].reset_index(drop=True)
    rows["page"] = pd.Categorical(stream.page, categories=PAGES).codes
    rows["category"] = pd.Categorical(stream.category, categories=CATEGORIES).codes
    rows["log_price"] = np.log(stream.item_price)
    rows["hour"] = stream.hour
    return rows


def fit(settings: Settings, populations: list[pd.DataFrame], decisions: int,
        seeds: list[int]) -> tuple[list[lgb.Booster], list[str]]:
    """One booster per arm fitted to the true expected reward of every request."""
    frames, targets = [], []
    for population, seed in zip(populations, seeds, strict=True):
        stream = make_stream(settings, population, SimulationConfig(decisions=decisions,
                                                                    seed=seed,
                                                                    users=len(population)))
        frames.append(observables(user_views(population), stream))
        targets.append(stream.expected_reward)
    x = pd.concat(frames, ignore_index=True)
    y = np.vstack(targets)
    columns = list(x.columns)
    boosters = [lgb.train(LGB_PARAMS, lgb.Dataset(x, y[:, k]), num_boost_round=400)
                for k in range(y.shape[1])]
    return boosters, columns


def evaluate(settings: Settings, seed: int, decisions: int,
             models: dict[str, tuple[list[lgb.Booster], list[str]]]) -> dict[str, float]:
    """The last ``LAST`` decisions' expected reward of the oracle, the static rules and each
    fitted model's greedy policy on seed ``seed``'s stream; shares of the oracle."""
    population = synthetic_population(settings, USERS, seed)
    config = SimulationConfig(decisions=decisions, seed=seed, users=len(population))
    stream = make_stream(settings, population, config)
    views, requests = user_views(population), contexts(stream)
    x = observables(views, stream)
    truths = {"oracle": stream_truth(stream, settings), "static": None}
    for name, (boosters, columns) in models.items():
        predicted = np.column_stack([b.predict(x[columns]) for b in boosters])
        truths[name] = values_truth(predicted, settings)  # the oracle's chooser, predicted
    last = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, truth in truths.items():
            chooser = "static" if truth is None else "oracle"
            policy = EnginePolicy(settings, chooser, seed, Path(tmp) / f"{name}.sqlite",
                                  truth=truth)
            try:
                trace = play(policy, stream, views, requests, settings, config)
            finally:
                policy.close()
            last[name] = float(trace.expected[-LAST:].mean())
    out = {f"{name}_of_oracle": last[name] / last["oracle"] for name in truths}
    out |= {f"{name}_vs_static": last[name] / last["static"] for name in truths}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--train-populations", type=int, default=4)
    parser.add_argument("--train-decisions", type=int, default=100_000)
    parser.add_argument("--same-users", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    settings = simulation_settings(Settings())
    train_seeds = [TRAIN_SEED_BASE + i for i in range(1, args.train_populations + 1)]
    general = fit(settings, [synthetic_population(settings, USERS, s) for s in train_seeds],
                  args.train_decisions, train_seeds)
    print(f"fitted on {len(train_seeds)} other populations in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    per_seed = {}
    for seed in parse_seeds(args.seeds):
        models = {"ceiling": general}
        if args.same_users:
            own = synthetic_population(settings, USERS, seed)
            models["same_users"] = fit(settings, [own], args.train_decisions,
                                       [TRAIN_SEED_BASE * 10 + seed])
        per_seed[seed] = evaluate(settings, seed, args.decisions, models)
        print(seed, {k: round(v, 4) for k, v in per_seed[seed].items()}, flush=True)
    keys = next(iter(per_seed.values())).keys()
    out = {
        "decisions": args.decisions, "last_k": LAST, "users": USERS,
        "train_populations": train_seeds, "train_decisions": args.train_decisions,
        "per_seed": per_seed,
        "median": {k: statistics.median(r[k] for r in per_seed.values()) for k in keys},
        "min": {k: min(r[k] for r in per_seed.values()) for k in keys},
        "max": {k: max(r[k] for r in per_seed.values()) for k in keys},
        "time_seconds": time.perf_counter() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("median", "min", "max", "time_seconds")}, indent=2))


if __name__ == "__main__":
    main()
