"""The review queue over real HTTP: a risk-tagged user gets no automated incentive until an
operator clears them (GET /review, POST /review/{user_id})."""

from __future__ import annotations

from datetime import date

import httpx
import pytest

from decisions.policy import PolicyLayer
from features.store import open_store

pytestmark = pytest.mark.integration

CONTEXT = {"channel": "web", "page": "item", "item_id": "i1", "item_price": 120.0,
           "category": "bags", "hour": 14}
CARDS = "card_switching: paid with 4 different payment fingerprints in 30 days"
INCENTIVES = {"coupon", "installment"}


def _eligible(client: httpx.Client, user_id: str) -> tuple[set[str], str]:
    response = client.post("/next_best_action", json={"user_id": user_id, "context": CONTEXT})
    assert response.status_code == 200, response.text
    body = response.json()
    return set(body["eligible"]), body["reason"]


def test_a_user_under_review_gets_no_incentive_until_an_operator_clears_them(
        client: httpx.Client, world) -> None:
    policy = PolicyLayer(world.settings.bandit)
    with open_store(world.settings) as store:
        records = store.get_many([f"u{i:06d}" for i in range(600)])  # the lowest ids: other
        # tests hand out users from the highest down
        user_id = next(u for u, rec in sorted(records.items())
                       if not policy.in_control(u) and not rec["under_review"]
                       and store.get_preferences(u).personalization
                       and "coupon_abuser" not in rec["tags"])
        assert _eligible(client, user_id)[0] >= INCENTIVES
        # As a features build does for a user its risk rules tag.
        assert store.flag_for_review({user_id: [CARDS]}, date(2025, 2, 1)) == 1

    listed = client.get("/review").json()
    assert listed["status"] == "pending"
    [mine] = [r for r in listed["reviews"] if r["user_id"] == user_id]
    assert mine["reasons"] == [CARDS] and mine["tags"] == ["card_switching"]
    for _ in range(3):
        eligible, reason = _eligible(client, user_id)
        assert eligible == {"certification"}
        assert f"coupon removed: under review: {CARDS}" in reason

    refused = client.post(f"/review/{user_id}", json={"decision": "ignore", "note": "x",
                                                      "by": "ana"})
    assert refused.status_code == 422 and refused.json()["field"] == "decision"
    missing = client.post("/review/nobody-here", json={"decision": "cleared", "note": "x",
                                                       "by": "ana"})
    assert missing.status_code == 404 and missing.json()["field"] == "user_id"

    cleared = client.post(f"/review/{user_id}", json={
        "decision": "cleared", "note": "new bank cards, same person", "by": "ana"})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["status"], cleared.json()["decided_by"]) == ("cleared", "ana")
    assert _eligible(client, user_id)[0] >= INCENTIVES
    assert user_id not in {r["user_id"] for r in client.get("/review").json()["reviews"]}
    done = client.get("/review", params={"status": "cleared"}).json()["reviews"]
    assert [r["note"] for r in done if r["user_id"] == user_id] == ["new bank cards, same person"]
    bad = client.get("/review", params={"status": "open"})
    assert bad.status_code == 422 and bad.json()["field"] == "status"
