"""The Vowpal Wabbit contextual bandit: what VW learns and how its scores become a pmf.

One example per decision: a ``shared`` part with the user and the request context, and one
part per eligible arm. Namespaces (their first letter is what ``-q`` interactions refer to):

- ``S`` segmentation: tier, segment, tags, known;
- ``U`` user scores: churn and propensity bins, and bins of the store record's behaviour
  columns (``FEATURE_BINS``: RFM, aov, coupon share, category entropy, cart abandonments,
  return rate, spend trend): what a platform knows about price sensitivity, brand focus
  and appetite for financing;
- ``C`` context: channel, page, category, luxury or not, item price bin, the item price
  relative to the user's aov, hour bin;
- ``P`` price: ``value:<item price / 100>`` (the user's aov when the request has no item);
- ``A`` arm: ``arm=<name>`` plus the arm's own features from ``ArmConfig.features``.

Two models (``exploration.model``), one interface (:func:`make_bandit`):

- ``conversion`` (default, :class:`ConversionBandit`): a VW logistic regression of
  P(convert | S, U, C, A) with the configured interactions (``UA``: this user's lift from
  this arm). An arm's expected reward is ``p_hat x margin``, where the margin is the
  decision's value (:attr:`BanditExample.value`) minus the arm's cost on it, both known,
  so VW only learns the binary outcome; the explorer (SquareCB's inverse-gap weighting,
  epsilon-greedy or softmax) turns the expected rewards into the pmf. It learns the chosen
  arm's outcome without importance weights: SquareCB's online regression oracle.
- ``profit`` (:class:`VWBandit`): VW ``--cb_explore_adf`` with VW's own explorer,
  regressing ``cost = -reward / reward.scale``; ``P`` crossed with the arm and the user
  (``PUA``) lets it learn lifts that scale with the price.

Every number written into VW text goes through :func:`vw_number` (a numpy float's ``repr``
is ``np.float64(..)``, which VW would not read as a label). A ``vowpalwabbit.Workspace``
cannot be pickled or shared between threads: each bandit belongs to one thread. The
string APIs used here parse and finish every example themselves.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Protocol

import vowpalwabbit
from pydantic import BaseModel, Field

from nextbest.config import ArmConfig, BanditConfig
from serving.policy import RequestContext, UserView

_UNSAFE = re.compile(r"[\s|:]+")

# Bin edges: a value gets the number of edges it is >= to; a missing value gets "na".
SCORE_EDGES = (0.1, 0.25, 0.5, 0.75)
# The store record columns (CONTRACT.md) the bandit reads, and their bin edges.
FEATURE_BINS: dict[str, tuple[float, ...]] = {
    "recency_days": (7, 30, 90, 180),
    "frequency_total": (1, 2, 4, 8),
    "monetary_365d": (1, 100, 500, 1000, 5000),
    "aov": (25, 50, 100, 250, 500),
    "coupon_share": (0.1, 0.25, 0.4, 0.55, 0.7, 0.85),
    "category_entropy": (0.3, 0.6, 0.9, 1.2, 1.5),
    "cart_abandonments_30d": (1, 2, 3, 5, 8),
    "return_rate": (0.05, 0.1, 0.2, 0.35),
    "spend_trend": (-100, -1, 1, 100),
}
PRICE_EDGES = (25, 50, 100, 250, 500, 1000)
RELATIVE_PRICE_EDGES = (0.5, 0.8, 1.25, 2.0, 4.0)  # item price / the user's aov
PRICE_UNIT = 100.0  # namespace P carries the price in hundreds
LUXURY_CATEGORIES = frozenset({"bags", "watches", "jewelry"})
# The conversion model's loss; a saved VW model does not keep it, so loading passes it again.
LOGISTIC_LOSS = ("--loss_function", "logistic")
HOUR_PARTS = ("night",) * 6 + ("morning",) * 6 + ("afternoon",) * 6 + ("evening",) * 6


class BanditExample(BaseModel):
    """The features of one decision exactly as sent to VW (also what the decision log keeps).

    ``shared`` maps a namespace to its feature tokens; ``arms`` maps each eligible arm, in
    the order VW saw them, to its tokens.
    """

    shared: dict[str, list[str]] = Field(default_factory=dict)
    arms: dict[str, list[str]] = Field(default_factory=dict)
    # What a conversion is worth before arm costs: the item price, else the user's aov
    # (None when neither is known; the margin then uses reward.scale).
    value: float | None = None


def _token(value: object) -> str:
    """A VW-safe token: no whitespace, ``|`` or ``:``."""
    return _UNSAFE.sub("_", str(value)) or "_"


def _bin(name: str, value: float | None, edges: tuple[float, ...]) -> str:
    """``name=k`` where k counts the edges ``value`` reaches; ``name=na`` when missing."""
    if value is None:
        return f"{name}=na"
    return f"{name}={bisect.bisect_right(edges, value)}"


def encode_shared(user: UserView, context: RequestContext) -> dict[str, list[str]]:
    """The shared namespaces S, U and C of one decision."""
    segmentation = [f"tier={_token(user.tier)}", f"segment={_token(user.segment)}",
                    f"known={int(user.known)}"]
    segmentation += [f"tag={_token(tag)}" for tag in sorted(user.tags)]
    scores = [_bin("churn", user.churn_probability, SCORE_EDGES),
              _bin("propensity", user.purchase_propensity, SCORE_EDGES)]
    scores += [_bin(name, user.features.get(name), edges) for name, edges in FEATURE_BINS.items()]
    shared = {"S": segmentation, "U": scores, "C": encode_context(user, context)}
    value = context.item_price if context.item_price is not None else user.features.get("aov")
    if value is not None:
        shared["P"] = [f"value:{vw_number(value / PRICE_UNIT)}"]
    return shared


def encode_context(user: UserView, context: RequestContext) -> list[str]:
    """Namespace C: where the user is, what the item costs, absolutely and against their aov."""
    hour = "na" if context.hour is None else HOUR_PARTS[context.hour]
    category = context.category or "na"
    aov = user.features.get("aov")
    relative = (context.item_price / aov if context.item_price is not None and aov
                else None)
    return [f"channel={_token(context.channel)}", f"page={_token(context.page)}",
            f"category={_token(category)}", f"luxury={int(category in LUXURY_CATEGORIES)}",
            _bin("price", context.item_price, PRICE_EDGES),
            _bin("relative_price", relative, RELATIVE_PRICE_EDGES), f"hour={hour}"]


def vw_number(value: float) -> str:
    """A number as VW text: a plain decimal (``repr`` of a numpy float is not one)."""
    return f"{float(value):.9g}"


def encode_arm(arm: ArmConfig) -> list[str]:
    """``arm=<name>`` plus the arm's features: strings as ``key=value``, numbers as ``key:x``."""
    tokens = [f"arm={_token(arm.name)}"]
    for key, value in sorted(arm.features.items()):
        if isinstance(value, str):
            tokens.append(f"{_token(key)}={_token(value)}")
        else:
            tokens.append(f"{_token(key)}:{vw_number(value)}")
    return tokens


def encode_arms(config: BanditConfig) -> dict[str, list[str]]:
    """The tokens of every configured arm, computed once per engine."""
    return {arm.name: encode_arm(arm) for arm in config.arms}


def build_example(arm_tokens: dict[str, list[str]], user: UserView, context: RequestContext,
                  eligible: list[str]) -> BanditExample:
    """The VW example for choosing among ``eligible`` (``arm_tokens`` from encode_arms)."""
    value = context.item_price if context.item_price is not None else user.features.get("aov")
    return BanditExample(shared=encode_shared(user, context),
                         arms={name: arm_tokens[name] for name in eligible},
                         value=None if value is None or not math.isfinite(value) else value)


def to_vw_lines(example: BanditExample,
                label: tuple[str, float, float] | None = None) -> list[str]:
    """The multi-line VW text; ``label`` = (chosen arm, cost, probability) when learning."""
    shared = " ".join(f"|{ns} {' '.join(tokens)}" for ns, tokens in example.shared.items())
    lines = [f"shared {shared}"]
    for name, tokens in example.arms.items():
        prefix = (f"0:{vw_number(label[1])}:{vw_number(label[2])} "
                  if label and label[0] == name else "")
        lines.append(f"{prefix}|A {' '.join(tokens)}")
    return lines


def _interaction_args(terms: list[str]) -> list[str]:
    """``-q`` / ``--cubic`` / ``--interactions`` flags for namespace-letter terms."""
    flags = {2: "-q", 3: "--cubic"}
    args: list[str] = []
    for term in terms:
        args += [flags.get(len(term), "--interactions"), term]
    return args


def vw_arguments(config: BanditConfig) -> list[str]:
    """The VW command line of a fresh model, from the exploration config."""
    exploration = config.exploration
    common = ["--quiet", "--random_seed", str(config.seed), "-b", str(config.bits)]
    tail = _interaction_args(exploration.interactions) + exploration.extra_args.split()
    if exploration.model == "conversion":
        return [*LOGISTIC_LOSS, *common, "-l", str(exploration.learning_rate), *tail]
    args = ["--cb_explore_adf", *common]
    if exploration.algorithm == "squarecb":
        args += ["--squarecb", "--gamma_scale", str(exploration.gamma_scale),
                 "--gamma_exponent", str(exploration.gamma_exponent)]
    elif exploration.algorithm == "epsilon":
        args += ["--epsilon", str(exploration.epsilon)]
    elif exploration.algorithm == "softmax":
        args += ["--softmax", "--lambda", str(exploration.softmax_lambda)]
    else:
        args += ["--bag", str(exploration.bag_size), "--epsilon", str(exploration.epsilon)]
    if exploration.clip_probability > 0:
        args += ["--clip_p", str(exploration.clip_probability)]
    return args + tail


def model_fingerprint(config: BanditConfig) -> str:
    """Eight hex digits naming the VW arguments, explorer, arms and reward: part of
    ``policy_version``.

    A checkpoint made under another fingerprint is not reused (the log is replayed instead).
    """
    body = json.dumps({"args": vw_arguments(config),
                       "exploration": config.exploration.model_dump(),
                       "arms": [a.model_dump() for a in config.arms],
                       "reward": config.reward.model_dump()}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def arm_cost(arm: ArmConfig, item_price: float | None, revenue: float) -> float:
    """What the arm costs on a conversion: ``cost + cost_rate * item_price``.

    Without an item price (a home page decision) the revenue stands in for it.
    """
    price = item_price if item_price is not None else revenue
    return arm.cost + arm.cost_rate * price


def reward_of(config: BanditConfig, action: str | None, converted: bool, revenue: float,
              item_price: float | None) -> float:
    """Reward per ``reward.kind``: profit = converted x (revenue - arm cost), or conversion.

    A decision without an action (control group) has no arm cost, so its profit is the
    plain revenue: that is what lift is measured against.
    """
    if config.reward.kind == "conversion":
        return 1.0 if converted else 0.0
    if not converted:
        return 0.0
    cost = 0.0 if action is None else arm_cost(config.arm(action), item_price, revenue)
    return revenue - cost


class Bandit(Protocol):
    """What the engine and the learner need of a bandit model (one thread each)."""

    def predict(self, example: BanditExample) -> list[float]: ...

    def learn(self, example: BanditExample, action: str, reward: float, probability: float,
              converted: bool) -> None: ...

    def save(self, path: Path) -> None: ...

    def close(self) -> None: ...


def make_bandit(config: BanditConfig, *, model_file: Path | None = None,
                learned: int = 0) -> Bandit:
    """A fresh bandit of ``config.exploration.model``, or one loaded from ``model_file``.

    ``learned``: rewards the loaded model has learned (checkpoint meta), which sets where
    SquareCB's exploration schedule resumes.
    """
    if config.exploration.model == "conversion":
        return ConversionBandit(config, model_file=model_file, learned=learned)
    return VWBandit(config, model_file=model_file)


def margin(config: BanditConfig, arm: ArmConfig, value: float | None) -> float:
    """The reward of a conversion under ``arm`` on a decision worth ``value``
    (:func:`reward_of` with the revenue equal to the value)."""
    if config.reward.kind == "conversion":
        return 1.0
    value = config.reward.scale if value is None else value
    return value - arm_cost(arm, value, value)


def example_value(example: BanditExample) -> float | None:
    """The decision's value: ``example.value``, else (a log written before it was kept) the
    price namespace ``P``, else None."""
    if example.value is not None:
        return example.value
    for token in example.shared.get("P", []):
        if token.startswith("value:"):
            return float(token[len("value:"):]) * PRICE_UNIT
    return None


def explore(config: BanditConfig, expected: list[float], learned: int) -> list[float]:
    """The pmf over arms from their expected rewards (in units of ``reward.scale``).

    squarecb: inverse-gap weighting (Foster and Rakhlin, 2020), each other arm gets
    ``1 / (K + gamma x gap)`` with ``gamma = gamma_scale x (learned + 1) ** gamma_exponent``
    and the best arm the rest; epsilon: ``1 - epsilon`` on the best arm, the rest spread
    evenly; softmax: ``exp(softmax_lambda x expected)`` normalised. Ties go to the first.
    """
    exploration = config.exploration
    k = len(expected)
    best = max(range(k), key=expected.__getitem__)
    if exploration.algorithm == "softmax":
        top = expected[best]
        weights = [math.exp(exploration.softmax_lambda * (y - top)) for y in expected]
        total = sum(weights)
        return [w / total for w in weights]
    if exploration.algorithm == "epsilon":
        pmf = [exploration.epsilon / k] * k
    else:
        gamma = exploration.gamma_scale * (learned + 1) ** exploration.gamma_exponent
        pmf = [1.0 / (k + gamma * (expected[best] - y)) for y in expected]
    pmf[best] = 0.0
    pmf[best] = 1.0 - sum(pmf)
    return pmf


class ConversionBandit:
    """A VW logistic regression of conversion per (user, context, arm), explored in Python.

    ``learned`` counts the rewards learned (restored from the checkpoint meta on load), the
    ``t`` of SquareCB's schedule.
    """

    def __init__(self, config: BanditConfig, *, model_file: Path | None = None,
                 learned: int = 0):
        self.config = config
        self.learned = learned
        self.arms = {arm.name: arm for arm in config.arms}
        if model_file is None:
            self.workspace = vowpalwabbit.Workspace(arg_list=vw_arguments(config))
        else:  # the model file keeps -q, -b and -l, not the loss: resuming needs it again
            self.workspace = vowpalwabbit.Workspace(
                arg_list=["-i", str(model_file), "--quiet", *LOGISTIC_LOSS])

    @staticmethod
    def shared_text(example: BanditExample) -> str:
        """The shared namespaces but P as VW text (P is not an input of this model)."""
        return " ".join(f"|{ns} {' '.join(tokens)}" for ns, tokens in example.shared.items()
                        if ns != "P")

    @classmethod
    def vw_line(cls, example: BanditExample, arm: str, label: int | None = None,
                shared: str | None = None) -> str:
        """One arm's VW text: the shared namespaces, then the arm's; ``label`` +-1."""
        shared = cls.shared_text(example) if shared is None else shared
        prefix = "" if label is None else f"{label} "
        return f"{prefix}{shared} |A {' '.join(example.arms[arm])}"

    def conversion_probabilities(self, example: BanditExample) -> list[float]:
        """P(convert) of each arm of ``example``, in its order."""
        shared = self.shared_text(example)
        logits = [self.workspace.predict(self.vw_line(example, arm, shared=shared))
                  for arm in example.arms]
        return [1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0))) for z in logits]

    def expected_rewards(self, example: BanditExample) -> list[float]:
        """Each arm's P(convert) x margin, in units of ``reward.scale``."""
        scale = self.config.reward.scale
        value = example_value(example)
        return [p * margin(self.config, self.arms[arm], value) / scale
                for arm, p in zip(example.arms, self.conversion_probabilities(example),
                                  strict=True)]

    def predict(self, example: BanditExample) -> list[float]:
        """The pmf over the arms of ``example``, in their order."""
        if len(example.arms) == 1:
            return [1.0]
        return explore(self.config, self.expected_rewards(example), self.learned)

    def learn(self, example: BanditExample, action: str, reward: float, probability: float,
              converted: bool) -> None:
        """Learn whether ``action`` converted.

        ``reward`` and ``probability`` are not used: the margin is known and the regression
        is not importance-weighted.
        """
        self.workspace.learn(self.vw_line(example, action, 1 if converted else -1))
        self.learned += 1

    def save(self, path: Path) -> None:
        """Write the model (with its learning state, so training can resume) to ``path``."""
        self.workspace.save(str(path))

    def close(self) -> None:
        """Free the native workspace."""
        self.workspace.finish()


class VWBandit:
    """One VW ``--cb_explore_adf`` workspace: predict a pmf, learn a logged reward, save."""

    def __init__(self, config: BanditConfig, *, model_file: Path | None = None):
        self.config = config
        if model_file is None:
            self.workspace = vowpalwabbit.Workspace(arg_list=vw_arguments(config))
        else:
            self.workspace = vowpalwabbit.Workspace(
                arg_list=["-i", str(model_file), "--quiet"])

    def predict(self, example: BanditExample) -> list[float]:
        """VW's probabilities for the arms of ``example``, in their order."""
        if len(example.arms) == 1:
            return [1.0]
        return list(self.workspace.predict(to_vw_lines(example)))

    def learn(self, example: BanditExample, action: str, reward: float, probability: float,
              converted: bool) -> None:
        """Learn that ``action``, chosen with ``probability``, earned ``reward``."""
        cost = -reward / self.config.reward.scale
        self.workspace.learn(to_vw_lines(example, (action, cost, probability)))

    def save(self, path: Path) -> None:
        """Write the model (with its learning state, so training can resume) to ``path``."""
        self.workspace.save(str(path))

    def close(self) -> None:
        """Free the native workspace."""
        self.workspace.finish()
