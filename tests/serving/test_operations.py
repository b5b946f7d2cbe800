"""Operating the service: readiness, model reloads across workers, errors a client can act
on, the API spec and nextbest's own metrics (a real ``nextbest serve`` over HTTP)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_key import HEADERS

from nextbest.config import path_overrides

pytestmark = pytest.mark.integration


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nextbest.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


# --- readiness ---------------------------------------------------------------------------------

def test_readyz_says_which_models_and_features_are_live(client: httpx.Client, world) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True and body["missing"] == []
    assert set(body["models"]) == {"churn", "propensity"} and all(body["models"].values())
    meta_as_of = world.settings.paths.features_dir
    built = sorted(p.name.removeprefix("as_of=") for p in Path(meta_as_of).glob("as_of=*"))
    assert body["features_as_of"] == built[-1]
    assert body["store_users"] > 100


def test_an_empty_directory_is_refused_unless_allowed(tmp_path: Path, world) -> None:
    env = {k: v for k, v in world.env.items() if not k.startswith("NEXTBEST")}
    env |= path_overrides(tmp_path)
    refused = cli(["serve", "--port", "1"], env, tmp_path)
    assert refused.returncode == 4
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nothing to serve")
    assert "nextbest train churn" in lines[0] and "nextbest features build" in lines[0]
    assert "--allow-empty" in lines[0]


def test_an_allowed_empty_service_says_what_is_missing(empty_server) -> None:
    body = httpx.get(f"{empty_server.url}/readyz", timeout=30.0).json()
    assert body["models"]["churn"] is None and body["features_as_of"] is None
    assert len(body["missing"]) == 2 and body["store_users"] == 0
    score = httpx.post(f"{empty_server.url}/score", headers=HEADERS, json={"user_id": "anyone"},
                       timeout=30.0).json()
    assert score["known"] is False and score["churn_probability"] is None


# --- model reloads ------------------------------------------------------------------------------

def test_reload_moves_every_worker_to_the_new_champion(spawn, world) -> None:
    srv = spawn("reload", workers=2,
                env={"NEXTBEST__SERVING__MODEL_REFRESH_SECONDS": "3600"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the second worker may still be starting
        before = httpx.post(f"{srv.url}/models/reload", headers=HEADERS, timeout=60.0).json()
        if len(before["workers"]) == 2:
            break
        time.sleep(0.5)
    assert len(before["workers"]) == 2 and before["all_workers_agree"]
    trained = cli(["train", "churn", "--cutoffs", "2", "--force"], world.env, world.root)
    assert trained.returncode == 0, trained.stderr
    after = httpx.post(f"{srv.url}/models/reload", headers=HEADERS, timeout=60.0).json()
    new = after["model_versions"]["churn"]
    assert int(new) > int(before["model_versions"]["churn"])
    assert {w["model_versions"]["churn"] for w in after["workers"]} == {new}
    assert len({w["pid"] for w in after["workers"]}) == 2 and after["all_workers_agree"]


def test_workers_pick_up_a_new_champion_on_their_schedule(spawn, world) -> None:
    srv = spawn("refresh", env={"NEXTBEST__SERVING__MODEL_REFRESH_SECONDS": "1"})
    served = httpx.get(f"{srv.url}/readyz", timeout=30.0).json()["models"]["propensity"]
    trained = cli(["train", "propensity", "--cutoffs", "2", "--force"], world.env, world.root)
    assert trained.returncode == 0, trained.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = httpx.get(f"{srv.url}/readyz", timeout=30.0).json()["models"]["propensity"]
        if now != served:
            break
        time.sleep(0.5)
    assert int(now) > int(served), "the worker never picked up the new champion"
    # So does the decision process (serving.decision_process, on with one worker): it
    # scores the users it decides for.
    wanted = f"'propensity': '{now}'"
    while not [line for line in srv.log_tail(1000).splitlines()
               if "the decision process now serves models" in line and wanted in line]:
        assert time.monotonic() < deadline + 30, (
            f"the decision process never picked up propensity v{now}:\n{srv.log_tail()}")
        time.sleep(0.5)


# --- errors a client can act on -----------------------------------------------------------------

def test_every_invalid_field_is_reported_at_once(client: httpx.Client) -> None:
    response = client.post("/feedback", json={"event_id": 5, "converted": "x", "revenue": -1})
    assert response.status_code == 422
    body = response.json()
    assert [e["field"] for e in body["errors"]] == ["event_id", "converted", "revenue"]
    assert body["field"] == "event_id"
    assert all(f"{e['field']}: " in body["detail"] for e in body["errors"])


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"}])
def test_a_body_without_a_json_content_type_says_so(client: httpx.Client,
                                                    headers: dict[str, str]) -> None:
    response = client.post("/score", content=b'{"user_id": "u000001"}', headers=headers)
    assert response.status_code == 422
    assert "content-type: application/json" in response.json()["detail"]


def test_revenue_without_a_conversion_is_refused(client: httpx.Client) -> None:
    d = client.post("/next_best_action", json={"user_id": "no-conversion"}).json()
    response = client.post("/feedback", json={"event_id": d["event_id"], "converted": False,
                                               "revenue": 500})
    assert response.status_code == 422
    assert response.json()["field"] == "revenue"
    assert "converted false" in response.json()["detail"]


def test_conflicting_duplicate_feedback_says_how_it_differs(client: httpx.Client) -> None:
    d = client.post("/next_best_action", json={"user_id": "twice-told"}).json()
    first = client.post("/feedback", json={"event_id": d["event_id"], "converted": True,
                                           "revenue": 80.0})
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    same = client.post("/feedback", json={"event_id": d["event_id"], "converted": True,
                                          "revenue": 80.0})
    assert same.status_code == 200 and same.json()["status"] == "duplicate"
    other = client.post("/feedback", json={"event_id": d["event_id"], "converted": False})
    assert other.status_code == 409
    assert "converted=true, revenue 80" in other.json()["detail"]
    assert "converted=false, revenue 0" in other.json()["detail"]


# --- the API spec ---------------------------------------------------------------------------------

def test_the_spec_is_nextbests_own(client: httpx.Client, world) -> None:
    spec = client.get("/docs.json").json()
    assert spec["info"]["title"] == "nextbest"
    assert spec["info"]["version"] != "None" and "bandit" in spec["info"]["description"]
    assert "BentoML" not in str(spec["info"])
    schemas = spec["components"]["schemas"]
    assert schemas["NextBestActionRequest"]["examples"][0]["context"]["item_price"] > 0
    batch = schemas["ScoreRequest"]["properties"]["user_ids"]["anyOf"][0]
    assert batch["maxItems"] == world.settings.serving.max_batch
    assert "/noop" not in spec["paths"]
    assert client.post("/noop", json={"user_id": "a"}).status_code == 404


def test_preferences_can_be_read(client: httpx.Client) -> None:
    user = "reads-own-consent"
    assert client.get(f"/users/{user}/preferences").json()["updated_ts"] is None
    client.put(f"/users/{user}/preferences", json={"marketing_sms": False})
    body = client.get(f"/users/{user}/preferences").json()
    assert body["marketing_sms"] is False and body["marketing_email"] is True
    assert body["updated_ts"] is not None


# --- nextbest's own metrics -----------------------------------------------------------------------

def _series(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family in Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name):].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_metrics_count_decisions_and_rewards_by_arm_and_tier(client: httpx.Client) -> None:
    def decisions() -> float:
        return sum(_series(client.get("/metrics").text, "nextbest_decisions_total").values())

    before = decisions()
    made = [client.post("/next_best_action", json={"user_id": f"metric-{i}"}).json()
            for i in range(5)]
    assert decisions() == before + 5
    text = client.get("/metrics").text
    labels = _series(text, "nextbest_decisions_total")
    assert all('decision_point="buyer_offer"' in key and "tier=" in key for key in labels)
    assert any('tier="new"' in key for key in labels)
    client.post("/feedback", json={"event_id": made[0]["event_id"], "converted": True,
                                   "revenue": 10.0})
    rewards = _series(client.get("/metrics").text, "nextbest_rewards_total")
    assert any('outcome="converted"' in key for key in rewards)
    assert _series(text, "nextbest_model_info")
    assert "nextbest_features_age_days " in text and "nextbest_learner_lag_rewards " in text


def test_a_thousand_user_ids_add_no_metric_series_and_no_log_line_names_them(
        client: httpx.Client, server) -> None:
    def series(text: str) -> set[str]:
        return {line.rsplit(" ", 1)[0] for line in text.splitlines()
                if line and not line.startswith("#")}

    client.get("/users/warm-up/explanation")  # the routes' own series exist from here on
    client.get("/metrics")
    before = series(client.get("/metrics").text)
    for i in range(1000):
        assert client.get(f"/users/probe-{i:04d}/explanation").status_code == 200
    text = client.get("/metrics").text
    assert "probe-" not in text
    # The counters' values moved, not the set of series: labels are route templates (a raw
    # path label would have added a series or more per id).
    new = series(text) - before
    assert len(new) <= 5, sorted(new)
    assert "probe-" not in server.log_path.read_text(errors="replace")
