"""Policies compared on the simulated stream, and candidate policies for offline evaluation.

Every simulated policy answers ``choose(step, user, context, now) -> Choice`` and accepts
``feedback(choice, converted, revenue, now)``. They all go through the service's own policy
layer (:class:`serving.policy.PolicyLayer`: control group, opt-out, tag exclusions), so
they differ only in how they pick among the eligible arms:

* ``random``: uniform over the eligible arms;
* ``static``: the tier rule book of the spec documents (:func:`static_arm`);
* ``epsilon`` / ``squarecb``: the service's :class:`serving.engine.DecisionEngine` with VW
  epsilon-greedy / squarecb (``settings.bandit.exploration.algorithm``), decisions and
  feedback through its decision log exactly as in production;
* ``oracle``: the arm with the highest true expected reward (known only to the simulator).

For offline evaluation, :func:`candidate_action_dist` turns ``random``, ``static``, a saved
VW model or a Python policy (``path.py:function``) into the ``(n, k)`` matrix of the
probabilities the candidate gives each arm on every logged decision.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel

from nextbest.config import Settings
from nextbest.errors import DataError, MissingComponent, ValidationFailed
from serving.policy import ContactCounts, PlanKind, PolicyLayer, RequestContext, UserView

HIGH_PRICE = 500.0  # the rule book's "high-priced item" (same threshold as the view trigger)
PREMIUM_TIERS = frozenset({"platinum", "gold"})
POLICY_NAMES = ("random", "static", "epsilon", "squarecb", "oracle")


class Choice(BaseModel):
    """What a policy did on one request: the arm (None = no action) and its probability."""

    action: str | None
    probability: float
    control: bool = False
    event_id: str | None = None


class SimPolicy(Protocol):
    """A policy the simulator can run."""

    name: str

    def choose(self, step: int, user: UserView, context: RequestContext,
               now: datetime) -> Choice: ...

    def feedback(self, choice: Choice, converted: bool, revenue: float,
                 now: datetime) -> None: ...

    def close(self) -> None: ...


def static_arm(settings: Settings, tier: str, tags: Sequence[str], item_price: float | None,
               eligible: Sequence[str]) -> str | None:
    """The tier rule book: Platinum/Gold -> certification, price_sensitive -> coupon,
    high-priced item -> installment, else the default arm (first eligible when removed)."""
    wanted = [settings.bandit.default_arm]
    if (item_price or 0.0) >= HIGH_PRICE:
        wanted.insert(0, "installment")
    if "price_sensitive" in tags:
        wanted.insert(0, "coupon")
    if tier in PREMIUM_TIERS:
        wanted.insert(0, "certification")
    for arm in wanted:
        if arm in eligible:
            return arm
    return eligible[0] if eligible else None


class _LayeredPolicy:
    """Base of the policies that are not the engine: the policy layer, then ``pick``."""

    name = "base"

    def __init__(self, settings: Settings, seed: int):
        self.settings = settings
        self.layer = PolicyLayer(settings.bandit)
        self.rng = random.Random(seed)

    def pick(self, step: int, user: UserView, context: RequestContext,
             eligible: list[str]) -> tuple[str, float]:
        """The arm among ``eligible`` and the probability it was picked with."""
        raise NotImplementedError

    def choose(self, step: int, user: UserView, context: RequestContext,
               now: datetime) -> Choice:
        plan = self.layer.plan(user, ContactCounts())
        if plan.kind is PlanKind.CONTROL:
            return Choice(action=None, probability=1.0, control=True)
        if not plan.eligible:
            return Choice(action=None, probability=1.0)
        if plan.kind is PlanKind.OPT_OUT:
            return Choice(action=plan.eligible[0], probability=1.0)
        action, probability = self.pick(step, user, context, plan.eligible)
        return Choice(action=action, probability=probability)

    def feedback(self, choice: Choice, converted: bool, revenue: float, now: datetime) -> None:
        """Rule-based policies do not learn."""

    def close(self) -> None:
        """Nothing to release."""


class RandomPolicy(_LayeredPolicy):
    """Uniform over the eligible arms (seeded)."""

    name = "random"

    def pick(self, step, user, context, eligible):
        return self.rng.choice(eligible), 1.0 / len(eligible)


class StaticPolicy(_LayeredPolicy):
    """The tier rule book (:func:`static_arm`), deterministic."""

    name = "static"

    def pick(self, step, user, context, eligible):
        return static_arm(self.settings, user.tier, user.tags, context.item_price, eligible), 1.0


class FixedArmPolicy(_LayeredPolicy):
    """Always the same arm when eligible (a baseline for the benchmarks)."""

    def __init__(self, settings: Settings, seed: int, arm: str):
        super().__init__(settings, seed)
        self.arm = arm
        self.name = f"always_{arm}"

    def pick(self, step, user, context, eligible):
        return (self.arm if self.arm in eligible else eligible[0]), 1.0


class OraclePolicy(_LayeredPolicy):
    """The eligible arm with the highest true expected reward at ``step``."""

    name = "oracle"

    def __init__(self, settings: Settings, seed: int, expected_reward: np.ndarray):
        super().__init__(settings, seed)
        self.expected_reward = expected_reward
        self.index = {arm.name: i for i, arm in enumerate(settings.bandit.arms)}

    def pick(self, step, user, context, eligible):
        row = self.expected_reward[step]
        return max(eligible, key=lambda arm: row[self.index[arm]]), 1.0


def engine_settings(settings: Settings, algorithm: str, seed: int) -> Settings:
    """``settings`` with the bandit's exploration algorithm and seed replaced."""
    bandit = settings.bandit.model_copy(update={
        "exploration": settings.bandit.exploration.model_copy(update={"algorithm": algorithm}),
        "seed": seed,
    })
    return settings.model_copy(update={"bandit": bandit})


class EnginePolicy:
    """The service's decision engine, run in-process on a scratch decision log."""

    def __init__(self, settings: Settings, algorithm: str, seed: int, log_path: Path):
        try:
            from serving.engine import DecisionEngine
        except ImportError as exc:  # the serving stage is not installed or not importable
            raise MissingComponent(f"serving.engine is not importable ({exc}); the bandit "
                                   "policies need the serving package") from exc
        self.name = algorithm
        self.settings = engine_settings(settings, algorithm, seed)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for stale in log_path.parent.glob(log_path.name + "*"):
            stale.unlink()
        # A scratch log with batched commits: the same engine, without fsync per decision.
        self.engine = DecisionEngine(self.settings, log_path=log_path, role="inline",
                                     durable=False, bandit_dir=log_path.parent / "bandit")

    def choose(self, step: int, user: UserView, context: RequestContext,
               now: datetime) -> Choice:
        decision = self.engine.decide(user, context, now=now)
        return Choice(action=decision.action, probability=decision.probability,
                      control=decision.control, event_id=decision.event_id)

    def feedback(self, choice: Choice, converted: bool, revenue: float, now: datetime) -> None:
        if choice.event_id is not None:
            self.engine.feedback(choice.event_id, converted, revenue, now=now)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def build_policy(name: str, settings: Settings, *, seed: int, expected_reward: np.ndarray,
                 scratch_dir: Path) -> SimPolicy:
    """The simulated policy called ``name`` (one of :data:`POLICY_NAMES` or ``always_ARM``)."""
    arms = [arm.name for arm in settings.bandit.arms]
    if name == "random":
        return RandomPolicy(settings, seed)
    if name == "static":
        return StaticPolicy(settings, seed)
    if name == "oracle":
        return OraclePolicy(settings, seed, expected_reward)
    if name.startswith("always_") and name[len("always_"):] in arms:
        return FixedArmPolicy(settings, seed, name[len("always_"):])
    if name in ("epsilon", "squarecb", "softmax", "bag"):
        return EnginePolicy(settings, name, seed, scratch_dir / f"{name}.sqlite")
    raise ValidationFailed(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)} "
                           f"or always_<arm> with an arm of {arms}", field="policies")


# ----------------------------------------------------------------------- offline candidates

def _row_tags(row: pd.Series) -> list[str]:
    """Tags of a logged decision: a ``tags`` column (list, JSON or comma list) or VW tokens."""
    tags = row.get("tags")
    if isinstance(tags, list | tuple | np.ndarray):
        return [str(t) for t in tags]
    if isinstance(tags, str) and tags:
        text = tags.strip()
        return json.loads(text) if text.startswith("[") else [t.strip() for t in text.split(",")]
    return []


def _row_eligible(row: pd.Series, arms: list[str]) -> list[str]:
    """Eligible arms of a logged decision (all arms when the log does not say)."""
    eligible = row.get("eligible")
    if isinstance(eligible, str) and eligible.startswith("["):
        listed = [a for a in json.loads(eligible) if a in arms]
        return listed or arms
    return arms


def _price(row: pd.Series) -> float | None:
    value = row.get("item_price")
    return None if value is None or pd.isna(value) else float(value)


def candidate_action_dist(name: str, log: pd.DataFrame, settings: Settings) -> np.ndarray:
    """Probabilities the candidate ``name`` gives every arm on every logged decision, ``(n, k)``.

    ``name`` is ``random``, ``static``, a VW model file (``*.vw``/``*.model``: needs the
    service log's ``features`` column) or ``file.py:function`` where ``function(row: dict)
    -> dict[arm, probability]``.
    """
    arms = [arm.name for arm in settings.bandit.arms]
    index = {arm: i for i, arm in enumerate(arms)}
    dist = np.zeros((len(log), len(arms)))
    if name == "random":
        for i, (_, row) in enumerate(log.iterrows()):
            eligible = _row_eligible(row, arms)
            dist[i, [index[a] for a in eligible]] = 1.0 / len(eligible)
        return dist
    if name == "static":
        for i, (_, row) in enumerate(log.iterrows()):
            eligible = _row_eligible(row, arms)
            arm = static_arm(settings, str(row.get("tier", "")), _row_tags(row), _price(row),
                             eligible)
            dist[i, index[arm]] = 1.0
        return dist
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        return _python_dist(name, log, arms)
    path = Path(name)
    if path.is_file():
        return _vw_dist(path, log, settings)
    raise ValidationFailed(f"unknown candidate policy {name!r}: use random, static, a saved VW "
                           "model file or file.py:function", field="policy")


def _python_dist(spec: str, log: pd.DataFrame, arms: list[str]) -> np.ndarray:
    """Evaluate ``file.py:function`` on every logged row."""
    file, func_name = spec.split(":", 1)
    module_spec = importlib.util.spec_from_file_location("candidate_policy", file)
    if module_spec is None or module_spec.loader is None or not Path(file).is_file():
        raise ValidationFailed(f"cannot import policy file {file}", field="policy")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, func_name, None)):
        raise ValidationFailed(f"{file} has no function {func_name!r}", field="policy")
    func: Callable[[dict[str, Any]], dict[str, float]] = getattr(module, func_name)
    dist = np.zeros((len(log), len(arms)))
    for i, row in enumerate(log.to_dict("records")):
        pmf = func(row)
        for arm, p in pmf.items():
            if arm not in arms:
                raise ValidationFailed(f"policy returned unknown arm {arm!r}", field="policy")
            dist[i, arms.index(arm)] = p
    totals = dist.sum(axis=1)
    if not np.allclose(totals, 1.0, atol=1e-6):
        raise ValidationFailed("the policy's probabilities must sum to 1 on every row",
                               field="policy")
    return dist


def _vw_dist(path: Path, log: pd.DataFrame, settings: Settings) -> np.ndarray:
    """A saved VW model's pmf on every logged decision (from the logged VW features)."""
    from serving.bandit import BanditExample, make_bandit
    from serving.learner import CheckpointMeta

    if "features" not in log.columns:
        raise DataError("a VW model can only be evaluated on the service's decision log "
                        "(it needs the logged VW features)", field="policy")
    arms = [arm.name for arm in settings.bandit.arms]
    meta = Path(path).with_suffix(".json")  # a checkpoint's meta: where exploration stands
    learned = (CheckpointMeta.model_validate_json(meta.read_text()).rewards_learned
               if meta.is_file() else 0)
    bandit = make_bandit(settings.bandit, model_file=path, learned=learned)
    dist = np.zeros((len(log), len(arms)))
    try:
        for i, raw in enumerate(log["features"]):
            example = BanditExample.model_validate(json.loads(raw) if isinstance(raw, str)
                                                   else raw)
            if not example.arms:
                continue
            for arm, p in zip(example.arms, bandit.predict(example), strict=True):
                dist[i, arms.index(arm)] = p
    finally:
        bandit.close()
    totals = dist.sum(axis=1, keepdims=True)
    return np.divide(dist, totals, out=np.zeros_like(dist), where=totals > 0)
