"""Complete erasure over the real service: a user written everywhere (raw tables, feature
partitions, the champions' validation predictions, decisions, rewards, events, outbox,
delivery files, receipts, ``score --all`` output, audit log) is exported whole, then erased
with ``DELETE /users/{id}``; afterwards no file under ``data/``, ``mlruns/``, ``reports/``
nor the server's log holds their id (Parquet read and its values checked, every other file
scanned byte by byte), and calling again re-creates nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.store import open_store

pytestmark = pytest.mark.integration


def run_cli(args: list[str], env: dict[str, str], cwd: Any) -> None:
    """Run ``nextbest ARGS`` in the world; fail with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nextbest {' '.join(args)}: {proc.stdout}\n{proc.stderr}"


def validation_users(world: Any) -> set[str]:
    """Users in some MLflow run's validation predictions."""
    files = list((world.root / "mlruns").rglob("validation_predictions.csv"))
    assert files, "the world's training logged no validation predictions"
    return set().union(*(set(pd.read_csv(f, dtype=str)["user_id"]) for f in files))


def mentions(world: Any, server: Any, user: str) -> list[str]:
    """Every place the id is found: Parquet values (decompressed), other files' bytes."""
    needle = user.encode()
    roots = [world.root / "data", world.root / "mlruns", world.root / "reports"]
    files = [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]
    files += [server.log_path, *world.root.glob("*.log")]
    hits = []
    for path in files:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                values = table[name].to_pandas().astype(str)
                if values.str.contains(user, regex=False).any() or user in name:
                    hits.append(f"{path} column {name}")
        elif needle in path.read_bytes():
            hits.append(str(path))
    return hits


def decisions_of(world: Any, user: str) -> int:
    with sqlite3.connect(world.settings.paths.decision_log) as conn:
        return conn.execute("SELECT count(*) FROM decisions WHERE user_id = ?",
                            (user,)).fetchone()[0]


class Written:
    """The user written everywhere, and their export taken before the erasure."""

    def __init__(self, user: str, export: dict, message_id: str, rewarded: str,
                 prior: dict):
        self.user, self.export, self.message_id = user, export, message_id
        self.rewarded = rewarded  # the event_id of the decision given feedback
        # What the user had before the fixture wrote: tests run earlier on this worker
        # (an audience or seller campaign reaches every user) may have written some.
        self.prior = prior

    def new(self, kind: str) -> int:
        """How many more campaign rows of ``kind`` (``events``, ...) than before."""
        return len(self.export["campaigns"][kind]) - len(self.prior["campaigns"][kind])


def _views(user: str, category: str, now: datetime) -> dict:
    """Five views in one category within the hour: fires ``browse_no_buy``."""
    return {"events": [{"user_id": user, "type": "view", "category": category,
                        "item_id": f"i_erasure_{k}", "price": 120.0,
                        "ts": (now - timedelta(minutes=4 - k)).isoformat()} for k in range(5)]}


@pytest.fixture(scope="module")
def written(world: Any, server: Any, client: httpx.Client, pool) -> Written:
    """A user of the world (raw data, features, validation predictions) given decisions,
    feedback, events, a campaign message delivered to a JSON-lines file and a receipt."""
    # Only a buyer with orders is written in every raw table; the pool's order depends on
    # which tests ran before on this worker, so the choice must not.
    raw_orders = pd.read_parquet(world.settings.paths.raw_dir / "orders.parquet",
                                 columns=["buyer_id"])
    candidates = validation_users(world) & set(raw_orders["buyer_id"])
    now = datetime.now(UTC)
    fired: dict = {}
    for _ in range(40):
        user = pool.take()
        if user not in candidates:
            continue
        prior = client.get(f"/users/{user}/export").json()
        assert client.put(f"/users/{user}/preferences",
                          json={"marketing_email": True, "marketing_push": True,
                                "marketing_sms": True}).status_code == 200
        fired = client.post("/events", json=_views(user, "bags", now)).json()
        pending = [m for m in fired["messages"] if m["status"] == "pending"]
        if pending:
            break
    else:
        pytest.fail(f"no world user with orders, in the validation predictions and sent a "
                    f"message: {fired}")
    message = pending[0]
    for _ in range(2):
        decision = client.post("/next_best_action", json={
            "user_id": user, "context": {"channel": "app", "page": "item"}}).json()
    assert client.post("/feedback", json={"event_id": decision["event_id"],
                                          "converted": False}).status_code == 200
    # The dispatcher delivers it into data/deliveries/<channel>.jsonl; then a receipt.
    at = max(datetime.fromisoformat(message["scheduled"]), now) + timedelta(seconds=1)
    run_cli(["dispatch", "--once", "--now", at.isoformat()], world.env, world.root)
    deliveries = list((world.root / "data" / "deliveries").glob("*.jsonl"))
    assert any(user.encode() in f.read_bytes() for f in deliveries)
    assert client.post(f"/messages/{message['message_id']}/status",
                       json={"status": "delivered", "ts": at.isoformat()}).status_code == 200
    run_cli(["score", "--all"], world.env, world.root)  # data/scores.parquet
    export = client.get(f"/users/{user}/export")
    assert export.status_code == 200, export.text
    return Written(user, export.json(), message["message_id"], decision["event_id"], prior)


@pytest.fixture(scope="module")
def held_in_files(written: Written, world: Any) -> dict[str, Any]:
    """What the world's files held about the user before the erasure (the export's
    reference): orders bought and sold, raw events, and the feature partitions."""
    user = written.user
    raw_orders = pd.read_parquet(world.settings.paths.raw_dir / "orders.parquet")
    raw_events = pd.read_parquet(world.settings.paths.raw_dir / "events.parquet")
    partitions = sorted(world.settings.paths.features_dir.glob("as_of=*/features.parquet"))
    held = [p for p in partitions
            if (pd.read_parquet(p, columns=["user_id"])["user_id"] == user).any()]
    return {"orders": int((raw_orders["buyer_id"] == user).sum()
                          + (raw_orders["seller_id"] == user).sum()),
            "events": int((raw_events["user_id"] == user).sum()),
            "as_of": sorted(p.parent.name.removeprefix("as_of=") for p in held)}


def test_export_returns_everything_held_about_the_user(written: Written,
                                                       held_in_files: dict[str, Any]) -> None:
    export, user = written.export, written.user
    assert export["store"]["record"]["user_id"] == user
    assert export["store"]["preferences"]["marketing_sms"] is True
    # Two in-page decisions and the campaign message's; the feedback is with its decision.
    earlier = {d["event_id"] for d in written.prior["decisions"]}
    assert sorted(str(d["campaign"]) for d in export["decisions"]
                  if d["event_id"] not in earlier) == ["None", "None", "browse_no_buy"]
    [rewarded] = [d for d in export["decisions"] if d["event_id"] == written.rewarded]
    assert rewarded["reward"]["source"] == "feedback" and rewarded["reward"]["converted"] == 0
    [message] = [m for m in export["campaigns"]["messages"]
                 if m["message_id"] == written.message_id]
    assert [r["status"] for r in message["receipts"]] == ["delivered"]
    assert message["attempts"] and message["attempts"][0]["ok"] == 1
    assert written.new("events") == 5
    assert len(export["raw"].get("orders", [])) == held_in_files["orders"]
    assert all(user in (o["buyer_id"], o["seller_id"]) for o in export["raw"].get("orders", []))
    assert len(export["raw"].get("events", [])) >= held_in_files["events"]
    assert export["raw"]["users"][0]["user_id"] == user
    assert len(held_in_files["as_of"]) >= 2, \
        "the world should hold the user in several feature partitions"
    assert sorted(f["as_of"][:10] for f in export["features"]) == held_in_files["as_of"]
    actions = [a["action"] for a in export["audit"]]
    assert "preferences_changed" in actions and actions[-1] == "user_exported"


@pytest.fixture(scope="module")
def mentioned_before(written: Written, world: Any, server: Any) -> list[str]:
    """Where the scan finds the user before the erasure (it must find them to mean
    anything afterwards)."""
    return mentions(world, server, written.user)


@pytest.fixture(scope="module")
def erased(written: Written, mentioned_before: list[str], held_in_files: dict[str, Any],
           client: httpx.Client) -> Iterator[Written]:
    # After what the other tests compare with was read, whichever test asks for it first.
    response = client.delete(f"/users/{written.user}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["store_records"] == 1
    assert body["decisions"] == 3 + len(written.prior["decisions"])
    assert body["campaign_rows"] >= 6 and body["file_rows"] > 0
    yield written


def test_no_byte_of_the_erased_user_remains(mentioned_before: list[str], erased: Written,
                                            world: Any, server: Any) -> None:
    places = " ".join(mentioned_before)
    for where in ("orders.parquet", "as_of=", "validation_predictions.csv", ".jsonl",
                  "decisions.sqlite", "campaigns.sqlite", "scores.parquet"):
        assert where in places, f"the scan did not find the user in {where} before"
    assert mentions(world, server, erased.user) == []
    # The erasure list names them by salted hash only, and builds skip them.
    with open_store(world.settings) as store:
        assert store.is_erased(erased.user)
        assert all(e.id_hash != erased.user for e in store.erasures())


def test_an_erased_user_calling_again_is_not_recreated(erased: Written, world: Any,
                                                       server: Any,
                                                       client: httpx.Client) -> None:
    user = erased.user
    answer = client.post("/next_best_action", json={
        "user_id": user, "context": {"channel": "app", "page": "item"}})
    assert answer.status_code == 200, answer.text
    decision = answer.json()
    assert decision["personalized"] is False and "erased" in decision["reason"]
    assert client.post("/feedback", json={"event_id": decision["event_id"],
                                          "converted": True, "revenue": 10}).status_code == 404
    events = client.post("/events", json=_views(user, "shoes", datetime.now(UTC))).json()
    assert events == {"accepted": 0, "duplicates": 0, "messages": [], "erased": 5}
    refused = client.put(f"/users/{user}/preferences", json={"marketing_sms": False})
    assert refused.status_code == 410, refused.text
    assert refused.json()["error"] == "gone" and "erased" in refused.json()["detail"]
    assert client.get(f"/users/{user}/export").json()["decisions"] == []
    assert decisions_of(world, user) == 0
    assert mentions(world, server, user) == []
