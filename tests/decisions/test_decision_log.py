"""The decision log: round trips, rewards once, sweeping, several connections, privacy."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from decisions.decision_log import Decision, DecisionLog, LoggedDecision, RewardRow

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def logged(event_id: str, user_id: str = "u1", *, ts: datetime = T0, action: str | None = "coupon",
           learnable: bool = True, campaign: str | None = None) -> LoggedDecision:
    """A decision row as the engine would write it."""
    pmf = {"coupon": 0.75, "installment": 0.25} if action else {}
    decision = Decision(event_id=event_id, user_id=user_id, action=action,
                        probability=pmf.get(action or "", 1.0), pmf=pmf, personalized=learnable,
                        control=action is None, reason="test", policy_version="abc.0",
                        eligible=list(pmf), ts=ts, campaign=campaign, learnable=learnable)
    return LoggedDecision(decision=decision, tier="gold", item_price=40.0,
                          features={"shared": {"S": ["tier=gold"]}, "arms": {}})


def reward(event_id: str, value: float = 10.0, *, ts: datetime = T0) -> RewardRow:
    return RewardRow(event_id=event_id, converted=True, revenue=value, reward=value,
                     source="feedback", ts=ts, learnable=True)


@pytest.fixture
def log(tmp_path: Path, storage):
    log = DecisionLog(storage.target(tmp_path / "log.sqlite"))
    yield log
    log.close()


def test_decision_round_trip_and_wal(log: DecisionLog):
    log.record_decision(logged("e1"))
    back = log.get_decision("e1")
    assert back == logged("e1")
    assert log.get_decision("nope") is None
    if log.conn.dialect == "sqlite":
        mode = log.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    assert log.conn.schema_version("decision_log") == 1


def test_rewards_are_counted_once_in_log_order(log: DecisionLog):
    for i in range(3):
        log.record_decision(logged(f"e{i}"))
    first = log.insert_reward(reward("e1"))
    assert log.insert_reward(reward("e1", 99.0)) is None  # duplicate: ignored
    second = log.insert_reward(reward("e0"))
    assert first is not None and second is not None and second > first
    rows = log.rewards_after(0)
    assert [(r.seq, r.event_id, r.reward) for r in rows] == [(first, "e1", 10.0),
                                                             (second, "e0", 10.0)]
    assert [r.event_id for r in log.rewards_after(first)] == ["e0"]
    assert log.last_seq() == second


def test_a_second_connection_sees_committed_writes_at_once(tmp_path: Path, storage):
    writer = DecisionLog(storage.target(tmp_path / "log.sqlite"))
    reader = DecisionLog(storage.target(tmp_path / "log.sqlite"))
    writer.record_decision(logged("e1"))
    writer.insert_reward(reward("e1"))
    assert reader.get_decision("e1") is not None and reader.last_seq() == 1
    assert reader.insert_reward(reward("e1")) is None  # the UNIQUE holds across connections
    writer.close()
    reader.close()


def test_sweep_gives_the_default_reward_once_after_the_window(log: DecisionLog):
    log.record_decision(logged("old", ts=T0))
    log.record_decision(logged("answered", ts=T0))
    log.record_decision(logged("fresh", ts=T0 + timedelta(days=6)))
    log.insert_reward(reward("answered"))
    window = timedelta(days=7)
    assert log.sweep(T0 + timedelta(days=7, hours=1), window, 0.0) == 1
    assert log.sweep(T0 + timedelta(days=7, hours=2), window, 0.0) == 0
    stored = log.get_reward("old")
    assert (stored.reward, stored.source, stored.learnable) == (0.0, "timeout", True)
    assert (stored.converted, stored.revenue) == (False, 0.0)
    assert log.sweep(T0 + timedelta(days=14), window, 0.0) == 1  # "fresh" closes later


def test_export_and_erase_cover_decisions_rewards_and_late_feedback(log: DecisionLog):
    log.record_decision(logged("e1"))
    log.record_decision(logged("e2"))
    log.record_decision(logged("x", "other"))
    log.insert_reward(reward("e1"))
    assert log.record_late("e2", True, 5.0, 5.0, T0 + timedelta(days=9))
    assert not log.record_late("e2", True, 5.0, 5.0, T0 + timedelta(days=9))
    exported = log.export_user("u1")
    assert [e["event_id"] for e in exported] == ["e1", "e2"]
    assert exported[0]["reward"]["reward"] == 10.0 and exported[1]["late_feedback"] is not None
    assert log.erase_user("u1") == 2
    assert log.export_user("u1") == []
    assert log.count_rewards() == 0 and log.count_decisions() == 1
    left = log.conn.execute("SELECT count(*) FROM late_feedback").fetchone()[0]
    assert left == 0


def test_scratch_log_commits_in_batches_and_on_close(tmp_path: Path):
    scratch = DecisionLog(tmp_path / "s.sqlite", durable=False)
    scratch.record_decision(logged("e1"))
    other = sqlite3.connect(tmp_path / "s.sqlite")
    assert other.execute("SELECT count(*) FROM decisions").fetchone()[0] == 0
    scratch.close()
    assert other.execute("SELECT count(*) FROM decisions").fetchone()[0] == 1
    other.close()
