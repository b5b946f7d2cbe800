"""The policy layer: control group, opt-out, eligibility, sampling and reasons."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from decisions.policy import (
    ContactCounts,
    ContextValues,
    CreditRule,
    PlanKind,
    PolicyLayer,
    RequestContext,
    UserView,
    normalise_pmf,
    reason_for,
    rule_row,
    sample_arm,
    seller_view,
    user_view,
)
from nextbest.config import BanditConfig, Settings
from nextbest.errors import ConfigError, ValidationFailed


def treated_user(layer: PolicyLayer, **fields: object) -> UserView:
    """A user outside the control group (the first id the hash leaves out)."""
    user_id = next(f"u{i}" for i in range(1000) if not layer.in_control(f"u{i}"))
    return UserView(user_id=user_id, **fields)


def test_control_assignment_is_stable_and_near_the_configured_share():
    layer = PolicyLayer(BanditConfig(control_share=0.2))
    ids = [f"user-{i}" for i in range(5000)]
    first = [layer.in_control(i) for i in ids]
    assert first == [PolicyLayer(BanditConfig(control_share=0.2)).in_control(i) for i in ids]
    assert 0.18 < sum(first) / len(ids) < 0.22
    salted = PolicyLayer(BanditConfig(control_share=0.2, control_salt="other"))
    assert first != [salted.in_control(i) for i in ids]


def test_control_user_gets_the_control_plan():
    layer = PolicyLayer(BanditConfig(control_share=0.5))
    user_id = next(f"u{i}" for i in range(100) if layer.in_control(f"u{i}"))
    plan = layer.plan(UserView(user_id=user_id), ContactCounts())
    assert plan.kind is PlanKind.CONTROL and plan.eligible == [] and not plan.learnable


def test_opted_out_user_gets_the_default_arm_only():
    layer = PolicyLayer(BanditConfig(control_share=0.0))
    plan = layer.plan(UserView(user_id="u", personalization=False), ContactCounts())
    assert plan.kind is PlanKind.OPT_OUT
    assert plan.eligible == ["certification"] and not plan.learnable


def test_excluded_tags_and_caps_remove_arms():
    layer = PolicyLayer(BanditConfig(control_share=0.0))
    abuser = treated_user(layer, tags=["coupon_abuser"])
    plan = layer.plan(abuser, ContactCounts(per_arm_week={"installment": 3}))
    assert plan.kind is PlanKind.BANDIT and plan.eligible == ["certification"]
    assert plan.removed == {"coupon": "coupon_abuser", "installment": "weekly cap 3 reached"}


CARDS = "card_switching: paid with 4 different payment fingerprints in 30 days"


def test_a_user_under_review_gets_no_incentive_until_cleared():
    layer = PolicyLayer(BanditConfig(control_share=0.0))
    record = {"tier": "gold", "tags": ["high_value", "card_switching"], "aov": 80.0,
              "under_review": True, "review_reasons": [CARDS]}
    user = user_view(treated_user(layer).user_id, record)
    assert user.under_review and user.review_reasons == [CARDS]
    plan = layer.plan(user, ContactCounts())
    # Discount and financing arms go; the trust arm stays; the tier is untouched.
    assert plan.kind is PlanKind.BANDIT and plan.eligible == ["certification"]
    assert plan.removed == {"coupon": f"under review: {CARDS}",
                            "installment": f"under review: {CARDS}"}
    assert user.tier == "gold"
    cleared = user_view(user.user_id, record | {"under_review": False, "review_reasons": []})
    assert layer.plan(cleared, ContactCounts()).eligible == ["coupon", "installment",
                                                             "certification"]


def test_an_in_page_answer_has_no_caps_and_caps_need_counts():
    layer = PolicyLayer(BanditConfig(control_share=0.0))
    assert layer.has_arm_caps  # the defaults cap coupons and installments per week
    user = treated_user(layer)
    assert layer.plan(user).eligible == ["coupon", "installment", "certification"]
    capped = layer.plan(user, ContactCounts(per_arm_week={"coupon": 2, "installment": 1}))
    assert capped.eligible == ["installment", "certification"]
    uncapped = PolicyLayer(BanditConfig(control_share=0.0, arms=[{"name": "coupon"},
                                                                 {"name": "certification"}],
                                        default_arm="coupon"))
    assert not uncapped.has_arm_caps


def test_pmf_is_normalised_and_sampling_is_seeded():
    pmf = normalise_pmf(["a", "b", "c"], [0.2000001, 0.3, 0.5])
    assert abs(sum(pmf.values()) - 1.0) < 1e-12
    draws = [sample_arm(pmf, random.Random(3)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same draw
    counts = {"a": 0, "b": 0, "c": 0}
    rng = random.Random(0)
    for _ in range(20000):
        counts[sample_arm(pmf, rng)] += 1
    assert abs(counts["c"] / 20000 - 0.5) < 0.02
    assert sample_arm({"a": 0.0, "b": 1.0}, random.Random(1)) == "b"


def test_reason_is_a_readable_sentence():
    layer = PolicyLayer(BanditConfig(control_share=0.0))
    user = treated_user(layer, tier="gold", tags=["coupon_abuser"])
    plan = layer.plan(user, ContactCounts())
    text = reason_for(plan, user, algorithm="squarecb", action="installment", probability=0.72)
    assert text == ("squarecb chose installment (p=0.72) among installment, certification "
                    "for a gold/coupon_abuser user (coupon removed: coupon_abuser)")


@pytest.mark.parametrize("field, value", [("item_price", float("nan")), ("item_price", -1.0),
                                          ("hour", 24), ("item_price", float("inf"))])
def test_request_context_refuses_bad_numbers(field: str, value: object):
    with pytest.raises(ValidationError, match=field):
        RequestContext(**{field: value})


def test_user_view_reads_nan_features_as_missing_and_refuses_infinity():
    assert UserView(user_id="u", features={"aov": float("nan")}).features == {"aov": None}
    with pytest.raises(ValidationError, match="features.aov"):
        UserView(user_id="u", features={"aov": float("inf")})


def test_user_view_from_a_record_is_what_validation_would_give():
    """user_view builds the view without validating it again: the same view as the
    validated model, numbers only (ints and bools as floats, NaN and infinity as missing),
    and a probability outside [0, 1] still refused."""
    record = {"tier": "gold", "segment": "champions", "tags": ["high_value"], "aov": 120,
              "recency_days": float("nan"), "spend_trend": float("inf"), "is_student": True,
              "city": "Lyon", "favourite": None, "history": [1, 2], "frequency_total": 3.0,
              "under_review": False, "review_reasons": []}
    view = user_view("u1", record, churn_probability=0.25, purchase_propensity=None)
    assert view.features == {"aov": 120.0, "recency_days": None, "spend_trend": None,
                             "is_student": 1.0, "frequency_total": 3.0, "under_review": 0.0}
    assert all(type(v) is float for v in view.features.values() if v is not None)
    assert view == UserView.model_validate(view.model_dump())
    assert (view.tier, view.tags, view.churn_probability) == ("gold", ["high_value"], 0.25)
    with pytest.raises(ValueError, match="churn_probability must be within"):
        user_view("u1", record, churn_probability=1.5)
    assert user_view("u1", record, churn_probability=float("nan")).churn_probability is None


@pytest.mark.parametrize("seller", [False, True])
def test_a_rule_row_of_some_names_is_the_whole_row_cut_to_them(seller: bool):
    record = {"tier": "vip", "seller_tier": "vip", "seller_tags": ["top"], "aov": 80.0,
              "is_student": True, "page": 3.0, "tags": ["high_value"], "sales_365d": 12}
    view = (seller_view if seller else user_view)("u1", record, churn_probability=0.3)
    context = RequestContext(page="item", item_price=200.0)
    whole = rule_row(view, context)
    names = ["aov", "is_student", "page", "item_price", "tier", "tags", "seller_tier",
             "churn_probability", "hour", "no_such_column"]
    assert rule_row(view, context, names) == {n: whole[n] for n in names if n in whole}
    assert whole["page"] == "item"  # the request's field wins over a same-named column


# --- the no-credit red line (policy.no_credit_when) -------------------------------------------

@pytest.mark.parametrize("fields, context, part", [
    ({"features": {"is_student": 1.0}}, RequestContext(), "is_student == True"),
    ({"features": {"self_excluded_from_credit": 1.0}}, RequestContext(),
     "self_excluded_from_credit == True"),
    ({"features": {"aov": 100.0}}, RequestContext(item_price=301.0), "item_price > 3 * aov"),
    # A part that holds is not hidden by a value missing from another (no item price here).
    ({"features": {"is_student": 1.0, "aov": None}}, RequestContext(), "is_student == True"),
])
def test_vulnerable_users_get_no_credit_arm_and_the_reason_says_why(
        fields: dict, context: RequestContext, part: str):
    layer = PolicyLayer(BanditConfig(control_share=0.0))
    user = treated_user(layer, **fields)
    plan = layer.plan(user, context=context)
    assert "installment" not in plan.eligible and "certification" in plan.eligible
    assert plan.removed["installment"] == f"no credit: {part}"
    text = reason_for(plan, user, algorithm="squarecb", action="certification", probability=1.0)
    assert f"installment removed: no credit: {part}" in text


@pytest.mark.parametrize("fields, context", [
    ({}, RequestContext(item_price=5000.0)),  # nothing known about the user: not vulnerable
    ({"features": {"is_student": 0.0, "self_excluded_from_credit": 0.0, "aov": 100.0}},
     RequestContext(item_price=300.0)),
    ({"features": {"is_student": None, "aov": None}}, RequestContext(item_price=300.0)),
])
def test_a_missing_or_false_attribute_is_not_vulnerability(fields: dict,
                                                            context: RequestContext):
    layer = PolicyLayer(BanditConfig(control_share=0.0))
    plan = layer.plan(treated_user(layer, **fields), context=context)
    assert plan.eligible == ["coupon", "installment", "certification"]


def test_every_financing_arm_goes_even_the_default_of_an_opted_out_student():
    arms = [{"name": "bnpl", "features": {"kind": "financing", "value": 0.0}},
            {"name": "loan", "features": {"kind": "financing"}}, {"name": "tip"}]
    layer = PolicyLayer(BanditConfig(control_share=0.0, arms=arms, default_arm="bnpl"))
    student = treated_user(layer, features={"is_student": 1.0})
    assert layer.plan(student).eligible == ["tip"]
    opted_out = layer.plan(student.model_copy(update={"personalization": False}))
    assert opted_out.kind is PlanKind.NO_ELIGIBLE and opted_out.eligible == []


def test_the_no_credit_rule_is_configurable_and_checked_at_start():
    settings = Settings(policy={"no_credit_when": "tier == 'new' or frequency_total < 2"})
    layer = PolicyLayer(settings.bandit, CreditRule.from_settings(settings))
    new = treated_user(layer, tier="new")
    assert layer.plan(new).removed["installment"] == "no credit: tier == 'new'"
    assert "installment" in layer.plan(treated_user(layer, tier="gold")).eligible
    assert CreditRule.from_settings(Settings(policy={"no_credit_when": ""})).parts == []
    with pytest.raises(ConfigError, match="policy.no_credit_when.*is_studnet"):
        CreditRule.from_settings(Settings(policy={"no_credit_when": "is_studnet == True"}))
    with pytest.raises(ConfigError, match="policy.forbidden_features"):
        CreditRule.from_settings(Settings(policy={"no_credit_when": "os == 'android'"}))


# --- context values ----------------------------------------------------------------------------

def test_context_channel_and_page_must_be_configured_values():
    values = ContextValues.from_settings(Settings(context={"channels": ["app"],
                                                           "pages": ["item"]}))
    values.check(RequestContext(channel="app", page="item"))
    values.check(RequestContext(channel="campaign", page="win_back"))  # the campaign layer's
    with pytest.raises(ValidationFailed, match="context.channel: 'web' is not one of") as exc:
        values.check(RequestContext(channel="web", page="item"))
    assert exc.value.field == "context.channel"
    with pytest.raises(ValidationFailed, match="'iPhone 15 Pro' is not one of") as exc:
        values.check(RequestContext(channel="app", page="iPhone 15 Pro"))
    assert exc.value.field == "context.page"
