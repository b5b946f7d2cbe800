"""The policies the simulator compares, and candidate policies for offline evaluation.

Every simulated policy is the service's own :class:`~decisions.engine.DecisionEngine` on a
scratch decision log, with one of the choosers of :mod:`decisions.choosers` (the one
dispatch of policies): decisions and feedback go through the policy layer, the decision
log and the learner exactly as in production, and they differ only in how the chooser
picks among the eligible arms. Policy names:

* ``random``, ``static`` (the rule book), ``oracle`` (the true best arm);
* ``always_ARM``: one arm whenever eligible (a baseline);
* ``epsilon``, ``squarecb``, ``softmax``, ``bag``: the linear VW bandit with that explorer
  (no reward model, whatever ``bandit.reward_model`` says);
* ``service``: the service's configured chooser exactly as the engine builds it from
  ``settings`` (explorer, model and reward model as configured; only the seed is the run's).

For offline evaluation, :func:`candidate_action_dist` asks a chooser (``random``,
``static``, a saved VW model) or a Python policy (``path.py:function``) for the pmf it gives
on every logged decision; a chooser sees only the arms the policy layer allows there.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel

from decisions.choosers import ChooserSpec, Truth
from decisions.encoding import BanditExample, DecisionInput
from decisions.engine import DecisionEngine
from decisions.learner import CheckpointMeta
from decisions.policy import (
    CreditRule,
    PolicyLayer,
    RequestContext,
    UserView,
    record_features,
)
from decisions.reward_model import linear_bandit
from nextbest.config import Settings
from nextbest.errors import DataError, ValidationFailed

BANDIT_POLICIES = ("epsilon", "squarecb", "softmax", "bag")
SERVICE = "service"
POLICY_NAMES = ("random", "static", *BANDIT_POLICIES, SERVICE, "oracle")
ALWAYS = "always_"


class Choice(BaseModel):
    """What a policy did on one request: the arm (None = no action) and its probability."""

    action: str | None
    probability: float
    control: bool = False
    event_id: str | None = None


class SimPolicy(Protocol):
    """A policy the simulator can play: in-process (:class:`EnginePolicy`) or through the
    live service (:class:`experiments.http_driver.HttpPolicy`)."""

    name: str

    def choose(self, step: int, user: UserView, context: RequestContext,
               now: datetime) -> Choice: ...

    def feedback(self, choice: Choice, converted: bool, revenue: float,
                 now: datetime) -> None: ...

    def close(self) -> None: ...


def engine_settings(settings: Settings, algorithm: str | None, seed: int) -> Settings:
    """``settings`` with the bandit's seed replaced; when ``algorithm`` is given (a named
    learner), also its explorer, and the learner is the linear one (no reward model)."""
    bandit = settings.bandit.model_copy(update={"seed": seed})
    if algorithm is not None:
        bandit = linear_bandit(bandit.model_copy(update={
            "exploration": bandit.exploration.model_copy(update={"algorithm": algorithm})}))
    return settings.model_copy(update={"bandit": bandit})


def policy_chooser(name: str, settings: Settings, truth: Truth | None = None
                   ) -> tuple[ChooserSpec, str | None]:
    """The chooser of the policy called ``name`` and the VW explorer it needs (if any)."""
    arms = [arm.name for arm in settings.bandit.arms]
    if name in BANDIT_POLICIES:
        return ChooserSpec("bandit"), name
    if name == SERVICE:
        return ChooserSpec("bandit"), None
    if name.startswith(ALWAYS) and name[len(ALWAYS):] in arms:
        return ChooserSpec("always", arm=name[len(ALWAYS):]), None
    if name in ("random", "static", "oracle"):
        return ChooserSpec(name, truth=truth), None
    raise ValidationFailed(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)} "
                           f"or always_<arm> with an arm of {arms}", field="policies")


class EnginePolicy:
    """A policy played by the service's decision engine, in-process on a scratch log."""

    def __init__(self, settings: Settings, name: str, seed: int, log_path: Path, *,
                 truth: Truth | None = None):
        spec, algorithm = policy_chooser(name, settings, truth)
        self.name = name
        self.settings = engine_settings(settings, algorithm, seed)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for stale in log_path.parent.glob(log_path.name + "*"):
            stale.unlink()
        # A scratch log with batched commits: the same engine, without fsync per decision.
        self.engine = DecisionEngine(self.settings, log_path=log_path, role="inline",
                                     durable=False, bandit_dir=log_path.parent / "bandit",
                                     chooser=spec)

    def choose(self, step: int, user: UserView, context: RequestContext,
               now: datetime) -> Choice:
        decision = self.engine.decide(user, context, now=now)
        return Choice(action=decision.action, probability=decision.probability,
                      control=decision.control, event_id=decision.event_id)

    def feedback(self, choice: Choice, converted: bool, revenue: float, now: datetime) -> None:
        if choice.event_id is not None:
            self.engine.feedback(choice.event_id, converted, revenue, now=now)

    def close(self) -> None:
        self.engine.close()


# ----------------------------------------------------------------------- offline candidates

def _row_tags(row: dict[str, Any]) -> list[str]:
    """Tags of a logged decision: a ``tags`` column (list, JSON or comma list)."""
    tags = row.get("tags")
    if isinstance(tags, list | tuple | np.ndarray):
        return [str(t) for t in tags]
    if isinstance(tags, str) and tags:
        text = tags.strip()
        return json.loads(text) if text.startswith("[") else [t.strip() for t in text.split(",")]
    return []


def _row_eligible(row: dict[str, Any], arms: list[str]) -> list[str]:
    """Eligible arms of a logged decision (all arms when the log does not say)."""
    eligible = row.get("eligible")
    if isinstance(eligible, str) and eligible.startswith("["):
        listed = [a for a in json.loads(eligible) if a in arms]
        return listed or arms
    return arms


def _row_example(row: dict[str, Any], eligible: list[str]) -> BanditExample:
    """The logged example (the service's log keeps it), else one with only the arms."""
    raw = row.get("features")
    if isinstance(raw, str) and raw:
        example = BanditExample.model_validate_json(raw)
        if example.arms:
            return example
    return BanditExample(arms={arm: [] for arm in eligible})


def logged_input(row: dict[str, Any], arms: list[str],
                 policy: PolicyLayer | None = None) -> DecisionInput:
    """What a chooser saw on a logged decision, rebuilt from the log's columns.

    A log that does not say which arms were eligible (another system's) gets them from
    ``policy``: the arms its layer would remove for this row (a vulnerable user's credit
    arm, a tag's excluded arm) are not offered to the candidate either. The service's log
    names them, already without those arms.
    """
    price = row.get("item_price")
    user = UserView(user_id=str(row.get("user_id") or "logged"),
                    tier=str(row.get("tier") or "unknown"), tags=_row_tags(row),
                    features=record_features(row))
    context = RequestContext(item_price=None if price is None or pd.isna(price)
                             else float(price))
    eligible = _row_eligible(row, arms)
    if policy is not None and not _logs_eligible(row):
        removed = policy.removed_arms(user, None, context)
        eligible = [arm for arm in eligible if arm not in removed]
    return DecisionInput(user=user, context=context, example=_row_example(row, eligible))


def _logs_eligible(row: dict[str, Any]) -> bool:
    """Whether the log names the decision's eligible arms."""
    eligible = row.get("eligible")
    return isinstance(eligible, str) and eligible.startswith("[")


def candidate_action_dist(name: str, log: pd.DataFrame, settings: Settings) -> np.ndarray:
    """The candidate's probability of each configured arm on each logged row, ``(n, k)``.

    ``name``: ``random``, ``static``, a saved VW model file (``*.vw``/``*.model``: needs the
    service log's ``features`` column) or ``file.py:function`` where ``function(row: dict)
    -> dict[arm, probability]``.
    """
    arms = [arm.name for arm in settings.bandit.arms]
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        return _python_dist(name, log, arms)
    if name in ("random", "static"):
        chooser = ChooserSpec(name).build(settings.bandit)
    elif Path(name).is_file():
        if "features" not in log.columns:
            raise DataError("a VW model can only be evaluated on the service's decision log "
                            "(it needs the logged VW features)", field="policy")
        meta = Path(name).with_suffix(".json")  # a checkpoint's meta: where exploration stands
        learned = (CheckpointMeta.model_validate_json(meta.read_text()).rewards_learned
                   if meta.is_file() else 0)
        chooser = ChooserSpec("bandit").build(settings.bandit, model_file=Path(name),
                                              learned=learned)
    else:
        raise ValidationFailed(f"unknown candidate policy {name!r}: use random, static, a "
                               "saved VW model file or file.py:function", field="policy")
    index = {arm: i for i, arm in enumerate(arms)}
    dist = np.zeros((len(log), len(arms)))
    policy = PolicyLayer(settings.bandit, CreditRule.from_settings(settings))
    try:
        for i, row in enumerate(log.to_dict("records")):
            decision = logged_input(row, arms, policy)
            if not decision.arms:
                continue  # the policy layer leaves no arm: the candidate takes no action
            for arm, p in zip(decision.arms, chooser.pmf(decision), strict=True):
                dist[i, index[arm]] = p
    finally:
        chooser.close()
    totals = dist.sum(axis=1, keepdims=True)
    return np.divide(dist, totals, out=np.zeros_like(dist), where=totals > 0)


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
