"""The Vowpal Wabbit contextual bandit: what VW learns and how its scores become a pmf.

The bandit implements :class:`decisions.choosers.Chooser` over the examples of
:mod:`decisions.encoding`. Two models (``exploration.model``), one interface
(:func:`make_bandit`):

- ``conversion`` (default, :class:`ConversionBandit`): a VW logistic regression of
  P(convert | S, U, C, A) with the configured interactions (``UA``: this user's lift from
  this arm). An arm's expected reward is ``p_hat x margin``, where the margin is the
  decision's value (:attr:`BanditExample.value`) minus the arm's cost on it, both known
  (:func:`decisions.reward.margin`), so VW only learns the binary outcome; the explorer
  (SquareCB's inverse-gap weighting, epsilon-greedy or softmax) turns the expected rewards
  into the pmf. It learns the chosen arm's outcome without importance weights: SquareCB's
  online regression oracle.
  With ``reward_model.kind`` set, a LightGBM reward model joins it
  (:class:`decisions.reward_model.RewardModelBandit`).
- ``conversion_revenue`` (:class:`RevenueBandit`): ``conversion`` whose margin comes from a
  learned revenue instead of the decision's value: a second VW regression learns the
  revenue of a conversion as a multiple of the value (a seller's sold value in the window
  is many listings' worth for a top seller); same explorer.
- ``profit`` (:class:`VWBandit`): VW ``--cb_explore_adf`` with VW's own explorer,
  regressing ``cost = -reward / reward.scale``; ``P`` crossed with the arm and the user
  (``PUA``) lets it learn lifts that scale with the price.

A ``vowpalwabbit.Workspace`` cannot be pickled or shared between threads: each bandit
belongs to one thread. The string APIs used here parse and finish every example themselves.
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pylibvw
import vowpalwabbit

from decisions.encoding import BanditExample, DecisionInput, example_value, vw_number
from decisions.reward import arm_cost, earned, margin, revenue_of
from nextbest.config import BanditConfig

# The conversion model's loss; a saved VW model does not keep it, so loading passes it again.
LOGISTIC_LOSS = ("--loss_function", "logistic")
# The models that learn P(convert) with VW and explore in Python.
CONVERSION_MODELS = ("conversion", "conversion_revenue")


def vw_predictions(workspace: vowpalwabbit.Workspace, lines: Sequence[str]) -> list[float]:
    """The scalar prediction of each single-line example of ``lines`` (VW text), parsed in
    one call; every example is finished, whatever happens.

    ``Workspace.predict(text)`` spends most of a prediction in Python (type checks, wrapper
    objects, a prediction-type lookup): three arms took 35 us that way, 6 us here, on every
    decision. The same native calls, in the same order per example."""
    examples = workspace._parse("\n".join(lines))
    try:
        for example in examples:
            pylibvw.vw.predict(workspace, example)
        return [example.get_simplelabel_prediction() for example in examples]
    finally:
        for example in examples:
            pylibvw.vw._finish_example(workspace, example)


def vw_learn(workspace: vowpalwabbit.Workspace, line: str) -> None:
    """Learn one single-line example (VW text, with its label): ``Workspace.learn(text)``
    without its Python overhead (the learner learns thousands a second)."""
    examples = workspace._parse(line)
    try:
        for example in examples:
            pylibvw.vw.learn(workspace, example)
    finally:
        for example in examples:
            pylibvw.vw._finish_example(workspace, example)


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
    if exploration.model in CONVERSION_MODELS:
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


def revenue_arguments(config: BanditConfig) -> list[str]:
    """The VW command line of model ``conversion_revenue``'s revenue regression (squared
    loss, the conversion model's interactions and learning rate)."""
    exploration = config.exploration
    return ["--quiet", "--random_seed", str(config.seed), "-b", str(config.bits),
            "-l", str(exploration.learning_rate),
            *_interaction_args(exploration.interactions), *exploration.extra_args.split()]


def make_bandit(config: BanditConfig, *, model_file: Path | None = None,
                learned: int = 0) -> ConversionBandit | VWBandit:
    """A fresh bandit of ``config.exploration.model``, or one loaded from ``model_file``.

    ``learned``: rewards the loaded model has learned (checkpoint meta), which sets where
    SquareCB's exploration schedule resumes.
    """
    if config.exploration.model == "conversion":
        if config.reward_model.kind != "none":
            from decisions.reward_model import RewardModelBandit  # it builds on this module

            return RewardModelBandit(config, model_file=model_file, learned=learned)
        return ConversionBandit(config, model_file=model_file, learned=learned)
    if config.exploration.model == "conversion_revenue":
        return RevenueBandit(config, model_file=model_file, learned=learned)
    return VWBandit(config, model_file=model_file)


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

    kind = "bandit"

    def __init__(self, config: BanditConfig, *, model_file: Path | None = None,
                 learned: int = 0):
        self.config = config
        self.learned = learned
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
        logits = vw_predictions(self.workspace, [self.vw_line(example, arm, shared=shared)
                                                 for arm in example.arms])
        return [1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0))) for z in logits]

    def expected_rewards(self, example: BanditExample) -> list[float]:
        """Each arm's P(convert) x margin, in units of ``reward.scale``."""
        scale = self.config.reward.scale
        value = example_value(example)
        return [p * margin(self.config, self.config.arm(arm), value) / scale
                for arm, p in zip(example.arms, self.conversion_probabilities(example),
                                  strict=True)]

    def pmf(self, decision: DecisionInput) -> list[float]:
        """The pmf over the eligible arms, in their order."""
        if len(decision.example.arms) == 1:
            return [1.0]
        return explore(self.config, self.expected_rewards(decision.example), self.learned)

    def learn(self, example: BanditExample, arm: str, reward: float, probability: float,
              converted: bool) -> None:
        """Learn whether ``arm`` converted.

        ``reward`` and ``probability`` are not used: the margin is known and the regression
        is not importance-weighted.
        """
        vw_learn(self.workspace, self.vw_line(example, arm, 1 if converted else -1))
        self.learned += 1

    def save(self, path: Path) -> None:
        """Write the model (with its learning state, so training can resume) to ``path``."""
        self.workspace.save(str(path))

    def close(self) -> None:
        """Free the native workspace."""
        self.workspace.finish()


class RevenueBandit(ConversionBandit):
    """The conversion model with a learned revenue: P(convert) as :class:`ConversionBandit`
    learns it, and a second VW workspace, a squared-loss regression of ``log(revenue /
    value)`` per (S, U, C, A) learned from the converted decisions. An arm's expected reward
    is ``p_hat x (earned(m_hat x value) - arm cost)``: the margin of a decision whose
    revenue is not its value (a seller's sold value in the window, many listings' worth for
    a top seller). The revenue of a conversion is read back from its reward
    (:func:`decisions.reward.revenue_of`); a decision without a value teaches it nothing.

    A checkpoint is one zip holding both VW models.
    """

    def __init__(self, config: BanditConfig, *, model_file: Path | None = None,
                 learned: int = 0):
        if model_file is None:
            super().__init__(config, learned=learned)
            self.revenue = vowpalwabbit.Workspace(arg_list=revenue_arguments(config))
            return
        with zipfile.ZipFile(model_file) as bundle, tempfile.TemporaryDirectory() as tmp:
            bundle.extractall(tmp)
            super().__init__(config, model_file=Path(tmp) / "conversion.vw", learned=learned)
            self.revenue = vowpalwabbit.Workspace(
                arg_list=["-i", str(Path(tmp) / "revenue.vw"), "--quiet"])

    def revenue_multiples(self, example: BanditExample) -> list[float]:
        """Each arm's predicted revenue of a conversion as a multiple of the value."""
        shared = self.shared_text(example)
        logs = vw_predictions(self.revenue, [self.vw_line(example, arm, shared=shared)
                                             for arm in example.arms])
        return [math.exp(max(min(z, 10.0), -10.0)) for z in logs]

    def expected_rewards(self, example: BanditExample) -> list[float]:
        """Each arm's P(convert) x (what its predicted revenue earns - the arm's cost), in
        units of ``reward.scale``."""
        reward = self.config.reward
        if reward.kind == "conversion":
            return super().expected_rewards(example)
        price = example_value(example)
        value = reward.scale if price is None else price
        return [p * (earned(reward, m * value) - arm_cost(self.config.arm(arm), price,
                                                          m * value)) / reward.scale
                for arm, p, m in zip(example.arms, self.conversion_probabilities(example),
                                     self.revenue_multiples(example), strict=True)]

    def learn(self, example: BanditExample, arm: str, reward: float, probability: float,
              converted: bool) -> None:
        """Learn whether ``arm`` converted and, when it did, the revenue it brought."""
        super().learn(example, arm, reward, probability, converted)
        value = example_value(example)
        if not converted or value is None or value <= 0:
            return
        revenue = revenue_of(self.config, self.config.arm(arm), reward, value)
        if revenue is not None and revenue > 0:
            label = vw_number(math.log(revenue / value))
            vw_learn(self.revenue, f"{label} {self.vw_line(example, arm)}")

    def save(self, path: Path) -> None:
        """One zip: both VW models, with their learning state."""
        with tempfile.TemporaryDirectory() as tmp:
            conversion, revenue = Path(tmp) / "conversion.vw", Path(tmp) / "revenue.vw"
            self.workspace.save(str(conversion))
            self.revenue.save(str(revenue))
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as bundle:
                bundle.write(conversion, "conversion.vw")
                bundle.write(revenue, "revenue.vw")

    def close(self) -> None:
        """Free both native workspaces."""
        super().close()
        self.revenue.finish()


class VWBandit:
    """One VW ``--cb_explore_adf`` workspace: predict a pmf, learn a logged reward, save."""

    kind = "bandit"

    def __init__(self, config: BanditConfig, *, model_file: Path | None = None):
        self.config = config
        if model_file is None:
            self.workspace = vowpalwabbit.Workspace(arg_list=vw_arguments(config))
        else:
            self.workspace = vowpalwabbit.Workspace(
                arg_list=["-i", str(model_file), "--quiet"])

    def pmf(self, decision: DecisionInput) -> list[float]:
        """VW's probabilities for the eligible arms, in their order."""
        if len(decision.example.arms) == 1:
            return [1.0]
        return list(self.workspace.predict(to_vw_lines(decision.example)))

    def learn(self, example: BanditExample, arm: str, reward: float, probability: float,
              converted: bool) -> None:
        """Learn that ``arm``, chosen with ``probability``, earned ``reward``."""
        cost = -reward / self.config.reward.scale
        self.workspace.learn(to_vw_lines(example, (arm, cost, probability)))

    def save(self, path: Path) -> None:
        """Write the model (with its learning state, so training can resume) to ``path``."""
        self.workspace.save(str(path))

    def close(self) -> None:
        """Free the native workspace."""
        self.workspace.finish()
