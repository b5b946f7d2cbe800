"""The decision log: round trips, rewards once, sweeping, several connections, privacy."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from decisions.decision_log import (
    PAGE_SIZE,
    SCHEMA_STEPS,
    Decision,
    DecisionLog,
    LoggedDecision,
    RewardRow,
)

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
    assert log.conn.schema_version("decision_log") == len(SCHEMA_STEPS)


def test_a_new_sqlite_log_has_the_page_size_chosen_and_an_old_one_keeps_its_own(
        tmp_path: Path):
    """A new log is created with PAGE_SIZE pages; a log made with another size keeps it when
    opened again, and both write and read the same (a row bigger than a page too)."""
    new = DecisionLog(tmp_path / "new.sqlite")
    old_path = tmp_path / "old.sqlite"
    with sqlite3.connect(old_path) as made:  # a log file made with 1,024-byte pages
        made.execute("PRAGMA page_size=1024")
        made.execute("CREATE TABLE t (x)")
    old = DecisionLog(old_path)
    try:
        assert new.conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        assert old.conn.execute("PRAGMA page_size").fetchone()[0] == 1024 != PAGE_SIZE
        big = logged("e1").model_copy(update={"features": {"shared": {"S": ["x" * 5000]}}})
        for each in (new, old):
            each.record_decision(big)
            assert each.get_decision("e1") == big
    finally:
        new.close()
        old.close()


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


def test_a_sweep_from_a_thread_holds_the_gate_the_loops_writes_pass(tmp_path: Path):
    """The service sweeps in a worker thread: it takes the SQLite file's gate for its write,
    so it waits for the write the event loop is making and the loop's next writes await it
    (instead of sleeping in SQLite's busy handler on the loop). Sweeping on the thread that
    holds the gate already needs nothing more."""
    path = tmp_path / "log.sqlite"
    service, sweeper = DecisionLog(path), DecisionLog(path)
    assert service.gate is sweeper.gate
    service.record_decision(logged("old", ts=T0))
    window, later = timedelta(days=7), T0 + timedelta(days=8)
    swept: list[int] = []
    thread = threading.Thread(target=lambda: swept.append(sweeper.sweep(later, window, 0.0)))

    async def main() -> None:
        async with service.gate.writing():
            thread.start()
            thread.join(0.3)
            assert thread.is_alive() and service.get_reward("old") is None  # it waits
        await asyncio.to_thread(thread.join, 10)
        async with service.gate.writing():  # on the holding thread: no deadlock
            assert service.sweep(later, window, 0.0) == 0

    asyncio.run(main())
    assert swept == [1] and service.get_reward("old").source == "timeout"
    service.close()
    sweeper.close()


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


# -- running totals, feedback senders, migration -------------------------------------------

def full_scan_summary(log: DecisionLog) -> list[dict]:
    """The per (tier, action) totals recomputed from every row (what arm_stats must equal)."""
    rows = log.conn.execute(
        "SELECT d.tier, d.action, count(*), count(r.reward), coalesce(sum(r.reward), 0), "
        "sum(d.learnable) FROM decisions d LEFT JOIN rewards r ON r.event_id = d.event_id "
        "GROUP BY d.tier, d.action ORDER BY d.tier, coalesce(d.action, '')").fetchall()
    return [{"tier": r[0], "action": r[1], "decisions": r[2], "rewards": r[3],
             "reward_sum": r[4], "learnable": r[5]} for r in rows]


def fill(log: DecisionLog, n: int, prefix: str = "e") -> None:
    """``n`` decisions over two users and three actions, every other one rewarded."""
    for i in range(n):
        log.record_decision(logged(f"{prefix}{i}", user_id=f"u{i % 2}",
                                   action=("coupon", "installment", None)[i % 3],
                                   learnable=i % 3 != 2))
        if i % 2 == 0:
            log.insert_reward(reward(f"{prefix}{i}", float(i)))


def test_arm_summary_equals_a_full_scan_through_rewards_and_erasure(tmp_path: Path):
    log = DecisionLog(tmp_path / "log.sqlite")
    other = DecisionLog(tmp_path / "log.sqlite")  # another process writing the same file
    fill(log, 30)
    fill(other, 7, prefix="x")
    log.sweep(T0 + timedelta(days=30), timedelta(days=7), -1.0)  # timeouts count as rewards
    assert log.arm_summary() == full_scan_summary(log)
    assert sum(r["rewards"] for r in log.arm_summary()) == log.count_rewards() == 37
    assert log.erase_user("u0") > 0
    assert log.arm_summary() == full_scan_summary(log)
    # A decision deleted before its reward takes the reward's share out with it.
    log.conn.execute("DELETE FROM decisions WHERE event_id = 'e1'")
    log.conn.execute("DELETE FROM rewards WHERE event_id = 'e1'")
    assert log.arm_summary() == full_scan_summary(log)
    other.close()
    log.close()


def vm_steps(conn: sqlite3.Connection, call) -> int:
    """SQLite virtual machine instructions executed by ``call()`` (rows read show up as
    steps: a query that scans the log costs steps in proportion to its rows)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        call()
    finally:
        conn.set_progress_handler(None, 1)
    return steps[0]


def test_arm_summary_does_not_read_the_log(tmp_path: Path):
    small, big = DecisionLog(tmp_path / "small.sqlite"), DecisionLog(tmp_path / "big.sqlite")
    fill(small, 30)
    fill(big, 3000)
    assert len(small.arm_summary()) == len(big.arm_summary()) == 3
    assert vm_steps(big.conn.conn, big.arm_summary) == \
        vm_steps(small.conn.conn, small.arm_summary)
    plan = " ".join(str(row) for row in big.conn.execute(
        "EXPLAIN QUERY PLAN SELECT tier, action, decisions, rewards, reward_sum, learnable "
        "FROM arm_stats WHERE decisions > 0 ORDER BY tier, action"))
    assert "decisions" not in plan.replace("decisions >", "") and "rewards" not in plan
    small.close()
    big.close()


def test_feedback_keeps_the_key_that_sent_it(log: DecisionLog):
    log.record_decision(logged("e1"))
    log.record_decision(logged("e2"))
    log.insert_reward(reward("e1").model_copy(update={"key_id": "shop-frontend"}))
    log.record_late("e2", True, 5.0, 5.0, T0, key_id="batch-import")
    assert log.export_user("u1")[0]["reward"]["key_id"] == "shop-frontend"
    assert log.export_user("u1")[1]["late_feedback"]["key_id"] == "batch-import"


OLD_SCHEMA = """
CREATE TABLE decisions (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, ts REAL NOT NULL,
    tier TEXT NOT NULL, features TEXT NOT NULL, eligible TEXT NOT NULL, action TEXT,
    probability REAL NOT NULL, pmf TEXT NOT NULL, policy_version TEXT NOT NULL,
    personalized INTEGER NOT NULL, control INTEGER NOT NULL, learnable INTEGER NOT NULL,
    campaign TEXT, item_price REAL, reason TEXT NOT NULL);
CREATE TABLE rewards (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    converted INTEGER NOT NULL, revenue REAL NOT NULL, reward REAL NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('feedback', 'timeout')), ts REAL NOT NULL,
    learnable INTEGER NOT NULL);
CREATE TABLE late_feedback (event_id TEXT PRIMARY KEY, converted INTEGER NOT NULL,
    revenue REAL NOT NULL, reward REAL NOT NULL, ts REAL NOT NULL);
INSERT INTO decisions VALUES ('old1', 'u9', 1.0, 'gold', '{}', '["coupon"]', 'coupon', 1.0,
    '{"coupon": 1.0}', 'abc.0', 1, 0, 1, NULL, NULL, 'test');
INSERT INTO decisions VALUES ('old2', 'u9', 2.0, 'gold', '{}', '[]', NULL, 1.0, '{}', 'abc.0',
    0, 1, 0, NULL, NULL, 'control');
INSERT INTO rewards (event_id, converted, revenue, reward, source, ts, learnable)
    VALUES ('old1', 1, 30.0, 25.0, 'feedback', 3.0, 1);
"""


def test_a_log_of_the_old_schema_is_migrated_when_opened(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    log = DecisionLog(path)
    assert log.arm_summary() == full_scan_summary(log) == [
        {"tier": "gold", "action": None, "decisions": 1, "rewards": 0, "reward_sum": 0,
         "learnable": 0},
        {"tier": "gold", "action": "coupon", "decisions": 1, "rewards": 1, "reward_sum": 25.0,
         "learnable": 1}]
    log.record_decision(logged("new1", user_id="u9"))
    log.insert_reward(reward("new1").model_copy(update={"key_id": "k1"}))
    assert log.get_reward("old1") is not None
    keys = [(d["reward"] or {}).get("key_id", "no reward") for d in log.export_user("u9")]
    assert keys == [None, "no reward", "k1"]
    log.close()
    again = DecisionLog(path)  # opening a migrated log changes nothing
    assert again.arm_summary() == full_scan_summary(again)
    again.close()
