"""Campaigns by HTTP and CLI only, on the serving tests' world (a real ``nextbest serve``)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from scipy import stats

from campaigns.layer import holdout_hash
from decisions.policy import PolicyLayer

pytestmark = pytest.mark.integration
T = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def cli(world, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", *args], env=world.env,
                          cwd=world.root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nextbest {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def outbox(client: httpx.Client, **filters: str) -> list[dict]:
    """Every outbox row matching ``filters``, page by page."""
    rows, after = [], None
    while True:
        params = filters | ({"after": after} if after else {}) | {"limit": "200"}
        page = client.get("/outbox", params=params).json()
        rows += page["messages"]
        after = page["next_after"]
        if after is None:
            return rows


def reachable(world, pool, campaign: str, client: httpx.Client) -> str:
    """A user of the pool in neither the control group nor ``campaign``'s holdout, who
    consents to marketing by push and email (set through the API)."""
    policy = PolicyLayer(world.settings.bandit)
    share = world.settings.campaigns.campaign(campaign).holdout_share
    while True:
        user = pool.take()
        if not policy.in_control(user) and holdout_hash(campaign, user) >= share:
            consent = {"marketing_push": True, "marketing_email": True}
            assert client.put(f"/users/{user}/preferences", json=consent).status_code == 200
            return user


def at(moment: datetime) -> str:
    return moment.isoformat()


def test_five_views_make_one_browse_message_and_reposting_adds_none(client, world,
                                                                   pool) -> None:
    user = reachable(world, pool, "browse_no_buy", client)
    views = [{"user_id": user, "type": "view", "ts": at(T + timedelta(minutes=i)),
              "category": "jewelry", "item_id": f"j{i}", "price": 300.0} for i in range(5)]
    first = client.post("/events", json={"events": views}).json()
    assert first["accepted"] == 5
    assert [m["campaign"] for m in first["messages"]] == ["browse_no_buy"]
    again = client.post("/events", json={"events": views}).json()
    assert again == {"accepted": 0, "duplicates": 5, "messages": [], "erased": 0}
    sent = outbox(client, user_id=user, campaign="browse_no_buy", status="pending")
    assert len(sent) == 1 and sent[0]["arm"] and sent[0]["decision_id"]


def test_cart_recovery_waits_for_the_scheduler_and_a_purchase_cancels_it(client, world,
                                                                        pool) -> None:
    buyer = reachable(world, pool, "cart_recovery", client)
    leaver = reachable(world, pool, "cart_recovery", client)
    start = T + timedelta(days=1)
    for user, item in ((buyer, "c1"), (leaver, "c2")):
        answer = client.post("/events", json={"user_id": user, "type": "add_to_cart",
                                              "ts": at(start), "item_id": item, "price": 120.0,
                                              "category": "shoes"}).json()
        assert answer["messages"] == []  # not at once: four hours later
    client.post("/events", json={"user_id": buyer, "type": "purchase", "item_id": "c1",
                                 "ts": at(start + timedelta(hours=1)), "price": 120.0})
    cli(world, "scheduler", "--once", "--now", at(start + timedelta(hours=4)))
    assert outbox(client, user_id=buyer, campaign="cart_recovery") == []
    left = outbox(client, user_id=leaver, campaign="cart_recovery")
    assert len(left) == 1 and left[0]["status"] == "pending"
    cli(world, "scheduler", "--once", "--now", at(start + timedelta(hours=8)))
    assert len(outbox(client, user_id=leaver, campaign="cart_recovery")) == 1


def test_lowering_an_items_stock_notifies_its_viewers_once(client, world, pool) -> None:
    viewers = [reachable(world, pool, "low_stock", client) for _ in range(3)]
    now = datetime.now(UTC)
    item = {"item_id": "bag-http", "seller_id": "seller-http", "category": "bags",
            "price": 950.0, "stock": 6, "ts": at(now)}
    assert client.post("/items", json=item).json()["new"] is True
    client.post("/events", json={"events": [
        {"user_id": u, "type": "view", "ts": at(now), "item_id": "bag-http",
         "category": "bags", "price": 950.0} for u in viewers]})
    low = client.post("/items", json=item | {"stock": 2}).json()
    assert low["low_stock"] is True
    assert sorted(m["user_id"] for m in low["messages"]) == sorted(viewers)
    assert client.post("/items", json=item | {"stock": 1}).json()["messages"] == []
    for user in viewers:
        assert len(outbox(client, user_id=user, campaign="low_stock")) == 1


def test_win_back_holds_out_its_share_and_accounts_for_every_dormant_user(client, world
                                                                          ) -> None:
    report = json.loads(cli(world, "campaigns", "run", "win_back", "--json"))
    rows = [r for r in outbox(client, campaign="win_back")
            if r["trigger"] == f"schedule:{report['slot']}"]  # the scheduler may run it too
    users = [f"u{i:06d}" for i in range(2000)]
    scored = []
    for start in range(0, len(users), 500):
        scored += client.post("/score", json={"user_ids": users[start:start + 500]}).json()
    expected = {s["user_id"] for s in scored if s["tier"] == "dormant"
                and (s["churn_probability"] or 0) >= 0.5}
    assert report["audience"] == len(expected) > 10
    assert {r["user_id"] for r in rows} == expected  # a message or a recorded reason each
    held = sum(r["reason"] == "holdout" for r in rows)
    assert stats.binomtest(held, len(expected), 0.1).pvalue > 0.001
    assert all(r["status"] == "pending" or r["reason"] for r in rows)
    summary = {c["name"]: c for c in client.get("/campaigns").json()}
    assert sum(summary["win_back"]["counts"].values()) >= len(expected)
