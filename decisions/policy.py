"""The policy layer: what may be shown to a user before the bandit chooses (docs/ARCHITECTURE.md).

In order: a stable hash puts ``control_share`` of users into a global control group that gets
no action (logged, so lift can be measured, never learned from); users who opted out of
personalisation get the configured ``default_arm`` with probability 1 and are not learned
from; every other user gets the arms left after removing those excluded by their tags, those
over their per-user weekly cap, all of them when the user has reached the daily contact
limit, and the incentive arms (``features.kind`` discount or financing) while the user is
under review (a risk tag put them in the review queue; an operator's clearing gives the
incentives back). The bandit then chooses among the eligible arms.

A red line comes before all of that: every arm of kind ``financing`` (credit) is removed for
a user for whom ``policy.no_credit_when`` holds (:class:`CreditRule`: students, users who
excluded themselves from credit, users under review (a risk tag), an item far above what they
usually spend), whatever the bandit would predict, in every path: in-page answers, campaign
messages and the simulator all decide through this layer.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from features.build import (
    feature_columns,
    group_feature_columns,
    policy_columns,
    segmentation_columns,
    seller_feature_columns,
)
from features.expressions import Expression, compile_expression
from features.segmentation import NEW_TIER, NO_PURCHASE
from nextbest.config import CAMPAIGN_CHANNEL, BanditConfig, Settings, Subject
from nextbest.errors import ValidationFailed

# ArmConfig.features["kind"] of an arm that lends the user money (installments).
CREDIT_KIND = "financing"
# Names of a user the policy rules read besides their store record's columns.
USER_SCORES = ("known", "churn_probability", "purchase_propensity")

# Arms that pay the user to act (ArmConfig.features["kind"]): none while under review.
INCENTIVE_KINDS = frozenset({"discount", "financing"})


class UserView(BaseModel):
    """What the policy layer and the bandit know about a user (from the score and the store)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=200)
    # "seller": tier, tags and churn_probability are the seller tier, seller tags and
    # seller churn probability (a seller decision point decides on these).
    subject: Subject = "buyer"
    known: bool = True
    tier: str = NEW_TIER
    segment: str = NO_PURCHASE
    tags: list[str] = Field(default_factory=list)
    churn_probability: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    purchase_propensity: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    # Feature columns of the store record (CONTRACT.md), e.g. recency_days, frequency_total,
    # monetary_365d, aov; the bandit bins them. NaN means missing and is read as None.
    features: dict[str, float | None] = Field(default_factory=dict)
    # False: the user opted out of personalisation -> default arm, never learned from.
    personalization: bool = True
    # In the review queue (a risk tag) until an operator clears them: no incentive arms.
    under_review: bool = False
    review_reasons: list[str] = Field(default_factory=list)

    @field_validator("features")
    @classmethod
    def _nan_is_missing(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        """Store records carry NaN for missing numbers; infinities are a caller bug."""
        out: dict[str, float | None] = {}
        for key, number in value.items():
            if number is not None and math.isinf(number):
                raise ValueError(f"features.{key} must be finite, got {number}")
            out[key] = None if number is None or math.isnan(number) else float(number)
        return out


def finite_or_none(value: Any) -> float | None:
    """A JSON-safe number: NaN, infinities and non-numbers become None."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


_NOT_NUMBERS = frozenset({str, type(None), list, dict})


def record_features(record: Mapping[str, Any]) -> dict[str, float | None]:
    """The numeric columns of an online-store record (or any feature row), NaN as None.

    On every decision's path: a record's plain floats, ints and texts are told apart by
    their exact type first (an ``isinstance`` against ``numbers.Number`` is an ABC check,
    a tenth of a decision's CPU over a record's ~90 columns)."""
    out: dict[str, float | None] = {}
    for key, value in record.items():
        kind = type(value)
        if kind is float:
            out[key] = value if math.isfinite(value) else None
        elif kind is int or kind is bool:
            out[key] = float(value)
        elif kind not in _NOT_NUMBERS and isinstance(value, numbers.Number):
            out[key] = finite_or_none(value)
    return out


def _probability(name: str, value: Any) -> float | None:
    """A model's probability as a finite float in [0, 1], or None; ValueError otherwise."""
    number = finite_or_none(value)
    if number is not None and not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {number}")
    return number


def user_view(user_id: str, record: Mapping[str, Any] | None, *,
              churn_probability: float | None = None,
              purchase_propensity: float | None = None,
              personalization: bool = True) -> UserView:
    """The view of a user built from their feature record (None: a cold start).

    The one builder of :class:`UserView`: the service builds it from the online store,
    the simulator from its population rows.
    """
    if record is None:
        return UserView(user_id=user_id, known=False, personalization=personalization)
    # Every field is built to its type here (features by record_features: finite or
    # None), so the view is constructed without validating it again: validation of the
    # ~90 features was a sixth of a decision's CPU.
    return UserView.model_construct(
        user_id=str(user_id), subject="buyer", known=True,
        tier=str(record.get("tier") or NEW_TIER),
        segment=str(record.get("segment") or NO_PURCHASE),
        tags=[str(tag) for tag in (record.get("tags") or [])],
        churn_probability=_probability("churn_probability", churn_probability),
        purchase_propensity=_probability("purchase_propensity", purchase_propensity),
        features=record_features(record),
        personalization=bool(personalization), under_review=bool(record.get("under_review")),
        review_reasons=[str(r) for r in (record.get("review_reasons") or [])])


NOT_A_SELLER = "none"  # the seller tier of a user who neither consigns nor is a prospect


def seller_view(user_id: str, record: Mapping[str, Any] | None, *,
                churn_probability: float | None = None,
                personalization: bool = True) -> UserView:
    """The view of a user as a seller (``subject: seller``): :func:`user_view` with their
    seller tier (``none`` when they neither consign nor are a prospect) as tier and segment,
    their seller tags, and the seller churn probability (no purchase propensity)."""
    view = user_view(user_id, record, churn_probability=churn_probability,
                     personalization=personalization)
    if record is None:
        return view.model_copy(update={"subject": "seller", "tier": NOT_A_SELLER})
    tier = record.get("seller_tier")
    tier = NOT_A_SELLER if tier is None or (isinstance(tier, float) and math.isnan(tier)) \
        else str(tier)
    tags = record.get("seller_tags")
    return view.model_copy(update={
        "subject": "seller", "tier": tier, "segment": tier,
        "tags": [] if tags is None or isinstance(tags, float) else [str(t) for t in tags]})


def rule_row(user: UserView, context: RequestContext | None,
             names: Collection[str] | None = None) -> dict[str, Any]:
    """The names a policy rule reads about ``user`` in ``context``: the store record's
    numbers, tier, segment, tags, scores and the request's fields (at a seller decision
    point ``seller_tier`` and ``seller_tags`` name the same values as tier and tags). With
    ``names`` (what a rule reads), only those: the same values, without copying the whole
    record on every decision."""
    own: dict[str, Any] = {
        "tier": user.tier, "segment": user.segment, "tags": user.tags, "known": user.known,
        "under_review": user.under_review, "churn_probability": user.churn_probability,
        "purchase_propensity": user.purchase_propensity}
    aliases = ({"seller_tier": user.tier, "seller_tags": user.tags}
               if user.subject == "seller" else {})
    request = context.model_dump() if context is not None else {}
    if names is None:
        return {**user.features, **own, **request, **aliases}
    row: dict[str, Any] = {}
    for name in names:  # the same precedence: aliases, then the request, own, the record
        for layer in (aliases, request, own, user.features):
            if name in layer:
                row[name] = layer[name]
                break
    return row


class RequestContext(BaseModel):
    """The request's context: where the user is and what they look at."""

    model_config = ConfigDict(extra="forbid")

    channel: str = Field("web", min_length=1, max_length=50)
    page: str = Field("home", min_length=1, max_length=100)
    item_id: str | None = Field(None, max_length=200)
    item_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    category: str | None = Field(None, max_length=100)
    hour: int | None = Field(None, ge=0, le=23)


@dataclass(frozen=True)
class ContextValues:
    """The values a request's context may take (``settings.context``).

    ``channel`` and ``page`` outside them are refused (:meth:`check`, a 422 naming the field
    over HTTP); the encoder writes only these values, so free text never reaches the
    bandit. The campaign layer's own decisions are always allowed: channel ``campaign``
    and a page named after the campaign.
    """

    channels: frozenset[str]
    pages: frozenset[str]
    categories: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> ContextValues:
        config = settings.context
        campaigns = [campaign.name for campaign in settings.campaigns.campaigns]
        return cls(channels=frozenset([*config.channels, CAMPAIGN_CHANNEL]),
                   pages=frozenset([*config.pages, *campaigns]),
                   categories=frozenset(config.categories))

    def check(self, context: RequestContext) -> None:
        """ValidationFailed naming ``context.channel`` or ``context.page`` when its value is
        not one of the configured ones."""
        for name, value, allowed in (("channel", context.channel, self.channels),
                                     ("page", context.page, self.pages)):
            if value not in allowed:
                raise ValidationFailed(
                    f"context.{name}: {value!r} is not one of {', '.join(sorted(allowed))} "
                    f"(config context.{name}s)", field=f"context.{name}")


@cache
def default_context_values() -> ContextValues:
    """The context values of the built-in configuration."""
    return ContextValues.from_settings(Settings())


class PlanKind(StrEnum):
    """Which path of the policy layer a decision takes."""

    BANDIT = "bandit"          # the bandit chooses among ``eligible``
    OPT_OUT = "opt_out"        # default arm, p=1, not personalised, not learned
    CONTROL = "control"        # global control group: no action
    NO_ELIGIBLE = "no_eligible"  # every arm removed: no action


class PolicyPlan(BaseModel):
    """The policy layer's verdict for one request, before the bandit runs."""

    kind: PlanKind
    eligible: list[str]
    removed: dict[str, str] = Field(default_factory=dict)  # arm -> why it was removed

    @property
    def learnable(self) -> bool:
        """Only the bandit's own choices are learned from (not control, opt-out or no-action)."""
        return self.kind is PlanKind.BANDIT


class ContactCounts(BaseModel):
    """How many campaign messages of each arm a user got in the last 7 days (the campaign
    layer counts them in its outbox)."""

    per_arm_week: dict[str, int] = Field(default_factory=dict)


class CreditRule:
    """``policy.no_credit_when`` compiled: for whom no credit arm may be shown, and why.

    The rule reads the user's store record (tags, tier, feature columns, ``is_student``,
    ``self_excluded_from_credit``), their scores and the request (``item_price``, ...). Each
    top-level ``or`` part is checked on its own: a value missing in one part (no item price,
    no aov, an attribute the platform does not supply) makes that part false without hiding
    another part that holds, and never makes a user vulnerable by itself.
    """

    def __init__(self, expression: Expression | None):
        self.parts = expression.parts() if expression is not None else []
        self.names = expression.names if expression is not None else frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> CreditRule:
        """Compile the configured rule; ConfigError naming it for an unknown or forbidden
        name or an unknown tag."""
        text = settings.policy.no_credit_when.strip()
        if not text:
            return cls(None)
        tags = {rule.name for rule in [*settings.features.tags, *settings.features.risk_rules]}
        return cls(compile_expression(text, rule="policy.no_credit_when",
                                      known=rule_names(settings),
                                      values={"tags": tags}, forbidden=settings.policy))

    def why(self, user: UserView, context: RequestContext | None) -> str | None:
        """The part of the rule that holds for ``user`` in ``context`` (None: none holds)."""
        if not self.parts:
            return None
        row = rule_row(user, context, self.names)
        return next((part.text for part in self.parts if part.holds(row)), None)


def credit_arms(config: BanditConfig) -> set[str]:
    """The arms that lend money: ``features.kind`` is ``financing``."""
    return {arm.name for arm in config.arms if arm.features.get("kind") == CREDIT_KIND}


def rule_names(settings: Settings) -> set[str]:
    """Every name a policy rule (``no_credit_when``, an arm's ``eligible_when``) may read."""
    windows = settings.features.windows_days
    return {*feature_columns(windows), *seller_feature_columns(windows),
            *group_feature_columns(), *segmentation_columns(), *policy_columns(),
            *USER_SCORES, *RequestContext.model_fields, "under_review"}


def eligibility_rules(config: BanditConfig,
                      settings: Settings | None = None) -> dict[str, Expression]:
    """Each arm's ``eligible_when`` compiled (arms without one are left out); ConfigError
    naming the arm for an unknown or forbidden name or an unknown tag."""
    settings = settings or Settings()
    tags = {rule.name for rule in [*settings.features.tags, *settings.features.risk_rules,
                                    *settings.features.seller_tags]}
    return {arm.name: compile_expression(arm.eligible_when,
                                         rule=f"arm {arm.name!r} eligible_when",
                                         known=rule_names(settings),
                                         values={"tags": tags, "seller_tags": tags},
                                         forbidden=settings.policy)
            for arm in config.arms if arm.eligible_when.strip()}


class PolicyLayer:
    """Decides control group, opt-out and arm eligibility from config; no state of its own."""

    def __init__(self, config: BanditConfig, credit: CreditRule | None = None,
                 eligibility: dict[str, Expression] | None = None):
        """``credit``: the compiled ``policy.no_credit_when`` (default: the built-in rule);
        ``eligibility``: the arms' compiled ``eligible_when`` (default: compiled here)."""
        self.config = config
        self.arm_names = [arm.name for arm in config.arms]
        self.credit = credit if credit is not None else \
            CreditRule.from_settings(Settings(bandit=config))
        self.credit_arms = credit_arms(config)
        self.eligibility = eligibility if eligibility is not None else \
            eligibility_rules(config)

    def in_control(self, user_id: str) -> bool:
        """Stable assignment: sha256(control_salt + user_id) as a number in [0, 1) < share.

        The same user is always in (or out of) the control group, in every process and
        every run, and changing the salt reshuffles the whole population.
        """
        digest = hashlib.sha256((self.config.control_salt + user_id).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.config.control_share

    @property
    def has_arm_caps(self) -> bool:
        """Whether any arm has a weekly cap (else counting past messages is wasted)."""
        return any(arm.max_per_user_per_week is not None for arm in self.config.arms)

    def removed_arms(self, user: UserView, counts: ContactCounts | None,
                     context: RequestContext | None = None) -> dict[str, str]:
        """Arms the user may not get, each with a short reason (``"coupon_abuser"``,
        ``"no credit: is_student == True"``)."""
        removed: dict[str, str] = {}
        tags = set(user.tags)
        review = "under review: " + ("; ".join(user.review_reasons) or "a risk tag")
        no_credit = self.credit.why(user, context) if self.credit_arms else None
        row = rule_row(user, context) if self.eligibility else {}
        for arm in self.config.arms:
            hit = sorted(tags.intersection(arm.exclude_tags))
            weekly = counts.per_arm_week.get(arm.name, 0) if counts else 0
            rule = self.eligibility.get(arm.name)
            if rule is not None and not rule.holds(row):
                removed[arm.name] = f"not eligible: {arm.eligible_when}"
            elif user.under_review and arm.features.get("kind") in INCENTIVE_KINDS:
                removed[arm.name] = review
            elif no_credit is not None and arm.name in self.credit_arms:
                removed[arm.name] = f"no credit: {no_credit}"
            elif hit:
                removed[arm.name] = ", ".join(hit)
            elif arm.max_per_user_per_week is not None and weekly >= arm.max_per_user_per_week:
                removed[arm.name] = f"weekly cap {arm.max_per_user_per_week} reached"
        return removed

    def plan(self, user: UserView, counts: ContactCounts | None = None,
             allowed: Collection[str] | None = None,
             context: RequestContext | None = None) -> PolicyPlan:
        """Apply the rules in order: control group, opt-out, then eligibility. ``counts``:
        the user's recent campaign messages (None: an in-page answer, no caps); ``allowed``
        (a campaign's arms) removes every other arm; ``context``: the request, which the
        no-credit rule may read (its item price)."""
        if self.in_control(user.user_id):
            return PolicyPlan(kind=PlanKind.CONTROL, eligible=[])
        removed = self.removed_arms(user, counts, context)
        if allowed:
            removed |= {arm: "not an arm of this campaign" for arm in self.arm_names
                        if arm not in allowed and arm not in removed}
        if not user.personalization:
            default = self.config.default_arm
            if default in removed:
                return PolicyPlan(kind=PlanKind.NO_ELIGIBLE, eligible=[],
                                  removed={default: removed[default]})
            return PolicyPlan(kind=PlanKind.OPT_OUT, eligible=[default])
        eligible = [name for name in self.arm_names if name not in removed]
        kind = PlanKind.BANDIT if eligible else PlanKind.NO_ELIGIBLE
        return PolicyPlan(kind=kind, eligible=eligible, removed=removed)


def normalise_pmf(eligible: list[str], scores: list[float]) -> dict[str, float]:
    """Turn VW's float32 probabilities into a float64 pmf over ``eligible`` summing to 1."""
    clipped = [max(float(s), 0.0) for s in scores]
    total = sum(clipped)
    if total <= 0:
        return {name: 1.0 / len(eligible) for name in eligible}
    return {name: p / total for name, p in zip(eligible, clipped, strict=True)}


def sample_arm(pmf: Mapping[str, float], rng: random.Random) -> str:
    """Draw one arm from ``pmf`` with the caller's seeded RNG (same seed, same draws)."""
    u = rng.random()
    cumulative = 0.0
    last = ""
    for name, p in pmf.items():
        cumulative += p
        last = name if p > 0 else last
        if u < cumulative and p > 0:
            return name
    return last  # rounding left u just above the final cumulative sum


def reason_for(plan: PolicyPlan, user: UserView, *, algorithm: str, action: str | None,
               probability: float) -> str:
    """A readable sentence saying why this user got this action."""
    removed = "; ".join(f"{arm} removed: {why}" for arm, why in plan.removed.items())
    suffix = f" ({removed})" if removed else ""
    if plan.kind is PlanKind.CONTROL:
        return "control group: no action"
    if plan.kind is PlanKind.OPT_OUT:
        return f"opted out of personalisation: default action {action}"
    if plan.kind is PlanKind.NO_ELIGIBLE:
        return f"no eligible arm: no action{suffix}"
    tags = "/".join(user.tags) if user.tags else "untagged"
    return (f"{algorithm} chose {action} (p={probability:.2f}) among "
            f"{', '.join(plan.eligible)} for a {user.tier}/{tags} user{suffix}")
