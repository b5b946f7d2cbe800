"""The storage interface on both backends: migrations, the audit chain, ordered rewards."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from decisions.decision_log import REWARD_LOCK, DecisionLog, RewardRow
from nextbest.audit import AuditLog
from nextbest.config import load_settings
from nextbest.errors import ConfigError
from nextbest.storage import location, open_database, translate

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def test_migrations_apply_each_step_once_and_refuse_a_newer_schema(tmp_path: Path, storage):
    db = open_database(storage.target(tmp_path / "m.sqlite"))
    steps = ["CREATE TABLE things (id INTEGER PRIMARY KEY AUTOINCREMENT, x REAL NOT NULL)"]
    assert db.migrate("things", steps) == 1
    db.execute("INSERT INTO things (x) VALUES (?)", (1.5,))
    assert db.migrate("things", steps) == 1  # nothing applied twice (CREATE would fail)
    steps.append("ALTER TABLE things ADD COLUMN note TEXT")
    assert db.migrate("things", steps) == 2
    assert db.execute("SELECT x, note FROM things").fetchall() == [(1.5, None)]
    assert db.schema_version("things") == 2 and db.schema_version("other") == 0
    with pytest.raises(ConfigError, match="things schema is at version 2, newer"):
        db.migrate("things", steps[:1])
    db.close()


def test_a_transaction_rolls_back_on_an_error(tmp_path: Path, storage):
    db = open_database(storage.target(tmp_path / "t.sqlite"))
    db.migrate("t", ["CREATE TABLE t (k TEXT PRIMARY KEY)"])
    with pytest.raises(ZeroDivisionError), db.transaction():
        db.execute("INSERT INTO t (k) VALUES (?)", ("a",))
        _ = 1 / 0
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert not db.in_transaction
    db.close()


def test_sqlite_dialect_is_translated_for_postgresql():
    assert translate("INSERT OR IGNORE INTO t (a) VALUES (?)") == \
        "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    assert translate("SELECT 1 WHERE a LIKE 'x%?' AND b = ?") == \
        "SELECT 1 WHERE a LIKE 'x%%?' AND b = %s"


def test_storage_url_must_be_postgresql(tmp_path: Path):
    with pytest.raises(ConfigError, match="storage.url: Value error, must be a postgresql:// "):
        load_settings(None, environ={"NEXTBEST__STORAGE__URL": "mysql://x/y"})
    settings = load_settings(None, environ={"NEXTBEST__PATHS__DATA_DIR": str(tmp_path)})
    assert location(settings, "decision_log") == tmp_path / "decisions.sqlite"


def test_the_audit_chain_detects_a_changed_and_a_deleted_entry(tmp_path: Path, storage):
    audit = AuditLog(storage.target(tmp_path / "audit.sqlite"), "salt")
    for i in range(3):
        audit.append("export", actor="cli:test", user_id=f"u{i}", details={"i": i})
    other = AuditLog(storage.target(tmp_path / "audit.sqlite"), "salt")  # a second writer
    entry = other.append("erase", actor="key:1", user_id="u0")
    assert entry.seq == 4 and entry.prev_hash == audit.entries(after=2)[0].hash
    assert audit.verify().ok and audit.verify().entries == 4
    assert [e.seq for e in audit.entries(user_id="u0")] == [1, 4]

    audit.conn.execute("UPDATE audit SET details = ? WHERE seq = 2", ('{"i": 9}',))
    assert audit.verify().problem == "entry 2 was changed"
    audit.conn.execute("UPDATE audit SET details = ? WHERE seq = 2", ('{"i": 1}',))
    audit.conn.execute("DELETE FROM audit WHERE seq = 4")
    assert audit.verify().problem == "entries 4 to 4 are missing"
    audit.close()
    other.close()


def _reward(event_id: str) -> RewardRow:
    return RewardRow(event_id=event_id, converted=False, revenue=0.0, reward=0.0,
                     source="feedback", ts=T0, learnable=False)


def test_concurrent_reward_writers_reach_a_tailing_reader_in_order_without_gaps(
        tmp_path: Path, storage):
    """Writers in threads (own connections) and one transaction rolled back mid-way: a reader
    tailing ``seq > last`` sees every committed reward exactly once, in ``seq`` order."""
    target = storage.target(tmp_path / "log.sqlite")
    writers, per_writer = 4, 60
    reader = DecisionLog(target)
    seen: list[int] = []
    done = threading.Event()

    def write(w: int) -> None:
        log = DecisionLog(target)
        for i in range(per_writer):
            log.insert_reward(_reward(f"w{w}-{i}"))
            if i == per_writer // 2 and log.conn.dialect == "postgresql":
                log.conn.begin(REWARD_LOCK)  # takes a seq, then rolls back: a hole
                log.conn.insert("INSERT INTO rewards (event_id, converted, revenue, reward, "
                                "source, ts, learnable) VALUES (?, 0, 0, 0, 'feedback', 0, 0)",
                                (f"rolled-back-{w}",), key="seq")
                log.conn.rollback()
        log.close()

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()
            rows = reader.conn.execute("SELECT seq FROM rewards WHERE seq > ? ORDER BY seq",
                                       (last,)).fetchall()
            for (seq,) in rows:
                seen.append(seq)
                last = seq
            if finished and not rows:
                return

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    follower = threading.Thread(target=tail)
    follower.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    follower.join()
    committed = [r[0] for r in reader.conn.execute("SELECT seq FROM rewards ORDER BY seq")]
    assert len(committed) == writers * per_writer
    assert seen == committed  # every row once, in order: none passed while uncommitted
    if storage.name == "postgresql":
        assert committed[-1] > len(committed)  # the rolled-back seqs are holes
    reader.close()
