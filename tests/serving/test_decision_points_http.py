"""Decision points over HTTP: a VIP seller scores as VIP and gets a seller offer; buyer and
seller feedback move only their own point's counts; a wrong point is a 4xx naming it."""

from __future__ import annotations

import httpx
import pytest

from decisions.policy import PolicyLayer
from features.store import open_store
from nextbest.config import SELLER_POINT

pytestmark = pytest.mark.integration

SELLER_ARMS = {"first_order_free_commission", "commission_tier_upgrade", "price_suggestion",
               "consignment_guide", "recall_message", "vip_support"}
CONTEXT = {"channel": "web", "page": "home", "item_price": 150.0, "category": "bags"}


@pytest.fixture(scope="module")
def vip_sellers(world) -> list[str]:
    """VIP sellers of the world outside the seller point's control group."""
    policy = PolicyLayer(world.settings.point(SELLER_POINT))
    store = open_store(world.settings)
    try:
        records = store.get_many([f"u{i:06d}" for i in range(2000)])
    finally:
        store.close()
    found = [uid for uid, rec in records.items()
             if rec.get("seller_tier") == "vip" and not policy.in_control(uid)]
    assert len(found) >= 2, "the world has too few VIP sellers"
    return found


def test_a_vip_seller_scores_as_vip_and_gets_a_vip_offer(client: httpx.Client, vip_sellers):
    seller = vip_sellers[0]
    score = client.post("/score", json={"user_id": seller, "subject": "seller"}).json()
    assert score["seller_tier"] == "vip" and score["known"] is True
    decision = client.post("/next_best_action", json={
        "user_id": seller, "decision_point": SELLER_POINT, "context": CONTEXT})
    assert decision.status_code == 200, decision.text
    body = decision.json()
    assert body["decision_point"] == SELLER_POINT
    # A VIP's arms: support, the commission tier, and a price suggestion for a stale listing.
    assert "vip_support" in body["pmf"], body
    assert set(body["pmf"]) <= {"commission_tier_upgrade", "vip_support", "price_suggestion"}
    assert body["action"] in body["pmf"]


def test_feedback_moves_only_its_own_points_counts(client: httpx.Client, vip_sellers, pool):
    before = client.get("/bandit/stats", params={"decision_point": SELLER_POINT}).json()
    sold = client.post("/next_best_action", json={
        "user_id": vip_sellers[1], "decision_point": SELLER_POINT, "context": CONTEXT}).json()
    bought = client.post("/next_best_action", json={"user_id": pool.take(),
                                                    "context": CONTEXT}).json()
    assert bought["decision_point"] == "buyer_offer"
    answer = client.post("/feedback", json={"event_id": sold["event_id"], "converted": True,
                                             "revenue": 400.0}).json()
    assert answer["status"] == "accepted" and answer["decision_point"] == SELLER_POINT
    middle = client.get("/bandit/stats", params={"decision_point": SELLER_POINT}).json()
    assert (middle["decisions"], middle["rewards"]) == \
        (before["decisions"] + 1, before["rewards"] + 1)
    # Buyer feedback (naming its point, which must match) leaves the seller counts alone.
    wrong = client.post("/feedback", json={"event_id": bought["event_id"], "converted": False,
                                           "decision_point": SELLER_POINT})
    assert wrong.status_code == 409 and wrong.json()["field"] == "decision_point"
    assert client.post("/feedback", json={"event_id": bought["event_id"],
                                          "converted": False}).status_code == 200
    after = client.get("/bandit/stats", params={"decision_point": SELLER_POINT}).json()
    assert after["rewards"] == middle["rewards"]
    assert set(after["arms"]) <= SELLER_ARMS | {"none"}
    buyer = client.get("/bandit/stats").json()
    assert buyer["decision_point"] == "buyer_offer" and not set(buyer["arms"]) & SELLER_ARMS
    assert buyer["decision_points"] == ["buyer_offer", SELLER_POINT]


def test_an_unknown_decision_point_is_a_404_naming_it(client: httpx.Client, pool):
    response = client.post("/next_best_action", json={"user_id": pool.take(),
                                                      "decision_point": "nope"})
    assert response.status_code == 404 and response.json()["field"] == "decision_point"
    stats = client.get("/bandit/stats", params={"decision_point": "nope"})
    assert stats.status_code == 404 and "buyer_offer" in stats.json()["detail"]


def test_a_user_who_only_started_a_listing_is_a_prospective_seller(client: httpx.Client):
    user = "prospect-http-1"
    before = client.post("/score", json={"user_id": user, "subject": "seller"}).json()
    assert before["seller_tier"] is None and before["known"] is False
    posted = client.post("/events", json={"user_id": user, "type": "listing_started",
                                           "ts": "2026-03-02T12:00:00Z"})
    assert posted.status_code == 200, posted.text
    after = client.post("/score", json={"user_id": user, "subject": "seller"}).json()
    assert after["seller_tier"] == "prospective"
