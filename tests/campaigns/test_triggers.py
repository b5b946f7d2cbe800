"""Behaviour triggers: rule matching, safe expressions, cooldowns, preferences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaigns.triggers import BehaviourEvent, Triggers, TriggerSet
from decisions.engine import DecisionEngine
from decisions.policy import UserView
from nextbest.config import Settings, TriggerRule
from nextbest.errors import ConfigError

T0 = datetime(2026, 4, 1, 15, 30, tzinfo=UTC)


def event(type_: str = "view", **fields: Any) -> BehaviourEvent:
    return BehaviourEvent(user_id="u1", type=type_, ts=T0, **fields)


def test_default_rules_match_by_type_and_condition():
    triggers = TriggerSet(Settings().serving.triggers)
    user = UserView(user_id="u1")
    assert [r.name for r in triggers.match(event("add_to_cart"), user)] == ["cart_recovery"]
    assert [r.name for r in triggers.match(event("view", price=800.0), user)] == [
        "high_price_view"]
    assert triggers.match(event("view", price=100.0), user) == []
    assert triggers.match(event("view"), user) == []  # no price: the condition cannot hold
    assert triggers.match(event("search"), user) == []


def test_conditions_see_event_and_user_fields():
    rule = TriggerRule(name="vip_bags", event_type="favorite", campaign="vip",
                       when="category in ['bags', 'shoes'] and tier == 'platinum' "
                            "and not (churn_probability < 0.5) and aov * 2 >= 300")
    triggers = TriggerSet([rule])
    vip = UserView(user_id="u1", tier="platinum", churn_probability=0.7,
                   features={"aov": 150.0})
    assert triggers.match(event("favorite", category="bags"), vip) == [rule]
    assert triggers.match(event("favorite", category="books"), vip) == []
    calm = vip.model_copy(update={"churn_probability": 0.2})
    assert triggers.match(event("favorite", category="bags"), calm) == []


@pytest.mark.parametrize("when", ["__import__('os').system('true')", "price.real > 1",
                                  "price >= ", "[x for x in tags]"])
def test_unsafe_or_broken_expressions_are_refused_naming_the_rule(when: str):
    with pytest.raises(ConfigError, match="'bad'"):
        TriggerSet([TriggerRule(name="bad", event_type="view", campaign="c", when=when)])


def test_event_fires_a_campaign_decision_once_per_cooldown(settings: Settings):
    with DecisionEngine(settings, durable=False) as eng:
        user = UserView(user_id="u1", tier="gold")
        cart = BehaviourEvent(user_id="u1", type="add_to_cart", ts=T0, price=90.0,
                              category="bags")
        fired = Triggers(eng.settings.serving.triggers, eng).on_event(user, cart, now=T0)
        assert [(f.rule, f.campaign) for f in fired] == [("cart_recovery", "cart_recovery")]
        decision = fired[0].decision
        assert decision.campaign == "cart_recovery"
        logged = eng.export_user("u1")[0]
        assert logged["campaign"] == "cart_recovery" and "page=add_to_cart" in str(logged)
        assert Triggers(eng.settings.serving.triggers, eng).on_event(user, cart, now=T0 + timedelta(hours=2)) == []  # cooldown
        assert len(Triggers(eng.settings.serving.triggers, eng).on_event(user, cart, now=T0 + timedelta(hours=25))) == 1


def test_opted_out_users_and_quiet_hours_get_no_campaign(settings: Settings):
    data = settings.model_dump()
    data["bandit"]["contact"]["quiet_hours"] = [15]
    quiet = Settings.model_validate(data)
    cart = BehaviourEvent(user_id="u1", type="add_to_cart", ts=T0)
    with DecisionEngine(settings, durable=False) as eng:
        assert Triggers(eng.settings.serving.triggers, eng).on_event(UserView(user_id="u1", personalization=False), cart, now=T0) == []
        assert eng.stats()["decisions"] == 0
    with DecisionEngine(quiet, durable=False) as eng:
        assert Triggers(eng.settings.serving.triggers, eng).on_event(UserView(user_id="u1"), cart, now=T0) == []
