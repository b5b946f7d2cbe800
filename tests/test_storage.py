"""The storage interface on both backends: migrations, the audit chain, ordered rewards."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from decisions.decision_log import REWARD_LOCK, DecisionLog, RewardRow
from nextbest import storage as storage_module
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


def _fill(db, rows: int, start: int = 0) -> None:
    """One commit of ``rows`` rows of ~2 kB (two rows a 4 kB page)."""
    db.migrate("w", ["CREATE TABLE w (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"])
    with db.transaction():
        for k in range(start, start + rows):
            db.execute("INSERT INTO w (k, v) VALUES (?, ?)", (k, "x" * 2000))


def _wait_for_rounds(checkpointer, rounds: int) -> None:
    """Until the checkpointer thread has run ``rounds`` more times (bounded)."""
    target = checkpointer.checkpoints + rounds
    pause = threading.Event()
    for _ in range(500):
        if checkpointer.checkpoints >= target:
            return
        pause.wait(0.02)
    raise AssertionError("the checkpointer thread did not run")


async def _rounds_on(checkpointer, rounds: int) -> None:
    """:func:`_wait_for_rounds` that lets the event loop (and its gate) run meanwhile."""
    target = checkpointer.checkpoints + rounds
    for _ in range(3_000):
        if checkpointer.checkpoints >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the checkpointer thread did not run within 30 s")


def test_a_checkpointer_thread_copies_the_wal_and_the_writer_still_bounds_it(
        tmp_path: Path, monkeypatch):
    """With ``checkpoint_seconds`` the writing connection's commits do not checkpoint below
    BOUNDED_WAL_PAGES (the main file stays at its first pages) until the thread does; past
    it the connection checkpoints itself, so the WAL cannot grow without bound. Without a
    checkpointer SQLite checkpoints every 1,000 pages."""
    monkeypatch.setattr(storage_module, "BOUNDED_WAL_PAGES", 2_000)
    idle = open_database(tmp_path / "idle.sqlite", checkpoint_seconds=3600)
    _fill(idle, 3000)  # ~1,500 pages: past SQLite's 1,000, below the bound
    assert (tmp_path / "idle.sqlite").stat().st_size < 64 * 1024
    assert idle.checkpointer is not None and idle.checkpointer.checkpoints == 0
    _fill(idle, 3000, start=3000)  # past the bound: the writer's own checkpoint
    assert (tmp_path / "idle.sqlite").stat().st_size > 10_000_000
    assert idle.checkpointer.checkpoints == 0
    idle.close()

    every = open_database(tmp_path / "every.sqlite", checkpoint_seconds=0.02)
    _fill(every, 3000)
    assert every.checkpointer is not None
    _wait_for_rounds(every.checkpointer, 2)  # a whole round after the writes
    assert (tmp_path / "every.sqlite").stat().st_size > 5_000_000
    every.close()

    plain = open_database(tmp_path / "plain.sqlite")  # SQLite's own checkpoints
    _fill(plain, 3000)
    assert plain.checkpointer is None
    assert (tmp_path / "plain.sqlite").stat().st_size > 5_000_000
    plain.close()



def test_a_write_on_the_loop_awaits_a_thread_holding_the_gate_and_the_loop_runs_meanwhile(
        tmp_path: Path):
    """While a thread holds a file's gate, a write through ``gate.writing()`` awaits it: other
    tasks on the loop keep running, and the write runs once the thread lets go."""
    db = open_database(tmp_path / "g.sqlite")
    db.migrate("g", ["CREATE TABLE g (k INTEGER PRIMARY KEY)"])
    gate = db.gate
    assert gate is open_database(tmp_path / "g.sqlite").gate  # one gate per file
    held, release = threading.Event(), threading.Event()
    order: list[str] = []

    def thread() -> None:
        with gate.held():
            held.set()
            assert release.wait(10), "the event loop did not run while the gate was held"
            order.append("thread done")

    async def write() -> None:
        async with gate.writing():
            db.execute("INSERT INTO g (k) VALUES (1)")
            order.append("written")

    async def main() -> None:
        holder = threading.Thread(target=thread)
        holder.start()
        await asyncio.to_thread(held.wait, 10)
        writer = asyncio.create_task(write())
        for _ in range(3):  # the loop turns while the writer awaits the gate
            await asyncio.sleep(0)
        assert gate.waits == 1 and not writer.done()
        order.append("loop ran")
        release.set()
        await asyncio.wait_for(writer, 10)
        holder.join()

    asyncio.run(main())
    assert order == ["loop ran", "thread done", "written"]
    assert db.execute("SELECT count(*) FROM g").fetchone()[0] == 1
    db.close()


def test_the_checkpointer_restarts_the_wal_so_the_loops_writes_never_checkpoint(
        tmp_path: Path, monkeypatch, caplog):
    """Past RESTART_WAL_PAGES the thread closes the gate, copies the rest and restarts the
    WAL: with the writer's own checkpoint out of reach the WAL stays near that length while
    thousands of commits go on, and no row is lost. The thread syncs the file after each
    round that copied and the WAL before the gate closes (the loop's writes go on
    meanwhile), never with the gate closed by it."""
    monkeypatch.setattr(storage_module, "RESTART_WAL_PAGES", 400)
    monkeypatch.setattr(storage_module, "BOUNDED_WAL_PAGES", 1_000_000)
    monkeypatch.setattr(storage_module, "LONG_HOLD_MS", 0.0)  # every hold is "long" here
    path = tmp_path / "r.sqlite"
    synced: list[tuple[str, bool]] = []  # (file, the syncing thread held the gate)
    restart_synced: list[str] = []  # the files _restart itself synced
    real_flush = storage_module.flush

    def flush(name: Path) -> None:
        owner = storage_module.write_gate(path)._owner
        synced.append((name.name, owner == threading.get_ident()))
        if sys._getframe(1).f_code.co_name == "_restart":
            restart_synced.append(name.name)
        real_flush(name)

    monkeypatch.setattr(storage_module, "flush", flush)
    db = open_database(path, checkpoint_seconds=0.01)
    db.migrate("w", ["CREATE TABLE w (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"])
    assert db.checkpointer is not None and db.checkpointer.restart_pages == 400
    wal = Path(f"{path}-wal")
    longest = written = 0
    pace = 100  # commits (pages) a round of the thread

    async def main() -> None:
        nonlocal longest, written
        # ~1 page a commit: at least 30 times the restart length, and (on a busy machine
        # whose thread runs late) on until the thread has restarted the WAL three times.
        # The writer keeps pace with the thread's rounds (one per `pace` commits), as the
        # service's does by far: unpaced, a disk whose sync takes 0.5 s (a CI machine's) let
        # this loop write 10,000 pages during one round, and the WAL's length said how slow
        # the disk was, not whether the restarts reuse it.
        while written < 12_000 or (db.checkpointer.restarts < 3 and written < 40_000):
            async with db.gate.writing():
                db.execute("INSERT INTO w (k, v) VALUES (?, ?)", (written, "x" * 2000))
            written += 1
            longest = max(longest, wal.stat().st_size)
            if written % pace == 0:
                await _rounds_on(db.checkpointer, 1)
            await asyncio.sleep(0)

    asyncio.run(main())
    assert db.checkpointer.restarts >= 3
    assert {name for name, _ in synced} == {"r.sqlite", "r.sqlite-wal"}
    names = [name for name, _ in synced]
    assert names.count("r.sqlite-wal") >= db.checkpointer.restarts  # once before each
    # each round syncs what it copied, so a restart's sync is short: the file is synced by
    # the rounds (the one calling the restart has just done it), never by the restart
    assert names.count("r.sqlite") >= db.checkpointer.restarts
    assert set(restart_synced) == {"r.sqlite-wal"}
    # a restart that held the writes long says so, with how long
    assert db.checkpointer.longest_hold_ms > 0.0
    warned = [r.getMessage() for r in caplog.records if "held the log's writes" in r.getMessage()]
    assert warned and all(m.startswith("the WAL restart of r.sqlite held") for m in warned)
    assert not any(held for _, held in synced)
    # without restarts the WAL would hold every commit (12,000 pages); paced, it is
    # restarted near RESTART_WAL_PAGES plus the rounds' few hundred
    assert longest < 4 * 400 * (4096 + 24)
    assert db.execute("SELECT count(*), sum(k) FROM w").fetchone() == (
        written, (written - 1) * written // 2)
    db.close()


def test_connections_to_one_file_share_one_checkpointer_thread(tmp_path: Path):
    """The service's decision points each open the decision log: one thread copies and
    restarts its WAL for all of them, and stops when the last of them closes."""
    path = tmp_path / "s.sqlite"
    first = open_database(path, checkpoint_seconds=3600)
    second = open_database(path, checkpoint_seconds=3600)
    other = open_database(tmp_path / "o.sqlite", checkpoint_seconds=3600)
    assert first.checkpointer is not None and first.checkpointer is second.checkpointer
    assert other.checkpointer is not None and other.checkpointer is not first.checkpointer
    threads = [t for t in threading.enumerate() if t.name == "wal-checkpoint:s.sqlite"]
    assert len(threads) == 1
    first.close()
    assert threads[0].is_alive()  # the second connection still writes
    second.close()
    threads[0].join(5)
    assert not threads[0].is_alive()
    third = open_database(path, checkpoint_seconds=3600)  # a new thread for a new user
    assert third.checkpointer is not None and third.checkpointer is not first.checkpointer
    third.close()
    other.close()


def test_flushing_a_file_keeps_this_processs_locks_on_it(tmp_path: Path) -> None:
    """The checkpointer syncs the decision log from its thread. A descriptor of the file
    opened and closed in this process would drop the shared lock its connections hold
    (POSIX locks belong to the process): another process closing its connection would then
    take itself for the file's last user, checkpoint and delete the WAL this process still
    writes, and its next commits would go where no other process reads them."""
    path = tmp_path / "l.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (k INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    storage_module.flush(path)
    count = [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "print(c.execute('SELECT count(*) FROM t').fetchone()[0]); c.close()", str(path)]
    assert subprocess.run(count, capture_output=True, text=True, timeout=60).stdout == "1\n"
    assert Path(f"{path}-wal").exists()  # the other process knew it was not the last
    conn.execute("INSERT INTO t VALUES (2)")
    assert subprocess.run(count, capture_output=True, text=True, timeout=60).stdout == "2\n"
    conn.close()


def test_the_checkpointer_syncs_only_what_a_round_copied(tmp_path: Path, monkeypatch) -> None:
    """Each round syncs the file when it copied pages into it, and an idle log's rounds
    sync nothing (each sync is a process)."""
    path = tmp_path / "i.sqlite"
    synced: list[str] = []
    monkeypatch.setattr(storage_module, "flush", lambda name: synced.append(name.name))
    db = open_database(path, checkpoint_seconds=0.01)
    db.migrate("w", ["CREATE TABLE w (k INTEGER PRIMARY KEY)"])
    db.execute("INSERT INTO w (k) VALUES (1)")
    deadline = time.monotonic() + 10
    while not synced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert synced == ["i.sqlite"]
    rounds = db.checkpointer.checkpoints
    while db.checkpointer.checkpoints < rounds + 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert db.checkpointer.checkpoints >= rounds + 20 and synced == ["i.sqlite"]
    db.execute("INSERT INTO w (k) VALUES (2)")
    while len(synced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert synced == ["i.sqlite", "i.sqlite"]
    db.close()
