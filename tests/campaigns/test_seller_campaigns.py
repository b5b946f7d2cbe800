"""Seller campaigns: decided at the seller_offer decision point, delivered like buyer ones."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from campaigns.definitions import compile_campaigns
from campaigns.events import BehaviourEvent
from campaigns.layer import CampaignLayer, holdout_hash
from campaigns.store import Item
from decisions.engine import DecisionEngine
from decisions.points import DecisionPoints
from decisions.policy import PolicyLayer
from decisions.users import UserDirectory
from features.store import open_store
from nextbest.config import SELLER_POINT, Settings
from nextbest.errors import ConfigError

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def reachable(settings: Settings, campaign: str, prefix: str, count: int) -> list[str]:
    """``count`` user ids starting with ``prefix`` outside the seller point's control group
    and ``campaign``'s holdout."""
    policy = PolicyLayer(settings.point(SELLER_POINT))
    share = settings.campaigns.campaign(campaign).holdout_share
    ids = (f"{prefix}{i}" for i in range(1000))
    return [u for u in ids if not policy.in_control(u)
            and holdout_hash(campaign, u) >= share][:count]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    data = settings.model_dump()
    data["privacy"]["default_consent"] = "opt_out"
    return Settings.model_validate(data)


@pytest.fixture
def layer(settings: Settings) -> Iterator[CampaignLayer]:
    """Both decision points' engines on one log, and a store holding sleeping sellers."""
    store = open_store(settings)
    sleeping = reachable(settings, "seller_recall", "s", 3)
    store.write(pd.DataFrame({
        "user_id": [*sleeping, "active"], "tier": "silver", "segment": "loyal",
        "tags": [[] for _ in range(4)],
        "seller_tier": ["sleeping"] * 3 + ["potential"], "is_seller": True,
        "seller_recency_days": [120.0, 200.0, 95.0, 10.0], "items_sold": 5.0,
        "sales_365d": 0.0, "stale_listings": 0.0}), date(2026, 3, 1))
    points = DecisionPoints.open(settings, lambda scoped: DecisionEngine(scoped))
    layer = CampaignLayer(settings, points, UserDirectory(settings, store, None))
    yield layer
    layer.close()
    points.close()
    store.close()


def test_an_unfinished_listing_gets_first_order_free_from_the_scheduler(
        layer: CampaignLayer, settings: Settings):
    prospect, finisher = reachable(settings, "unfinished_listing", "p", 2)
    started = [BehaviourEvent(user_id=user, type="listing_started", ts=T0, category="bags")
               for user in (prospect, finisher)]
    assert layer.on_events(started, now=T0).messages == []  # a timer, nothing yet
    layer.on_item(Item(item_id="i1", seller_id=finisher, category="bags", price=90.0,
                       ts=T0 + timedelta(hours=3)), now=T0 + timedelta(hours=3))
    assert layer.fire_due_timers(T0 + timedelta(hours=23)) == []
    fired = layer.fire_due_timers(T0 + timedelta(hours=25))
    assert [(m.user_id, m.arm, m.status, m.tier) for m in fired] == \
        [(prospect, "first_order_free_commission", "pending", "prospective")]
    decision = layer.points.get(SELLER_POINT).log.get_decision(fired[0].decision_id)
    assert decision.decision.decision_point == SELLER_POINT
    assert layer.points.stats(SELLER_POINT)["decisions"] == 1
    assert layer.points.stats(None)["decisions"] == 0


def test_sleeping_sellers_get_the_weekly_recall(layer: CampaignLayer):
    report = layer.run("seller_recall", now=T0)
    assert (report.audience, report.messages) == (3, 3)
    rows = layer.store.messages(campaign="seller_recall")
    assert {(m.arm, m.tier) for m in rows} == {("recall_message", "sleeping")}
    assert layer.points.stats(SELLER_POINT)["arms"]["recall_message"]["decisions"] == 3


def test_a_campaign_naming_another_points_arm_is_refused(settings: Settings):
    data = settings.model_dump()
    campaign = next(c for c in data["campaigns"]["campaigns"] if c["name"] == "seller_recall")
    campaign["arms"] = ["coupon"]
    with pytest.raises(ConfigError, match="arms of seller_offer are first_order_free"):
        compile_campaigns(Settings.model_validate(data))


def test_a_started_listing_is_unfinished_until_an_item_comes(layer: CampaignLayer):
    store = layer.store
    assert not store.unfinished_listing("q1")
    layer.on_events([BehaviourEvent(user_id="q1", type="listing_started", ts=T0)], now=T0)
    assert store.unfinished_listing("q1")
    layer.on_item(Item(item_id="q1-item", seller_id="q1", ts=T0 + timedelta(hours=1)),
                  now=T0 + timedelta(hours=1))
    assert not store.unfinished_listing("q1")
