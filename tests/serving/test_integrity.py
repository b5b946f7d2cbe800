"""Feedback integrity over HTTP: forged revenue is refused, what is learned is bounded,
and the decision log keeps which API key sent each feedback."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from conftest import CLIP_MAX, MAX_REVENUE
from test_service import decide

pytestmark = pytest.mark.integration



def feedback(client: httpx.Client, event_id: str, revenue: float) -> httpx.Response:
    return client.post("/feedback", json={"event_id": event_id, "converted": True,
                                          "revenue": revenue})


def stored(world, event_id: str) -> tuple | None:
    """(reward, revenue, key_id) of the event's reward row in the service's decision log."""
    with sqlite3.connect(world.settings.paths.decision_log) as conn:
        return conn.execute("SELECT reward, revenue, key_id FROM rewards WHERE event_id = ?",
                            (event_id,)).fetchone()


def test_revenue_above_ten_times_the_item_price_is_refused(client: httpx.Client, pool,
                                                           world) -> None:
    multiple = world.settings.bandit.reward.max_revenue_multiple
    d = decide(client, pool.take())
    forged = feedback(client, d["event_id"], 1e9)
    assert forged.status_code == 422
    body = forged.json()
    assert body["field"] == "revenue"
    assert f"above the limit {multiple * 120:g}" in body["detail"]
    assert "max_revenue_multiple" in body["detail"]
    assert stored(world, d["event_id"]) is None  # nothing was recorded
    # The real answer afterwards is accepted: the forged one did not take its place.
    real = feedback(client, d["event_id"], 150.0)
    assert real.status_code == 200 and real.json()["status"] == "accepted"


def test_without_an_item_price_the_absolute_cap_applies(client: httpx.Client, pool) -> None:
    d = decide(client, pool.take(), item_price=None)
    refused = feedback(client, d["event_id"], MAX_REVENUE + 1)
    assert refused.status_code == 422 and refused.json()["field"] == "revenue"
    assert "max_revenue" in refused.json()["detail"]
    assert f"limit {MAX_REVENUE:g}" in refused.json()["detail"]
    assert feedback(client, d["event_id"], MAX_REVENUE).status_code == 200


def test_the_learned_reward_is_clipped(client: httpx.Client, pool, world) -> None:
    d = decide(client, pool.take())
    answer = feedback(client, d["event_id"], 1200.0)  # 10 x 120: allowed, reward > clip
    assert answer.status_code == 200, answer.text
    assert answer.json()["reward"] == CLIP_MAX
    assert f"clipped to {CLIP_MAX:g}" in answer.json()["detail"]
    reward, revenue, _ = stored(world, d["event_id"])
    assert (reward, revenue) == (CLIP_MAX, 1200.0)  # the revenue as told, the reward bounded


def test_the_decision_log_keeps_the_key_that_sent_the_feedback(client: httpx.Client, pool,
                                                               world) -> None:
    d = decide(client, pool.take())
    assert feedback(client, d["event_id"], 90.0).status_code == 200
    assert stored(world, d["event_id"])[2] == "tests"  # the id of tests/api_key.py's key


# --- what the fuzzing found -----------------------------------------------------------------

def test_a_path_with_a_control_character_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/users/a%0Ab/preferences")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "control character" in response.json()["detail"]


def test_a_body_that_is_not_utf8_is_a_422_on_the_body(client: httpx.Client) -> None:
    response = client.post("/feedback", content=b"\x96\x9e",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["field"] == "body"


def test_an_audit_offset_beyond_64_bits_is_a_422(client: httpx.Client) -> None:
    response = client.get("/audit", params={"after": 2**70})
    assert response.status_code == 422
    assert response.json()["field"] == "after"


def test_an_event_in_year_one_is_a_422_naming_ts(client: httpx.Client) -> None:
    response = client.post("/events", json={"user_id": "u1", "type": "view",
                                            "ts": "0001-01-10T01:14:10+00:01"})
    assert response.status_code == 422
    assert response.json()["field"] == "ts" and "1970 to 2999" in response.json()["detail"]


def test_review_times_carry_their_utc_offset(client: httpx.Client) -> None:
    reviews = client.get("/review", params={"status": "all"}).json()["reviews"]
    assert reviews, "the world has no user under review"
    assert all(r["opened_ts"].endswith("+00:00") for r in reviews)


def test_a_stock_beyond_any_real_count_is_a_422_on_the_stock(client: httpx.Client) -> None:
    item = {"item_id": "huge", "seller_id": "s1", "stock": 91_241_214_000_000_000_000,
            "ts": "2026-01-05T10:00:00Z"}
    response = client.post("/items", json=item)
    assert response.status_code == 422, response.text
    assert "stock" in response.text
