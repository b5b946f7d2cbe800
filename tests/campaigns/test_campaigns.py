"""The campaign layer in-process: triggers, delayed triggers, items, schedules, the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from campaigns.definitions import compile_campaigns
from campaigns.events import BehaviourEvent
from campaigns.layer import CampaignLayer, holdout_hash
from campaigns.store import Item
from decisions.engine import DecisionEngine
from decisions.policy import PolicyLayer
from decisions.users import UserDirectory
from features.contract import raw_files
from features.store import Preferences, open_store
from nextbest.cli import main
from nextbest.config import Settings
from nextbest.errors import ConfigError

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
AS_OF = date(2026, 3, 1)
USERS = 400
USER_COLUMNS = ("known", "churn_probability", "purchase_propensity")


def with_changes(settings: Settings, **sections: dict[str, Any]) -> Settings:
    data = settings.model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return Settings.model_validate(data)


def population(n: int = USERS) -> pd.DataFrame:
    """Users in the online store: a quarter of them dormant, the rest silver."""
    ids = [f"u{i:04d}" for i in range(n)]
    return pd.DataFrame({
        "user_id": ids,
        "tier": ["dormant" if i % 4 == 0 else "silver" for i in range(n)],
        "segment": "loyal", "tags": [[] for _ in ids],
        "recency_days": [120.0 if i % 4 == 0 else 20.0 for i in range(n)],
        "frequency_total": 3.0, "monetary_365d": 300.0, "aov": 100.0})


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The tests' settings where users who never stated preferences consent (opt-out)."""
    return with_changes(settings, privacy={"default_consent": "opt_out"})


@pytest.fixture
def layer(settings: Settings) -> Iterator[CampaignLayer]:
    """The campaign layer over an in-memory engine and a store of ``USERS`` users."""
    store = open_store(settings)
    store.write(population(), AS_OF)
    engine = DecisionEngine(settings, durable=False)
    users = UserDirectory(settings, store, None)
    campaigns = CampaignLayer(settings, engine, users)
    yield campaigns
    campaigns.close()
    engine.close()
    store.close()


def reachable(settings: Settings, campaign: str) -> list[str]:
    """Users of the population neither in the control group nor in ``campaign``'s holdout."""
    policy = PolicyLayer(settings.bandit)
    share = settings.campaigns.campaign(campaign).holdout_share
    return [u for u in population()["user_id"]
            if not policy.in_control(u) and holdout_hash(campaign, u) >= share]


def view(user_id: str, minutes: int, category: str = "bags", **fields: Any) -> BehaviourEvent:
    return BehaviourEvent(user_id=user_id, type="view", ts=T0 + timedelta(minutes=minutes),
                          category=category, item_id=f"i{minutes}", price=200.0, **fields)


def messages(layer: CampaignLayer, campaign: str, user_id: str | None = None,
             status: str | None = "pending") -> list:
    with layer.lock:
        return layer.store.messages(campaign=campaign, user_id=user_id, status=status,
                                    limit=100_000)


# --- behaviour triggers ------------------------------------------------------------------------

def test_five_views_in_a_category_make_exactly_one_message(layer: CampaignLayer,
                                                          settings: Settings) -> None:
    user = reachable(settings, "browse_no_buy")[0]
    events = [view(user, minutes) for minutes in range(5)]
    first = layer.on_events(events[:4], now=T0 + timedelta(minutes=4))
    assert first.accepted == 4 and first.messages == []  # four views: not yet
    fifth = layer.on_events(events[4:], now=T0 + timedelta(minutes=5))
    assert [(m.campaign, m.status) for m in fifth.messages] == [("browse_no_buy", "pending")]
    message = fifth.messages[0]
    assert message.arm in {"coupon", "installment", "certification"} and message.decision_id
    again = layer.on_events(events, now=T0 + timedelta(minutes=6))
    assert (again.accepted, again.duplicates, again.messages) == (0, 5, [])
    sixth = layer.on_events([view(user, 7)], now=T0 + timedelta(minutes=7))
    assert [m.reason for m in sixth.messages] == ["cooldown"]
    assert len(messages(layer, "browse_no_buy", user)) == 1
    other = layer.on_events([view(user, 8 + i, category="shoes") for i in range(3)],
                            now=T0 + timedelta(minutes=12))
    assert other.messages == []  # another category has its own count


def test_a_purchase_stops_the_browse_trigger(layer: CampaignLayer, settings: Settings) -> None:
    user = reachable(settings, "browse_no_buy")[1]
    bought = BehaviourEvent(user_id=user, type="purchase", ts=T0, item_id="i9", price=80.0)
    result = layer.on_events([bought, *(view(user, m + 1) for m in range(5))],
                             now=T0 + timedelta(minutes=6))
    assert result.accepted == 6 and result.messages == []


def cart(user_id: str, item: str, minutes: int = 0, type_: str = "add_to_cart"
         ) -> BehaviourEvent:
    return BehaviourEvent(user_id=user_id, type=type_, ts=T0 + timedelta(minutes=minutes),
                          item_id=item, price=150.0, category="shoes")


def test_cart_recovery_fires_at_four_hours_unless_the_item_was_bought(
        layer: CampaignLayer, settings: Settings) -> None:
    buyer, leaver = reachable(settings, "cart_recovery")[:2]
    assert layer.on_events([cart(buyer, "i1"), cart(leaver, "i2")], now=T0).messages == []
    layer.on_events([cart(buyer, "i1", 90, "purchase")], now=T0 + timedelta(minutes=90))
    early = layer.run_due(T0 + timedelta(hours=3, minutes=59), export=False)
    assert early.timers_fired == 0
    due = layer.run_due(T0 + timedelta(hours=4), export=False)
    assert due.timers_fired == 1
    assert messages(layer, "cart_recovery", buyer, status=None) == []
    assert len(messages(layer, "cart_recovery", leaver)) == 1
    assert layer.run_due(T0 + timedelta(hours=5), export=False).timers_fired == 0


# --- items ---------------------------------------------------------------------------------------

def test_low_stock_reaches_past_viewers_once(layer: CampaignLayer, settings: Settings) -> None:
    viewers = reachable(settings, "low_stock")[:3]
    layer.on_events([BehaviourEvent(user_id=u, type="view", ts=T0, item_id="bag-1",
                                    category="bags", price=900.0) for u in viewers], now=T0)
    later = T0 + timedelta(days=1)
    listed = layer.on_item(Item(item_id="bag-1", seller_id="s1", category="bags", price=900.0,
                                stock=5, ts=later), now=later)
    assert listed.new and not listed.low_stock and listed.messages == []
    low = layer.on_item(Item(item_id="bag-1", seller_id="s1", category="bags", price=900.0,
                             stock=2, ts=later), now=later)
    assert low.low_stock and sorted(m.user_id for m in low.messages) == sorted(viewers)
    lower = layer.on_item(Item(item_id="bag-1", seller_id="s1", category="bags", price=900.0,
                               stock=1, ts=later), now=later)
    assert not lower.low_stock and lower.messages == []  # already low: nobody again
    restocked = later + timedelta(days=1)
    layer.on_item(Item(item_id="bag-1", seller_id="s1", stock=9, ts=restocked), now=restocked)
    again = layer.on_item(Item(item_id="bag-1", seller_id="s1", stock=1, ts=restocked),
                          now=restocked)
    assert again.low_stock and again.messages == []  # once per user and item, ever


def test_a_followed_sellers_new_item_reaches_the_followers(layer: CampaignLayer,
                                                          settings: Settings) -> None:
    fans = reachable(settings, "new_listing_from_followed_seller")[:2]
    layer.on_events([BehaviourEvent(user_id=u, type="follow", ts=T0, seller_id="s7")
                     for u in fans], now=T0)
    result = layer.on_item(Item(item_id="watch-1", seller_id="s7", category="watches",
                                price=1500.0, stock=1, ts=T0), now=T0)
    assert result.new and sorted(m.user_id for m in result.messages) == sorted(fans)
    assert all(m.campaign == "new_listing_from_followed_seller" for m in result.messages)


# --- consent, control group and holdout ------------------------------------------------------

def test_every_suppressed_firing_is_recorded_with_its_reason(layer: CampaignLayer,
                                                            settings: Settings) -> None:
    policy = PolicyLayer(settings.bandit)
    share = settings.campaigns.campaign("browse_no_buy").holdout_share
    ids = population()["user_id"]
    control = next(u for u in ids if policy.in_control(u)
                   and holdout_hash("browse_no_buy", u) >= share)
    held = next(u for u in ids if holdout_hash("browse_no_buy", u) < share)
    opted = reachable(settings, "browse_no_buy")[5]
    layer.users.store.set_preferences(opted, Preferences(personalization=False))
    for user in (control, held, opted):
        layer.on_events([view(user, m) for m in range(5)], now=T0 + timedelta(minutes=5))
    reasons = {m.user_id: m.reason for m in messages(layer, "browse_no_buy", status="suppressed")}
    assert reasons == {control: "control_group", held: "holdout", opted: "opted_out"}


def test_a_scheduled_campaign_holds_out_its_share_and_accounts_for_everyone(
        settings: Settings) -> None:
    campaign = {"name": "dormant_nudge", "kind": "scheduled", "schedule": "0 10 * * 1",
                "condition": "tier == 'dormant'", "holdout_share": 0.3, "cooldown_hours": 0}
    tuned = with_changes(settings, campaigns={"campaigns": [campaign]})
    store = open_store(tuned)
    store.write(population(2000), AS_OF)
    engine = DecisionEngine(tuned, durable=False)
    layer = CampaignLayer(tuned, engine, UserDirectory(tuned, store, None))
    try:
        dry = layer.run("dormant_nudge", now=T0, dry_run=True)
        report = layer.run("dormant_nudge", now=T0)
        rows = messages(layer, "dormant_nudge", status=None)
        again = layer.run("dormant_nudge", now=T0)
    finally:
        layer.close()
        engine.close()
        store.close()
    dormant = set(population(2000).query("tier == 'dormant'")["user_id"])
    assert dry.audience == report.audience == len(dormant) == 500
    assert {m.user_id for m in rows} == dormant  # a message or a recorded reason, each
    held = sum(m.reason == "holdout" for m in rows)
    low, high = stats.binomtest(held, len(dormant), 0.3).proportion_ci(0.999)
    assert low <= 0.3 <= high and report.holdout == held
    assert report.messages == sum(m.status == "pending" for m in rows) > 0
    assert sum(report.suppressed.values()) + report.messages == len(dormant)
    assert again.already == len(dormant) and again.messages == 0


def test_the_lifecycle_campaign_fires_on_tier_drops_and_stage_transitions(
        settings: Settings) -> None:
    """Between two features builds: mature -> decline and growth -> churned fire, as does
    gold -> dormant (two tier steps); a stage that stays, or has no previous build, does not."""
    from features.build import FEATURES_FILE, partition_dir

    earlier = pd.DataFrame({"user_id": ["u0", "u1", "u2", "u4"],
                            "tier": ["silver", "silver", "gold", "silver"],
                            "lifecycle_stage": ["mature", "decline", "mature", "growth"]})
    latest = population(5).assign(
        user_id=["u0", "u1", "u2", "u3", "u4"],
        tier=["silver", "silver", "dormant", "silver", "silver"],
        lifecycle_stage=["decline", "decline", "mature", "decline", "churned"])
    for as_of, frame in ((date(2026, 2, 1), earlier), (AS_OF, latest)):
        path = partition_dir(settings.paths.features_dir, as_of)
        path.mkdir(parents=True)
        frame.to_parquet(path / FEATURES_FILE)
    tuned = with_changes(settings, campaigns={"campaigns": [
        {**settings.campaigns.campaign("lifecycle").model_dump(), "holdout_share": 0.0}]})
    store = open_store(tuned)
    store.write(latest, AS_OF)
    engine = DecisionEngine(tuned, durable=False)
    layer = CampaignLayer(tuned, engine, UserDirectory(tuned, store, None))
    try:
        report = layer.run("lifecycle", now=T0)
        fired = {m.user_id for m in messages(layer, "lifecycle", status=None)}
    finally:
        layer.close()
        engine.close()
        store.close()
    assert report.audience == 3 and fired == {"u0", "u2", "u4"}


def test_a_scheduled_audience_sees_each_user_as_a_one_user_lookup_does(
        settings: Settings) -> None:
    """The audience reads the store in chunks (records parsed together, preferences of the
    audience only); each user comes out as :meth:`UserDirectory.lookup` sees them alone."""
    campaign = {"name": "dormant_nudge", "kind": "scheduled", "schedule": "0 10 * * 1",
                "condition": "tier == 'dormant' and 'at_risk' not in tags"}
    tuned = with_changes(settings, campaigns={"campaigns": [campaign]})
    frame = population(120).assign(
        tags=[["at_risk"] if i % 8 == 0 else ["high_value"] if i % 3 else []
              for i in range(120)],
        recency_days=[np.nan if i % 5 == 0 else 120.0 for i in range(120)])
    store = open_store(tuned)
    store.write(frame, AS_OF)
    store.remove_tag("u0004", "high_value")
    store.set_preferences("u0012", Preferences(personalization=False, marketing_email=False))
    engine = DecisionEngine(tuned, durable=False)
    users = UserDirectory(tuned, store, None)
    layer = CampaignLayer(tuned, engine, users)
    try:
        with patch("campaigns.layer.AUDIENCE_CHUNK", 7):
            states = [s for chunk in layer._audience(layer.get("dormant_nudge")) for s in chunk]
        alone = {s.view.user_id: users.lookup(s.view.user_id) for s in states}
    finally:
        layer.close()
        engine.close()
        store.close()
    expected = {u for i, u in enumerate(frame["user_id"]) if i % 4 == 0 and i % 8 != 0}
    assert {s.view.user_id for s in states} == expected and "u0012" in expected
    for state in states:
        one = alone[state.view.user_id]
        # The audience's features also carry the columns it scored and masked with, and
        # missing values as None where a lookup leaves them out: the same to the engine.
        seen, alone_view = state.view.model_dump(), one.view.model_dump()
        for view_dump in (seen, alone_view):
            view_dump["features"] = {k: v for k, v in view_dump["features"].items()
                                     if v is not None and k not in USER_COLUMNS}
        assert seen == alone_view
        assert state.preferences == one.preferences
        missing = {k for k, v in one.names.items() if v is None}
        assert {k: v for k, v in state.names.items() if k not in missing} == \
            {k: v for k, v in one.names.items() if k not in missing}
        assert all(pd.isna(state.names[k]) for k in missing)
    assert alone["u0012"].preferences.personalization is False
    assert alone["u0004"].names["tags"] == []


def test_a_campaign_never_lends_to_a_student(settings: Settings) -> None:
    """A campaign that may only offer installments: students get none (the decision says
    why), other users get theirs."""
    campaign = {"name": "pay_later", "kind": "scheduled", "schedule": "0 10 * * 1",
                "condition": "tier == 'silver'", "arms": ["installment"],
                "holdout_share": 0.0, "cooldown_hours": 0}
    tuned = with_changes(settings, campaigns={"campaigns": [campaign]})
    users = population(200)
    users["is_student"] = [i % 2 == 0 for i in range(200)]
    store = open_store(tuned)
    store.write(users, AS_OF)
    engine = DecisionEngine(tuned, durable=False)
    layer = CampaignLayer(tuned, engine, UserDirectory(tuned, store, None))
    try:
        layer.run("pay_later", now=T0)
        rows = messages(layer, "pay_later", status=None)
    finally:
        layer.close()
        engine.close()
        store.close()
    student = set(users.loc[users["is_student"], "user_id"])
    treated = [m for m in rows if m.reason != "control_group"]
    assert len(treated) > 100
    for message in treated:
        if message.user_id in student:
            assert message.arm is None and message.status == "suppressed"
            assert "installment removed: no credit: is_student == True" in message.reason
        else:
            assert message.arm == "installment" and message.status == "pending"


def test_the_scheduler_runs_each_cron_slot_once(settings: Settings) -> None:
    campaign = {"name": "weekly", "kind": "scheduled", "schedule": "0 10 * * 1",
                "condition": "tier == 'dormant'", "holdout_share": 0.0, "cooldown_hours": 0}
    tuned = with_changes(settings, campaigns={"campaigns": [campaign]})
    store = open_store(tuned)
    store.write(population(40), AS_OF)
    engine = DecisionEngine(tuned, durable=False)
    layer = CampaignLayer(tuned, engine, UserDirectory(tuned, store, None))
    monday = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)  # a Monday, after 10:00
    try:
        first = layer.run_due(monday, export=False)
        second = layer.run_due(monday + timedelta(days=3), export=False)  # same slot
        next_week = layer.run_due(monday + timedelta(days=7), export=False)
    finally:
        layer.close()
        engine.close()
        store.close()
    assert [r.slot for r in first.runs] == ["2026-03-02T10:00"]
    assert second.runs == []
    assert [r.slot for r in next_week.runs] == ["2026-03-09T10:00"]


# --- kept events feed the next features build ----------------------------------------------------

def test_kept_events_are_exported_into_the_raw_data(layer: CampaignLayer,
                                                    settings: Settings) -> None:
    layer.on_events([view("u0001", m) for m in range(3)], now=T0)
    assert layer.export_events() == 3 and layer.export_events() == 0
    files = raw_files(Path(settings.paths.raw_dir), "events")
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert len(frame) == 3 and set(frame["type"]) == {"view"}
    assert str(frame["ts"].dtype).startswith("datetime64")
    assert np.all(frame["user_id"] == "u0001")


# --- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "named"), [
    ({"event": "veiw"}, "unknown event 'veiw'"),
    ({"condition": "'hig_value' in tags"}, "'hig_value' in tags"),
    ({"condition": "category_veiws_7d >= 5"}, "category_veiws_7d"),
    ({"arms": ["voucher"]}, "unknown arm"),
    ({"condition": "os == 'ios' and purchases_7d == 0"}, "policy.forbidden_features"),
])
def test_a_misspelt_campaign_is_refused_naming_it(settings: Settings, change: dict,
                                                  named: str) -> None:
    campaigns = [c.model_dump() for c in settings.campaigns.campaigns]
    campaigns[0].update(change)
    tuned = with_changes(settings, campaigns={"campaigns": campaigns})
    with pytest.raises(ConfigError, match="campaign 'browse_no_buy'") as caught:
        compile_campaigns(tuned)
    assert named in caught.value.message


def test_serve_refuses_a_misspelt_campaign_in_one_line(tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nextbest.yaml").write_text(
        "campaigns:\n  campaigns:\n  - name: typo\n    kind: trigger\n    event: add_to_crt\n")
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--allow-empty"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "campaign 'typo'" in err[0] and "add_to_crt" in err[0]
