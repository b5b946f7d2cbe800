"""The service over real HTTP: a real ``nextbest serve`` (BentoML) on the tiny world.

Every test talks to the one session server through ``client``; users are picked from the
world's online store so that each test owns the users it changes.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pandas as pd
import pytest
from api_key import HEADERS

from decisions.decision_log import DecisionLog
from decisions.learner import CheckpointStore
from features.segmentation import LIFECYCLE_STAGES
from features.store import open_store

pytestmark = pytest.mark.integration

VALID_TIERS = {"platinum", "gold", "silver", "dormant", "churned", "new"}
CONTEXT = {"channel": "web", "page": "item", "item_id": "i1", "item_price": 120.0,
           "category": "bags", "hour": 14}


def decide(client: httpx.Client, user_id: str, **context: object) -> dict:
    """POST /next_best_action and return the decision (asserting 200)."""
    response = client.post("/next_best_action", json={"user_id": user_id,
                                                      "context": CONTEXT | context})
    assert response.status_code == 200, response.text
    return response.json()


# --- scoring ---------------------------------------------------------------------------------

def test_score_known_user_has_scores_from_the_champions(client: httpx.Client,
                                                        pool) -> None:
    body = client.post("/score", json={"user_id": pool.take()}).json()
    assert body["known"] is True
    assert body["tier"] in VALID_TIERS
    assert 0.0 <= body["churn_probability"] <= 1.0
    assert 0.0 <= body["purchase_propensity"] <= 1.0
    assert set(body["model_versions"]) == {"churn", "propensity"}
    assert body["features_as_of"] is not None


def test_score_unknown_user_gets_the_cold_start_answer(client: httpx.Client) -> None:
    body = client.post("/score", json={"user_id": "nobody-at-all"}).json()
    assert body["known"] is False
    assert body["tier"] == "new"
    assert body["tags"] == [] and body["features_as_of"] is None


def test_score_batch_keeps_the_order_asked(client: httpx.Client, pool) -> None:
    ids = [pool.take(), "stranger-1", pool.take()]
    body = client.post("/score", json={"user_ids": ids}).json()
    assert [row["user_id"] for row in body] == ids
    assert [row["known"] for row in body] == [True, False, True]


def test_score_batch_over_the_limit_is_refused(client: httpx.Client, world) -> None:
    ids = [f"x{i}" for i in range(world.settings.serving.max_batch + 1)]
    response = client.post("/score", json={"user_ids": ids})
    assert response.status_code == 422
    assert response.json()["field"] == "user_ids"


# --- next best action --------------------------------------------------------------------------

def test_pmf_sums_to_one_and_probability_is_the_chosen_entry(client: httpx.Client,
                                                             pool) -> None:
    for _ in range(5):
        d = decide(client, pool.take())
        assert d["personalized"] is True
        assert set(d["pmf"]) == set(d["eligible"])
        assert math.isclose(sum(d["pmf"].values()), 1.0, abs_tol=1e-6)
        assert d["probability"] == d["pmf"][d["action"]]
        assert len(d["event_id"]) >= 16 and d["reason"] and d["policy_version"]
        assert d["offer"]["arm"] == d["action"] and "kind" in d["offer"]["terms"]


def test_unknown_user_gets_a_decision(client: httpx.Client) -> None:
    d = decide(client, "cold-start-visitor-7")
    assert d["action"] is None or d["probability"] == d["pmf"][d["action"]]


def test_opted_out_user_gets_the_default_action_not_personalised(
        client: httpx.Client, pool, world) -> None:
    user = pool.take()
    response = client.put(f"/users/{user}/preferences", json={"personalization": False})
    assert response.status_code == 200, response.text
    assert response.json()["personalization"] is False
    d = decide(client, user)
    assert d["personalized"] is False
    assert d["action"] == world.settings.bandit.default_arm
    assert d["pmf"] == {d["action"]: 1.0}
    # Its feedback is recorded but never learned.
    fb = client.post("/feedback", json={"event_id": d["event_id"], "converted": True,
                                        "revenue": 10.0}).json()
    assert fb["status"] == "accepted" and fb["learnable"] is False
    views = [{"user_id": user, "type": "view", "ts": f"2026-01-01T10:0{i}:00",
              "category": "bags"} for i in range(5)]
    fired = client.post("/events", json={"events": views}).json()["messages"]
    assert [m for m in fired if m["status"] == "pending"] == []


# --- feedback ----------------------------------------------------------------------------------

def test_feedback_accepted_then_duplicate_then_unknown(client: httpx.Client,
                                                       pool) -> None:
    d = decide(client, pool.take())
    first = client.post("/feedback", json={"event_id": d["event_id"], "converted": True,
                                           "revenue": 80.0})
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    again = client.post("/feedback", json={"event_id": d["event_id"], "converted": True,
                                           "revenue": 80.0})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    unknown = client.post("/feedback", json={"event_id": "no-such-event", "converted": True})
    assert unknown.status_code == 404
    assert unknown.json()["field"] == "event_id"


def test_feedback_after_the_window_is_late_and_not_learned(client: httpx.Client,
                                                           pool, world) -> None:
    d = decide(client, pool.take())
    time.sleep(world.settings.bandit.reward.window_days * 86400 + 0.5)
    body = client.post("/feedback", json={"event_id": d["event_id"], "converted": True,
                                          "revenue": 50.0}).json()
    assert body["status"] == "late"
    assert body["learnable"] is False
    assert "not learned" in body["detail"]


# --- events, users -----------------------------------------------------------------------------

def test_explanation_names_the_rules_and_values(client: httpx.Client, pool) -> None:
    user = pool.take(tagged=True)
    body = client.get(f"/users/{user}/explanation").json()
    assert body["known"] is True
    assert "platinum" in body["tier_rule"]
    assert "recency_days" in body["features"]
    applied = {t["name"] for t in body["tags"] if t["applies"]}
    score = client.post("/score", json={"user_id": user}).json()
    assert applied == set(score["tags"]) and applied
    # The lifecycle stage: the same in both answers, with the rule that set it.
    assert score["lifecycle_stage"] in LIFECYCLE_STAGES
    assert body["lifecycle_stage"] == score["lifecycle_stage"]
    assert body["lifecycle_reason"].startswith(f"{score['lifecycle_stage']}: ")
    assert score["ltv_12m"] is None and "ltv" not in score["model_versions"]  # no LTV model


def test_user_removes_a_tag(client: httpx.Client, pool) -> None:
    user = pool.take(tagged=True)
    tag = client.post("/score", json={"user_id": user}).json()["tags"][0]
    response = client.delete(f"/users/{user}/tags/{tag}")
    assert response.status_code == 200, response.text
    assert tag not in response.json()["tags"]
    assert tag not in client.post("/score", json={"user_id": user}).json()["tags"]
    explained = {t["name"]: t for t in client.get(f"/users/{user}/explanation").json()["tags"]}
    assert explained[tag]["removed_by_user"] is True
    assert client.delete(f"/users/{user}/tags/{tag}").status_code == 404


def test_erasure_removes_the_user_everywhere(client: httpx.Client, pool,
                                             world) -> None:
    user = pool.take()
    client.put(f"/users/{user}/preferences", json={"marketing_sms": False})
    made = {decide(client, user)["event_id"], decide(client, user)["event_id"]}
    before = client.get(f"/users/{user}/export").json()
    assert before["store"]["record"] is not None
    assert made <= {d["event_id"] for d in before["decisions"]}
    # Campaign rows and the decisions campaigns made (a seller campaign's price suggestion)
    # depend on which tests ran first on this worker (an audience campaign reaches every
    # user): exactly those the export showed are erased.
    held = before["campaigns"]
    campaign_rows = (len(held["events"]) + len(held["timers"]) + len(held["messages"])
                     + len(held["items"])
                     + sum(m["conversion"] is not None for m in held["messages"]))
    erased = client.delete(f"/users/{user}").json()
    assert {k: erased[k] for k in ("user_id", "store_records", "decisions", "campaign_rows")} \
        == {"user_id": user, "store_records": 1, "decisions": len(before["decisions"]),
            "campaign_rows": campaign_rows}
    assert erased["file_rows"] > 0 and erased["files"] > 0  # raw tables, partitions, ...
    after = client.get(f"/users/{user}/export").json()
    assert after["store"]["record"] is None and after["store"]["preferences"] is None
    assert after["decisions"] == []
    assert client.post("/score", json={"user_id": user}).json()["known"] is False
    # The erasure is listed, so a features build writing the user again skips them.
    with open_store(world.settings) as store:
        assert store.is_erased(user)
        assert store.write(pd.DataFrame({"user_id": [user], "tier": ["gold"]}),
                           date(2100, 1, 1)) == 0
    assert client.post("/score", json={"user_id": user}).json()["known"] is False


# --- admin -------------------------------------------------------------------------------------

def test_bandit_stats_count_decisions_and_rewards(client: httpx.Client, pool) -> None:
    before = client.get("/bandit/stats").json()
    for _ in range(3):
        d = decide(client, pool.take())
        client.post("/feedback", json={"event_id": d["event_id"], "converted": False})
    after = client.get("/bandit/stats").json()
    assert after["decisions"] == before["decisions"] + 3
    assert after["rewards"] >= before["rewards"] + 3
    assert after["rewards_learned"] >= before["rewards_learned"] + 3
    assert math.isclose(sum(a["share"] for a in after["arms"].values()), 1.0, abs_tol=1e-9)


def test_models_reload_picks_up_the_champions(client: httpx.Client) -> None:
    response = client.post("/models/reload")
    assert response.status_code == 200, response.text
    versions = response.json()["model_versions"]
    assert set(versions) == {"churn", "propensity"}
    assert client.post("/score", json={"user_id": "x"}).json()["model_versions"] == versions


def test_openapi_spec_lists_every_route(client: httpx.Client) -> None:
    paths = set(client.get("/docs.json").json()["paths"])
    assert {"/score", "/next_best_action", "/feedback", "/events", "/bandit/stats",
            "/models/reload", "/users/{user_id}", "/users/{user_id}/preferences",
            "/users/{user_id}/explanation", "/users/{user_id}/export",
            "/users/{user_id}/tags/{tag}", "/readyz", "/metrics"} <= paths


# --- bad input ---------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("/score", '{"user_id": ', "body"),
    ("/score", '{"user_id": 5}', "user_id"),
    ("/score", '{"user_id": NaN}', "user_id"),
    ("/score", '{"user_id": "a", "user_ids": ["b"]}', "body"),
    ("/score", '{"user_id": "a", "extra": 1}', "extra"),
    ("/next_best_action", '{"context": {}}', "user_id"),
    ("/next_best_action", '{"user_id": "a", "context": {"item_price": NaN}}',
     "context.item_price"),
    ("/next_best_action", '{"user_id": "a", "context": {"item_price": Infinity}}',
     "context.item_price"),
    ("/next_best_action", '{"user_id": "a", "context": {"hour": 24}}', "context.hour"),
    ("/next_best_action", '{"user_id": "a", "context": {"colour": "red"}}', "context.colour"),
    ("/next_best_action", '{"user_id": "a", "context": {"channel": "whatsapp"}}',
     "context.channel"),
    ("/next_best_action", '{"user_id": "a", "context": {"page": "Galaxy S24 owners"}}',
     "context.page"),
    ("/feedback", '{"event_id": "e", "converted": "maybe"}', "converted"),
    ("/feedback", '{"event_id": "e", "converted": true, "revenue": -Infinity}', "revenue"),
    ("/feedback", '{"event_id": "e", "converted": true, "revenue": -1}', "revenue"),
    ("/feedback", '[1, 2]', "body"),
    ("/events", '{"user_id": "a", "type": "teleport", "ts": "2026-01-01T00:00:00"}', "type"),
    ("/events", '{"user_id": "a", "type": "view"}', "ts"),
]


@pytest.mark.parametrize(("path", "raw", "field"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_naming_the_field(client: httpx.Client, path: str, raw: str,
                                             field: str) -> None:
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["field"] == field, body
    assert body["detail"]


def test_bad_preferences_are_a_4xx(client: httpx.Client) -> None:
    response = client.put("/users/u1/preferences", json={"personalization": "yes please"})
    assert response.status_code == 422
    assert response.json()["field"] == "personalization"


# --- learning ----------------------------------------------------------------------------------

async def _decide_and_reward(http: httpx.AsyncClient, user: str,
                             good_arm: str) -> tuple[str | None, float]:
    """One round of the learning client: decide, then reward only ``good_arm``.

    Returns the action and the probability the policy gave ``good_arm``."""
    response = await http.post("/next_best_action", json={
        "user_id": user, "context": CONTEXT | {"page": "checkout"}})
    d = response.json()
    converted = d["action"] == good_arm
    await http.post("/feedback", json={"event_id": d["event_id"], "converted": converted,
                                       "revenue": 100.0 if converted else 0.0})
    return d["action"], d["pmf"].get(good_arm, 0.0)


async def _learning_run(url: str, users: list[str], good_arm: str, rounds: int,
                        concurrency: int = 8) -> list[tuple[str | None, float]]:
    """``rounds`` decisions for ``users`` in turn, ``concurrency`` in flight at a time."""
    results: list[tuple[str | None, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30.0, headers=HEADERS) as http:
        for start in range(0, rounds, concurrency):
            batch = [users[(start + i) % len(users)] for i in range(concurrency)]
            results += await asyncio.gather(*(_decide_and_reward(http, u, good_arm)
                                              for u in batch))
    return results


@pytest.fixture(scope="module")
def learning_users(pool) -> Iterator[list[str]]:
    yield [pool.take() for _ in range(20)]


def _least_favoured_arm(url: str, users: list[str]) -> tuple[str, float]:
    """The arm the current policy gives the lowest mean probability for ``users``, and that
    probability (the server is shared with other tests, so the starting policy is not flat)."""
    totals: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=30.0, headers=HEADERS) as http:
        for user in users:
            pmf = http.post("/next_best_action", json={
                "user_id": user, "context": CONTEXT | {"page": "checkout"}}).json()["pmf"]
            for arm, p in pmf.items():
                totals[arm] = totals.get(arm, 0.0) + p
    arm = min(totals, key=totals.__getitem__)
    return arm, totals[arm] / len(users)


def test_rewarded_arm_share_rises_for_those_users(server, learning_users: list[str]) -> None:
    good_arm, before = _least_favoured_arm(server.url, learning_users)
    results = asyncio.run(_learning_run(server.url, learning_users, good_arm, rounds=800))
    late = [action for action, _ in results[-300:]].count(good_arm) / 300
    assert before < 0.5, before
    assert late > before + 0.3, (good_arm, before, late)


# --- processes: crash recovery and several workers --------------------------------------------

def _traffic_with_feedback(url: str, users: list[str], rounds: int) -> int:
    """Decide and give feedback ``rounds`` times; the number of learnable rewards accepted."""
    learnable = 0
    with httpx.Client(base_url=url, timeout=30.0, headers=HEADERS) as http:
        for i in range(rounds):
            d = http.post("/next_best_action", json={
                "user_id": users[i % len(users)], "context": CONTEXT}).json()
            fb = http.post("/feedback", json={"event_id": d["event_id"], "converted": i % 3 == 0,
                                              "revenue": 60.0 * (i % 3 == 0)}).json()
            assert fb["status"] == "accepted", fb
            learnable += int(fb["learnable"])
    return learnable


class _Traffic(threading.Thread):
    """A client deciding and giving feedback in a loop until stopped or the server dies;
    counts the learnable feedback the server accepted (answered 200 "accepted")."""

    def __init__(self, url: str, users: list[str]):
        super().__init__(daemon=True)
        self.url, self.users = url, users
        self.accepted = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0, headers=HEADERS) as http:
            i = 0
            while not self.stop_event.is_set():
                try:
                    d = http.post("/next_best_action", json={
                        "user_id": self.users[i % len(self.users)], "context": CONTEXT}).json()
                    fb = http.post("/feedback", json={"event_id": d["event_id"],
                                                      "converted": i % 3 == 0,
                                                      "revenue": 60.0 * (i % 3 == 0)}).json()
                except httpx.HTTPError:
                    return  # the server was killed
                self.accepted += int(fb["status"] == "accepted" and fb["learnable"])
                i += 1


def test_kill_9_mid_traffic_then_restart_loses_no_accepted_feedback(
        spawn, pool, world) -> None:
    # No sweeping: only rewards from feedback reach the log, so they can be counted.
    no_sweep = {"NEXTBEST__BANDIT__SWEEP_SECONDS": "3600"}
    first = spawn("crash-1", env=no_sweep)
    traffic = _Traffic(first.url, [pool.take() for _ in range(10)])
    traffic.start()
    deadline = time.monotonic() + 60
    # Past one checkpoint (every 200 rewards), so the restart needs checkpoint + log replay.
    while traffic.accepted < 260 and time.monotonic() < deadline and traffic.is_alive():
        time.sleep(0.05)
    first.stop(signal.SIGKILL)  # every process of the service at once, mid-request
    traffic.join(timeout=30)
    traffic.stop_event.set()
    assert traffic.accepted >= 260, "the traffic did not get going"
    second = spawn("crash-2", env=no_sweep)  # same decision log and bandit directory
    stats = httpx.get(f"{second.url}/bandit/stats", headers=HEADERS, timeout=30.0).json()
    log = DecisionLog(world.root / "crash" / "decisions.sqlite")
    try:
        in_log = log.count_rewards(learnable_only=True)
    finally:
        log.close()
    # Everything accepted is in the log (a reward whose answer was lost may be there too),
    # and the restarted model has learned every learnable reward of the log.
    assert traffic.accepted <= in_log <= traffic.accepted + 1
    assert stats["rewards_learned"] == in_log


def test_two_workers_one_learner_the_rest_scorers(spawn, pool) -> None:
    srv = spawn("workers", workers=2)
    roles = set()
    for _ in range(40):  # a new connection each time: the kernel spreads them over workers
        roles.add(httpx.get(f"{srv.url}/bandit/stats", headers=HEADERS, timeout=30.0).json()["role"])
        if len(roles) == 2:
            break
    assert roles == {"learner", "scorer"}
    accepted = _traffic_with_feedback(srv.url, [pool.take() for _ in range(5)], rounds=30)
    deadline = time.monotonic() + 20
    learned = 0
    while time.monotonic() < deadline and learned < accepted:
        # The learner's checkpoint is what every worker reports; it publishes within
        # checkpoint_seconds of the last reward.
        learned = httpx.get(f"{srv.url}/bandit/stats", headers=HEADERS, timeout=30.0).json()[
            "rewards_learned"]
        time.sleep(0.5)
    assert learned == accepted


def _learner_cmd() -> list[str]:
    return [sys.executable, "-m", "nextbest.cli", "learner"]


def _wait_for_checkpoint(bandit_dir: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until the learner published its first checkpoint (it does on start-up)."""
    deadline = time.monotonic() + timeout
    while CheckpointStore(bandit_dir).latest() is None:
        assert proc.poll() is None, f"nextbest learner exited with {proc.returncode}"
        assert time.monotonic() < deadline, "nextbest learner published no checkpoint"
        time.sleep(0.1)


def test_learner_process_learns_what_scorer_replicas_log(spawn, pool, world) -> None:
    name = "replica"
    env = world.env | {"NEXTBEST__PATHS__DECISION_LOG": str(world.root / name / "decisions.sqlite"),
                       "NEXTBEST__PATHS__BANDIT_DIR": str(world.root / name / "bandit")}
    bandit_dir = world.root / name / "bandit"
    out_path = world.root / "learner.out"
    with out_path.open("wb") as out:
        learner = subprocess.Popen(_learner_cmd(), env=env, cwd=world.root, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_checkpoint(bandit_dir, learner)
        # A second learner on the same log is refused with a one-line error.
        second = subprocess.run(_learner_cmd(), env=env, cwd=world.root, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode != 0
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "already the bandit learner" in err[0], second.stderr
        # A service started now finds the lock taken and serves as a scorer.
        srv = spawn(name)
        assert httpx.get(f"{srv.url}/bandit/stats", headers=HEADERS, timeout=30.0).json()["role"] == "scorer"
        accepted = _traffic_with_feedback(srv.url, [pool.take() for _ in range(4)], rounds=24)
        assert accepted > 0
    finally:
        learner.send_signal(signal.SIGTERM)
        try:
            code = learner.wait(timeout=30)
        finally:
            if learner.poll() is None:
                learner.kill()
                learner.wait()
    assert code == 0, out_path.read_text()
    last = out_path.read_text().strip().splitlines()[-1]
    assert last.startswith("bandit learner SIGTERM:"), last
    # The final checkpoint covers the whole log and learned every learnable feedback.
    log = DecisionLog(world.root / name / "decisions.sqlite")
    try:
        in_log, last_seq = log.count_rewards(learnable_only=True), log.last_seq()
    finally:
        log.close()
    meta = CheckpointStore(bandit_dir).latest()
    assert meta is not None and meta.seq == last_seq
    assert meta.rewards_learned == in_log >= accepted
