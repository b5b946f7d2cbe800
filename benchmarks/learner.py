"""Benchmark: how many rewards per second the one bandit learner learns from the decision log.

Fills a decision log in a temporary directory with ``--decisions`` decisions, each with a
reward (varied users, contexts and arms, built by the engine's own encoder), then times
``Learner.catch_up`` from an empty model, with checkpoints in a temporary bandit directory
at the configured ``checkpoint_every``: reading the log, parsing the logged features,
building the VW text, learning and checkpointing, exactly what a learner process does.

The reference, measured in the same run on the same examples: a fresh VW workspace of the
same model learning the VW lines prepared beforehand in a plain loop (the floor of any
learner that feeds VW text). Goal: at least 5,000 rewards/s.

    .venv/bin/python benchmarks/learner.py [--decisions 100000] [--seed 7]

Prints and writes benchmarks/results/learner.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import vowpalwabbit

from decisions.bandit import ConversionBandit, vw_arguments
from decisions.decision_log import Decision, DecisionLog, LoggedDecision, RewardRow, from_epoch
from decisions.encoding import FEATURE_BINS, BanditExample, build_example, encode_arms
from decisions.learner import CheckpointStore, Learner
from decisions.policy import RequestContext, UserView
from decisions.reward import reward_of
from nextbest.config import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "learner.json"
GOAL_REWARDS_PER_S = 5000.0
TIERS = ("platinum", "gold", "silver", "dormant", "churned", "new")
SEGMENTS = ("champions", "loyal", "at_risk", "hibernating", "promising")
TAGS = ("high_value", "price_sensitive", "browse_no_buy", "cart_abandoner", "at_risk")
CATEGORIES = ("bags", "shoes", "watches", "jewelry", "clothing")


def random_decision(settings: Settings, arm_tokens: dict[str, list[str]], rng: random.Random,
                    i: int) -> tuple[LoggedDecision, RewardRow]:
    """One logged decision about a random user and context, and its reward."""
    features = {name: (None if rng.random() < 0.1 else rng.uniform(0, 2 * edges[-1]))
                for name, edges in FEATURE_BINS.items()}
    user = UserView(user_id=f"u{i:07d}", tier=rng.choice(TIERS), segment=rng.choice(SEGMENTS),
                    tags=[t for t in TAGS if rng.random() < 0.2],
                    churn_probability=rng.random(), purchase_propensity=rng.random(),
                    features=features)
    context = RequestContext(channel=rng.choice(("app", "web")), page="item",
                             item_price=round(rng.uniform(10, 2000), 2),
                             category=rng.choice(CATEGORIES), hour=rng.randrange(24))
    eligible = list(arm_tokens)
    example = build_example(arm_tokens, user, context, eligible)
    arm = rng.choice(eligible)
    ts = from_epoch(1.7e9 + i)
    decision = Decision(event_id=f"e{i:08d}", user_id=user.user_id, action=arm,
                        probability=1 / len(eligible), pmf=dict.fromkeys(eligible,
                                                                         1 / len(eligible)),
                        personalized=True, control=False, reason="benchmark",
                        policy_version="bench.0", eligible=eligible, ts=ts, learnable=True)
    converted = rng.random() < 0.2
    revenue = context.item_price if converted else 0.0
    reward = reward_of(settings.bandit, arm, converted, revenue, context.item_price)
    row = RewardRow(event_id=decision.event_id, converted=converted, revenue=revenue,
                    reward=reward, source="feedback", ts=ts, learnable=True)
    return LoggedDecision(decision=decision, tier=user.tier, features=example.model_dump(),
                          item_price=context.item_price), row


def fill_log(settings: Settings, path: Path, decisions: int, seed: int) -> list[str]:
    """Write the decisions and rewards; return the VW lines of the learned examples."""
    rng = random.Random(seed)
    arm_tokens = encode_arms(settings.bandit)
    log = DecisionLog(path, durable=False)
    lines = []
    for i in range(decisions):
        logged, reward = random_decision(settings, arm_tokens, rng, i)
        log.record_decision(logged)
        log.insert_reward(reward)
        example = BanditExample.model_validate(logged.features)
        lines.append(ConversionBandit.vw_line(example, logged.decision.action or "",
                                              1 if reward.converted else -1))
    log.close()
    return lines


def reference_seconds(settings: Settings, lines: list[str]) -> float:
    """Seconds for a fresh workspace of the same model to learn ``lines`` in a loop."""
    workspace = vowpalwabbit.Workspace(arg_list=vw_arguments(settings.bandit))
    began = time.perf_counter()
    for line in lines:
        workspace.learn(line)
    seconds = time.perf_counter() - began
    workspace.finish()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    settings = load_settings(None, environ={})
    with tempfile.TemporaryDirectory(prefix="nextbest-learner-bench-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        lines = fill_log(settings, root / "decisions.sqlite", args.decisions, args.seed)
        fill_seconds = time.perf_counter() - began
        log = DecisionLog(root / "decisions.sqlite",
                          synchronous=settings.bandit.log_synchronous)
        store = CheckpointStore(root / "bandit")
        learner = Learner(settings, log, store=store)
        began, began_cpu = time.perf_counter(), time.process_time()
        consumed = learner.catch_up()
        learner.checkpoint()
        seconds, cpu = time.perf_counter() - began, time.process_time() - began_cpu
        learned = learner.meta.rewards_learned
        learner.chooser.close()
        log.close()
        reference = reference_seconds(settings, lines)
    assert consumed == args.decisions == learned, (consumed, learned)
    rate = learned / seconds
    result = {
        "benchmark": "learner", "decisions": args.decisions, "seed": args.seed,
        "model": settings.bandit.exploration.model,
        "checkpoint_every": settings.bandit.checkpoint_every,
        "fill_seconds": round(fill_seconds, 2),
        "catch_up_seconds": round(seconds, 3), "catch_up_cpu_seconds": round(cpu, 3),
        "rewards_learned": learned, "rewards_per_second": round(rate),
        "reference": "a fresh VW workspace learning the prepared VW lines in a loop",
        "reference_seconds": round(reference, 3),
        "reference_rewards_per_second": round(len(lines) / reference),
        "ratio_to_reference": round(seconds / reference, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "goal_rewards_per_second": GOAL_REWARDS_PER_S,
        "goal_met": rate >= GOAL_REWARDS_PER_S,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
