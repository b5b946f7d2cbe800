"""Delivery: channel by consent, send time in the user's zone, quiet hours, caps, receipts,
attribution and the campaign report's lift."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from campaigns.delivery import Contact, in_quiet_hours, plan_delivery, send_time
from campaigns.events import BehaviourEvent
from campaigns.layer import CampaignLayer, holdout_hash
from campaigns.report import campaign_report
from decisions.engine import DecisionEngine
from decisions.policy import PolicyLayer
from decisions.users import UserDirectory
from features.store import Preferences, open_store
from nextbest.config import CampaignConfig, QuietHoursConfig, Settings
from nextbest.errors import Conflict

NY = ZoneInfo("America/New_York")
QUIET = QuietHoursConfig()
BROWSE = CampaignConfig(name="b", kind="trigger", event="view")
STATED = datetime(2025, 1, 1, tzinfo=UTC)


def local(hour: int, minute: int = 0, day: int = 5) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=NY)


# --- send time and quiet hours -------------------------------------------------------------

def test_a_new_york_user_who_peaks_at_20_gets_it_at_20_new_york_time() -> None:
    at = send_time(local(14).astimezone(UTC), {"timezone": "America/New_York",
                                               "best_hour": 20}, BROWSE, QUIET)
    assert at.astimezone(NY) == local(20) and at == datetime(2026, 1, 6, 1, 0, tzinfo=UTC)


def test_a_message_due_inside_quiet_hours_waits_until_they_end() -> None:
    at = send_time(local(14).astimezone(UTC), {"timezone": "America/New_York",
                                               "best_hour": 23}, BROWSE, QUIET)
    assert at.astimezone(NY) == local(9, day=6)
    transactional = BROWSE.model_copy(update={"transactional": True})
    assert send_time(local(23).astimezone(UTC), {"timezone": "America/New_York"},
                     transactional, QUIET).astimezone(NY) == local(23)


def test_an_hour_beyond_the_campaigns_max_delay_sends_now() -> None:
    urgent = BROWSE.model_copy(update={"max_delay_hours": 2})
    now = local(14).astimezone(UTC)
    assert send_time(now, {"timezone": "America/New_York", "best_hour": 20}, urgent,
                     QUIET) == now
    assert send_time(now, {"timezone": "Not/AZone", "best_hour": 20}, BROWSE, QUIET) == \
        datetime(2026, 1, 5, 20, 0, tzinfo=UTC)  # an unknown zone is UTC


@pytest.mark.parametrize(("start", "end", "hour", "quiet"), [
    (21, 9, 21, True), (21, 9, 3, True), (21, 9, 9, False), (21, 9, 15, False),
    (1, 5, 3, True), (1, 5, 6, False), (8, 8, 8, False)])
def test_quiet_hours_across_midnight_or_not(start: int, end: int, hour: int,
                                            quiet: bool) -> None:
    assert in_quiet_hours(local(hour), QuietHoursConfig(start=start, end=end)) is quiet


def test_an_hour_outside_0_23_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="less than or equal to 23"):
        QuietHoursConfig(start=24, end=9)


# --- channels and caps -----------------------------------------------------------------------

def test_the_first_consented_channel_wins_and_no_consent_suppresses(settings: Settings) -> None:
    now = local(12).astimezone(UTC)
    push_only = Preferences(marketing_email=False, marketing_sms=False, marketing_push=True,
                            updated_ts=STATED)
    nothing = Preferences(marketing_email=False, marketing_sms=False, marketing_push=False,
                          updated_ts=STATED)
    order = BROWSE.model_copy(update={"channels": ["email", "push"]})
    assert plan_delivery(settings, order, {}, push_only, [], now).channel == "push"
    assert plan_delivery(settings, order, {}, nothing, [], now).reason == "no_consent"
    never_stated = Preferences()
    assert plan_delivery(settings, order, {}, never_stated, [], now).reason == "no_consent"
    opt_out = settings.model_copy(update={"privacy": settings.privacy.model_copy(
        update={"default_consent": "opt_out"})})
    assert plan_delivery(opt_out, order, {}, never_stated, [], now).channel == "email"
    transactional = order.model_copy(update={"transactional": True})
    assert plan_delivery(settings, transactional, {}, nothing, [], now).channel == "email"


def test_caps_and_the_minimum_gap_count_messages_scheduled_or_sent(settings: Settings) -> None:
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    everything = Preferences(updated_ts=STATED)
    order = BROWSE.model_copy(update={"channels": ["push", "email"]})
    one_push = [Contact("push", "coupon", now - timedelta(hours=6))]
    # push allows one a day: the next goes by email
    assert plan_delivery(settings, order, {}, everything, one_push, now).channel == "email"
    recent = [Contact("email", None, now + timedelta(hours=1))]
    assert plan_delivery(settings, order, {}, everything, recent, now).reason == "min_gap"
    two = [Contact("email", None, now - timedelta(hours=h)) for h in (5, 10)]
    assert plan_delivery(settings, order, {}, everything, two, now).reason == \
        "contact_cap: daily"


# --- through the layer: receipts, attribution, the report ------------------------------------

USERS = 1200


def population() -> pd.DataFrame:
    ids = [f"u{i:05d}" for i in range(USERS)]
    return pd.DataFrame({"user_id": ids, "tier": ["dormant"] * USERS, "segment": "loyal",
                         "tags": [[] for _ in ids], "recency_days": 120.0,
                         "frequency_total": 2.0, "monetary_365d": 200.0, "aov": 100.0,
                         "timezone": "America/New_York", "best_hour": 12})


@pytest.fixture
def layer(settings: Settings) -> Iterator[CampaignLayer]:
    campaign = {"name": "nudge", "kind": "scheduled", "schedule": "0 10 * * 1",
                "condition": "tier == 'dormant'", "holdout_share": 0.5, "cooldown_hours": 0,
                "channels": ["push"], "attribution_hours": 48}
    data = settings.model_dump()
    data["campaigns"]["campaigns"] = [campaign]
    data["campaigns"]["contact"].update(max_per_day=None, max_per_week=None, min_gap_hours=0)
    data["channels"]["push"]["max_per_day"] = None
    data["privacy"]["default_consent"] = "opt_out"
    tuned = Settings.model_validate(data)
    store = open_store(tuned)
    store.write(population(), date(2026, 1, 1))
    engine = DecisionEngine(tuned, durable=False)
    campaigns = CampaignLayer(tuned, engine, UserDirectory(tuned, store, None))
    yield campaigns
    campaigns.close()
    engine.close()
    store.close()


def mark_sent(layer: CampaignLayer) -> list:
    """What the dispatcher does to pending messages (its own tests cover how)."""
    with layer.lock:
        layer.store.conn.execute("UPDATE outbox SET status = 'sent' WHERE status = 'pending'")
        return layer.store.messages(status="sent", limit=100_000)


def test_a_purchase_after_a_delivered_message_converts_it_once(layer: CampaignLayer) -> None:
    now = datetime(2026, 1, 5, 15, tzinfo=UTC)
    layer.run("nudge", now=now)
    sent = mark_sent(layer)
    message = next(m for m in sent if m.arm is not None)
    with pytest.raises(Conflict, match="not sent"):
        pending = next(m for m in layer.store.messages(status="suppressed", limit=10))
        layer.on_receipt(pending.message_id, "delivered", now)
    receipt = layer.on_receipt(message.message_id, "delivered", message.scheduled)
    assert receipt.counted and not layer.on_receipt(message.message_id, "delivered",
                                                    message.scheduled).counted
    before = layer.points.default.stats()["rewards"]
    buy = BehaviourEvent(user_id=message.user_id, type="purchase", item_id="i1", price=150.0,
                         ts=message.scheduled + timedelta(hours=3))
    layer.on_events([buy], now=buy.ts)
    layer.on_events([buy.model_copy(update={"ts": buy.ts + timedelta(hours=1)})], now=buy.ts)
    assert layer.points.default.stats()["rewards"] == before + 1
    report = campaign_report(layer.settings, layer.store, "nudge", now=buy.ts)
    assert report.funnel["converted"] == 1 and report.funnel["delivered"] == 1
    assert report.revenue == 150.0 and report.arm_cost >= 0


def test_an_unsubscribe_receipt_withdraws_that_channels_consent(layer: CampaignLayer) -> None:
    layer.run("nudge", now=datetime(2026, 1, 5, 15, tzinfo=UTC))
    message = next(m for m in mark_sent(layer) if m.arm is not None)
    receipt = layer.on_receipt(message.message_id, "unsubscribed", message.scheduled)
    assert receipt.consent_withdrawn == "marketing_push"
    prefs = layer.users.store.get_preferences(message.user_id)
    assert prefs.marketing_push is False and prefs.marketing_email is True


def test_the_reports_lift_interval_covers_a_planted_effect(layer: CampaignLayer) -> None:
    """Holdout users buy with probability 0.10 in the window, treated ones with 0.25."""
    now = datetime(2026, 1, 5, 15, tzinfo=UTC)
    layer.run("nudge", now=now)
    rng = np.random.default_rng(3)
    control = PolicyLayer(layer.settings.bandit)
    buys = []
    for user in population()["user_id"]:
        held = holdout_hash("nudge", user) < 0.5 or control.in_control(user)
        if rng.random() < (0.10 if held else 0.25):
            buys.append(BehaviourEvent(user_id=user, type="purchase", price=80.0,
                                       ts=now + timedelta(hours=float(rng.uniform(1, 40)))))
    layer.on_events(buys, now=now + timedelta(hours=41))
    report = campaign_report(layer.settings, layer.store, "nudge", now=now)
    lift = report.overall.conversion
    assert report.overall.n + report.overall.n_holdout == USERS
    # The control group's users are treated by intention (they fired) but got no message:
    # the planted effect reaches the treated share of them only.
    treated = report.overall.n
    reached = sum(not control.in_control(u) for u in population()["user_id"]
                  if holdout_hash("nudge", u) >= 0.5)
    planted = 0.15 * reached / treated
    assert lift.low <= planted <= lift.high and lift.low > 0
