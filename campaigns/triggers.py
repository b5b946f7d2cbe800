"""Behaviour triggers: an event (a view, an add-to-cart, ...) fires the campaigns whose rule
matches it (``settings.serving.triggers``).

A rule names an ``event_type`` and optionally a ``when`` expression such as
``price >= 500 and category == 'bags'``. Expressions are parsed once, at start-up, into a
small safe subset of Python (comparisons, ``and``/``or``/``not``, arithmetic, ``in`` over a
literal list, names, constants); a name is an event field (``type``, ``item_id``,
``category``, ``price``, ``hour``) or a user field (``tier``, ``segment``, ``tags``,
``churn_probability``, ``purchase_propensity``, or any feature of ``UserView.features``). A
name whose value is missing makes the rule not match. Contact limits, cooldowns and
preferences are applied by :class:`Triggers`, which asks the decision engine for each
fired campaign's arm.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from decisions.decision_log import Decision
from decisions.engine import DecisionEngine, utc
from decisions.policy import RequestContext, UserView
from nextbest.config import TriggerRule
from nextbest.errors import ConfigError, ValidationFailed

EventType = Literal["view", "favorite", "add_to_cart", "search", "follow", "login", "share",
                    "review"]


class BehaviourEvent(BaseModel):
    """One behaviour event of a user (the ``events`` table of the data contract)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=200)
    type: EventType
    ts: datetime
    item_id: str | None = Field(None, max_length=200)
    category: str | None = Field(None, max_length=100)
    price: float | None = Field(None, ge=0, allow_inf_nan=False)

    def context(self) -> RequestContext:
        """The request context a campaign decision for this event is made in."""
        return RequestContext(channel="campaign", page=self.type, item_id=self.item_id,
                              item_price=self.price, category=self.category, hour=self.ts.hour)


class CampaignFired(BaseModel):
    """A campaign a trigger fired, with the next-best action chosen for it."""

    rule: str
    campaign: str
    decision: Decision


class _Missing(Exception):
    """A name in the expression has no value for this event/user: the rule does not match."""


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


def _evaluate(node: ast.AST, names: dict[str, Any]) -> Any:
    """Evaluate a parsed ``when`` expression node over ``names``."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, names)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        value = names.get(node.id)
        if value is None:
            raise _Missing(node.id)
        return value
    if isinstance(node, ast.List | ast.Tuple):
        return [_evaluate(element, names) for element in node.elts]
    if isinstance(node, ast.BoolOp):
        results = (bool(_evaluate(v, names)) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, names)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise TypeError(type(node).__name__)  # unreachable: _check refused it at parse time


def _check(tree: ast.AST, rule: str) -> None:
    """Refuse anything outside the safe subset (calls, attributes, subscripts, ...)."""
    allowed = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple,
               ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp,
               ast.Compare, *_BINARY, *_COMPARE)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ConfigError(f"serving.triggers rule {rule!r}: 'when' may not use "
                              f"{type(node).__name__}")


def compile_when(rule: TriggerRule) -> ast.Expression | None:
    """Parse and check a rule's ``when`` (None when empty); ConfigError names the rule."""
    if not rule.when.strip():
        return None
    try:
        tree = ast.parse(rule.when, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"serving.triggers rule {rule.name!r}: 'when' is not a valid "
                          f"expression ({exc.msg})") from exc
    _check(tree, rule.name)
    return tree


def event_names(event: BehaviourEvent, user: UserView) -> dict[str, Any]:
    """The names a ``when`` expression may use for this event and user."""
    names: dict[str, Any] = dict(user.features)
    names.update(tier=user.tier, segment=user.segment, tags=user.tags,
                 churn_probability=user.churn_probability,
                 purchase_propensity=user.purchase_propensity,
                 type=event.type, item_id=event.item_id, category=event.category,
                 price=event.price, hour=event.ts.hour)
    return names


class TriggerSet:
    """The configured trigger rules, parsed once."""

    def __init__(self, rules: list[TriggerRule]):
        self.rules = [(rule, compile_when(rule)) for rule in rules]

    def match(self, event: BehaviourEvent, user: UserView) -> list[TriggerRule]:
        """The rules this event fires, in config order (cooldowns not yet applied)."""
        names = event_names(event, user)
        fired = []
        for rule, tree in self.rules:
            if rule.event_type != event.type:
                continue
            try:
                if tree is None or bool(_evaluate(tree, names)):
                    fired.append(rule)
            except (_Missing, TypeError, ZeroDivisionError):
                continue  # a missing or non-comparable value: the condition does not hold
        return fired


class Triggers:
    """Fires the configured trigger rules on behaviour events, each with its own decision."""

    def __init__(self, rules: list[TriggerRule], engine: DecisionEngine):
        self.rules = TriggerSet(rules)
        self.engine = engine

    def on_event(self, user: UserView, event: BehaviourEvent, *,
                 now: datetime | None = None) -> list[CampaignFired]:
        """Fire the campaigns whose triggers match ``event``, each with its own decision.

        Users who opted out of personalisation get no campaign; no campaign fires during
        ``contact.quiet_hours`` (by the event's hour) or within a rule's cooldown for this
        user; each decision is still subject to the contact limits of the policy layer.
        """
        if event.user_id != user.user_id:
            raise ValidationFailed(f"event.user_id {event.user_id!r} is not the user "
                                   f"{user.user_id!r}", field="user_id")
        ts = utc(now)
        quiet = self.engine.config.contact.quiet_hours
        if not user.personalization or event.ts.hour in quiet:
            return []
        fired = []
        for rule in self.rules.match(event, user):
            last = self.engine.last_campaign_ts(user.user_id, rule.campaign)
            if last is not None and ts - last < timedelta(hours=rule.cooldown_hours):
                continue
            decision = self.engine.decide(user, event.context(), now=ts, campaign=rule.campaign)
            fired.append(CampaignFired(rule=rule.name, campaign=rule.campaign,
                                       decision=decision))
        return fired
