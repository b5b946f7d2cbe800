"""One interface for everything that picks an arm: the bandits, random, the rule book, the oracle.

The engine (:class:`decisions.engine.DecisionEngine`) asks a :class:`Chooser` for a pmf over
the eligible arms and samples from it; the learner hands it each logged reward; offline
evaluation asks it for the pmf it would have given on every logged decision. The simulator
runs every policy it compares through that same engine with a different chooser, so there
is exactly one dispatch of policies (:func:`make_chooser`), and simulated, served and
evaluated decisions cannot drift apart.

Choosers (``ChooserSpec.kind``):

- ``bandit`` (default): the Vowpal Wabbit bandit of ``bandit.exploration``
  (:mod:`decisions.bandit`); learns;
- ``random``: uniform over the eligible arms;
- ``static``: the tier rule book of the spec documents (:func:`static_arm`; at a seller
  decision point the seller rule book, :func:`static_seller_arm`);
- ``always``: one fixed arm whenever it is eligible (a baseline), else the first eligible;
- ``oracle``: the arm with the highest true expected reward, from a ``truth`` function only
  a simulator has.

A chooser belongs to one thread (a VW workspace cannot be shared between threads).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from decisions.bandit import make_bandit, vw_arguments
from decisions.encoding import BanditExample, DecisionInput
from nextbest.config import BanditConfig
from nextbest.errors import ValidationFailed

CHOOSERS = ("bandit", "random", "static", "always", "oracle")
HIGH_PRICE = 500.0  # the rule book's "high-priced item"
PREMIUM_TIERS = frozenset({"platinum", "gold"})
HIGH_VOLUME_SALES = 10  # the seller rule book's "high-volume seller": sales in 365 days


# The true expected reward of each of ``decision.arms``, in order (simulators only).
Truth = Callable[[DecisionInput], Sequence[float]]


class Chooser(Protocol):
    """What the engine, the learner and offline evaluation need of a policy."""

    kind: str

    def pmf(self, decision: DecisionInput) -> list[float]:
        """Probabilities of ``decision.arms``, in their order, summing to 1."""
        ...

    def learn(self, example: BanditExample, arm: str, reward: float, probability: float,
              converted: bool) -> None:
        """Learn one logged outcome (a no-op for choosers that do not learn)."""
        ...

    def save(self, path: Path) -> None:
        """Write what the chooser has learned to ``path`` (a checkpoint's model file)."""
        ...

    def close(self) -> None:
        """Free what the chooser holds."""
        ...


def static_arm(config: BanditConfig, tier: str, tags: Sequence[str], item_price: float | None,
               eligible: Sequence[str]) -> str | None:
    """The tier rule book: Platinum/Gold -> certification, price_sensitive -> coupon,
    high-priced item -> installment, else the default arm (first eligible when removed)."""
    wanted = [config.default_arm]
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


def static_seller_arm(config: BanditConfig, tier: str, tags: Sequence[str],
                      features: Mapping[str, float | None], eligible: Sequence[str]
                      ) -> str | None:
    """The documents' seller rule book, first rule that holds and is eligible:

    1. VIP seller -> ``vip_support``;
    2. sleeping seller -> ``recall_message``;
    3. prospective seller, or a seller without a sale yet -> ``first_order_free_commission``;
    4. a stale lister (seller tag ``stale_lister``, whose rule says: a price suggestion) ->
       ``price_suggestion``;
    5. high-volume seller (``sales_365d`` >= :data:`HIGH_VOLUME_SALES`) ->
       ``commission_tier_upgrade``;
    6. potential seller -> ``consignment_guide``;

    else the default arm (the first eligible arm when it is not eligible). Tier rules come
    first because the documents define the seller tiers by what each gets; the listing
    and volume rules then split the potential sellers the tier rule would send to the guide.
    """
    sold = features.get("items_sold")
    wanted = []
    if tier == "vip":
        wanted.append("vip_support")
    if tier == "sleeping":
        wanted.append("recall_message")
    if tier == "prospective" or sold == 0:
        wanted.append("first_order_free_commission")
    if "stale_lister" in tags:
        wanted.append("price_suggestion")
    if (features.get("sales_365d") or 0.0) >= HIGH_VOLUME_SALES:
        wanted.append("commission_tier_upgrade")
    if tier == "potential":
        wanted.append("consignment_guide")
    wanted.append(config.default_arm)
    for arm in wanted:
        if arm in eligible:
            return arm
    return eligible[0] if eligible else None


def one_hot(arms: Sequence[str], chosen: str | None) -> list[float]:
    """Probability 1 on ``chosen`` and 0 elsewhere."""
    return [1.0 if arm == chosen else 0.0 for arm in arms]


class _FixedChooser:
    """Base of the choosers that do not learn: learning is a no-op, a save writes a marker."""

    kind = "fixed"

    def learn(self, example: BanditExample, arm: str, reward: float, probability: float,
              converted: bool) -> None:
        """Nothing to learn."""

    def save(self, path: Path) -> None:
        """A checkpoint file that says which chooser it was (there is no model)."""
        Path(path).write_text(json.dumps({"chooser": self.kind}))

    def close(self) -> None:
        """Nothing to free."""


class RandomChooser(_FixedChooser):
    """Uniform over the eligible arms (the engine's seeded generator draws)."""

    kind = "random"

    def pmf(self, decision: DecisionInput) -> list[float]:
        k = len(decision.arms)
        return [1.0 / k] * k


class StaticChooser(_FixedChooser):
    """The tier rule book (:func:`static_arm`), deterministic."""

    kind = "static"

    def __init__(self, config: BanditConfig):
        self.config = config

    def pmf(self, decision: DecisionInput) -> list[float]:
        arms, user = decision.arms, decision.user
        if self.config.subject == "seller":
            chosen = static_seller_arm(self.config, user.tier, user.tags, user.features, arms)
        else:
            chosen = static_arm(self.config, user.tier, user.tags,
                                decision.context.item_price, arms)
        return one_hot(arms, chosen)


class AlwaysChooser(_FixedChooser):
    """One arm whenever it is eligible, else the first eligible arm."""

    kind = "always"

    def __init__(self, arm: str):
        self.arm = arm

    def pmf(self, decision: DecisionInput) -> list[float]:
        arms = decision.arms
        return one_hot(arms, self.arm if self.arm in arms else arms[0])


class OracleChooser(_FixedChooser):
    """The eligible arm with the highest true expected reward (first on ties)."""

    kind = "oracle"

    def __init__(self, truth: Truth):
        self.truth = truth

    def pmf(self, decision: DecisionInput) -> list[float]:
        arms = decision.arms
        expected = list(self.truth(decision))
        best = max(range(len(arms)), key=expected.__getitem__)
        return one_hot(arms, arms[best])


@dataclass(frozen=True)
class ChooserSpec:
    """Which chooser an engine runs: ``kind`` (one of :data:`CHOOSERS`), the ``arm`` of
    ``always`` and the ``truth`` of the oracle."""

    kind: str = "bandit"
    truth: Truth | None = None
    arm: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in CHOOSERS:
            raise ValidationFailed(f"unknown chooser {self.kind!r}; choose from "
                                   f"{', '.join(CHOOSERS)}", field="chooser")
        if self.kind == "always" and not self.arm:
            raise ValidationFailed("the always chooser needs an arm", field="chooser")
        if self.kind == "oracle" and self.truth is None:
            raise ValidationFailed("the oracle chooser needs the true expected rewards "
                                   "(only a simulator has them)", field="chooser")

    @property
    def learns(self) -> bool:
        """Whether the chooser learns from rewards (only the bandit does)."""
        return self.kind == "bandit"

    def build(self, config: BanditConfig, *, model_file: Path | None = None,
              learned: int = 0) -> Chooser:
        """A fresh chooser, or (bandit) one loaded from ``model_file`` that has learned
        ``learned`` rewards."""
        if self.kind == "bandit":
            return make_bandit(config, model_file=model_file, learned=learned)
        if self.kind == "random":
            return RandomChooser()
        if self.kind == "static":
            return StaticChooser(config)
        if self.kind == "always":
            assert self.arm is not None  # checked in __post_init__
            return AlwaysChooser(config.arm(self.arm).name)
        assert self.truth is not None  # checked in __post_init__
        return OracleChooser(self.truth)

    def fingerprint(self, config: BanditConfig) -> str:
        """Eight hex digits naming the chooser, its VW arguments and explorer, the arms and
        the reward: the first part of ``policy_version``.

        A checkpoint made under another fingerprint is not reused (the log is replayed).
        """
        body = {"arms": [a.model_dump() for a in config.arms],
                "reward": config.reward.model_dump()}
        if self.kind == "bandit":
            body |= {"args": vw_arguments(config),
                     "exploration": config.exploration.model_dump()}
            if config.reward_model.kind != "none" and config.exploration.model == "conversion":
                body["reward_model"] = config.reward_model.model_dump(exclude={"log_mlflow"})
        else:
            body["chooser"] = self.kind if self.arm is None else f"{self.kind}:{self.arm}"
        text = json.dumps(body, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


BANDIT = ChooserSpec()
