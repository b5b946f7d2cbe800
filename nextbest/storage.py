"""One storage interface, two backends: SQLite files (the default) or PostgreSQL.

The decision log, the campaign store (events, outbox, ...), the audit log and, on
PostgreSQL, the bandit checkpoints keep their rows through a :class:`Database`: the stores
write their SQL once, in SQLite's dialect with ``?`` placeholders, and the PostgreSQL backend
translates the few things that differ (placeholders, ``INSERT OR IGNORE``, the
auto-increment key, floating-point and binary column types). Each store's SQL stays in its
own module.

- :class:`SqliteDatabase`: one connection to a file in WAL mode (several processes on one
  host; ``busy_timeout`` makes writers wait). Behaviour exactly as before this module.
- :class:`PostgresDatabase`: statements run on connections borrowed from a process-wide
  ``psycopg_pool`` pool per URL (autocommit, like the SQLite connections);
  :meth:`~Database.transaction` pins one connection until commit, and takes a named
  transaction-scoped advisory lock when asked (how writers of one ordered log serialise).

Schemas are versioned: each store passes its migration steps to :meth:`Database.migrate`,
which records the version per store in ``schema_versions`` and applies the missing steps
on start, under one lock, so two processes starting together upgrade once. A step, once
released, is never edited: a change is a new step appended to the list.

Which backend: ``storage.url`` (``postgresql://...``) puts every store into that database;
unset, each store is its SQLite file under ``paths`` (:func:`location`).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

from nextbest.config import Settings
from nextbest.errors import ConfigError, MissingComponent

log = logging.getLogger(__name__)

Target = Path | str  # a SQLite file, or a postgresql:// URL
Place = Literal["decision_log", "campaign_store", "audit_log"]
Dialect = Literal["sqlite", "postgresql"]
_SCHEMA_VERSIONS = ("CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, "
                    "version INTEGER NOT NULL, applied REAL NOT NULL)")


def is_postgres(target: Target) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def location(settings: Settings, place: Place) -> Target:
    """Where a store lives: ``storage.url`` when set, else its SQLite file under ``paths``."""
    return settings.storage.url or Path(getattr(settings.paths, place))


def exists(target: Target) -> bool:
    """Whether the store at ``target`` may hold rows (a PostgreSQL database always may)."""
    return is_postgres(target) or Path(target).exists()


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def split_statements(script: str, dialect: Dialect = "postgresql") -> list[str]:
    """The statements of a ``;``-separated script (no ``;`` inside literals, as here); a
    trigger body's ``;`` does not end its statement (SQLite's ``BEGIN ... END``, a
    PostgreSQL function's ``$$ ... $$``)."""
    if dialect != "sqlite":
        statements, pending = [], ""
        for part in script.split(";"):
            pending = f"{pending};{part}" if pending else part
            if pending.count("$$") % 2 == 0:
                statements.append(pending.strip())
                pending = ""
        return [s for s in [*statements, pending.strip()] if s]
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return [*out, pending.strip()] if pending.strip() else out


class Database:
    """What every store sees: ``execute``, ``insert``, transactions and migrations."""

    dialect: Dialect

    @property
    def gate(self) -> WriteGate:
        """The gate an event loop's writes to this database pass (:class:`WriteGate`): the
        file's when a thread may need it to itself, else one no thread ever holds."""
        return OPEN_GATE

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; a cursor-like result (``fetchone``, ``fetchall``, iteration,
        ``rowcount``, ``description``). ``BEGIN [IMMEDIATE]``, ``COMMIT`` and ``ROLLBACK``
        statements work on both backends."""
        raise NotImplementedError

    def insert(self, sql: str, args: Sequence[Any], key: str) -> int | None:
        """Run an INSERT; the new row's ``key`` (an auto-increment column), or None when
        nothing was inserted (``INSERT OR IGNORE`` found the row)."""
        raise NotImplementedError

    def begin(self, lock: str | None = None) -> None:
        """Start a write transaction; ``lock`` names an advisory lock held until it ends
        (SQLite's ``BEGIN IMMEDIATE`` already excludes every other writer)."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    @property
    def in_transaction(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def ddl(self, statement: str) -> str:
        """A CREATE statement written for SQLite, in this backend's types."""
        return statement

    def group_concat(self, expression: str) -> str:
        """SQL aggregating ``expression`` into one comma-separated text."""
        return f"group_concat({expression})"

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        """``with db.transaction():`` groups statements into one commit (rolled back on an
        exception)."""
        self.begin(lock)
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def migrate(self, store: str, steps: Sequence[str | Mapping[str, str]]) -> int:
        """Bring ``store``'s tables to ``len(steps)``: apply each step not yet recorded in
        ``schema_versions``, in order, in one transaction; the version now."""
        with self.transaction(lock="nextbest:schema"):
            self.execute(_SCHEMA_VERSIONS)
            row = self.execute("SELECT version FROM schema_versions WHERE store = ?",
                               (store,)).fetchone()
            current = int(row[0]) if row else 0
            if current > len(steps):
                raise ConfigError(f"the {store} schema is at version {current}, newer than "
                                  f"this nextbest knows ({len(steps)}): upgrade nextbest")
            for step in steps[current:]:
                if isinstance(step, Mapping):  # a step written per dialect
                    step = step[self.dialect]
                for statement in split_statements(step, self.dialect):
                    self.execute(self.ddl(statement))
            if current < len(steps):
                self.execute("INSERT INTO schema_versions (store, version, applied) VALUES "
                             "(?, ?, ?) ON CONFLICT (store) DO UPDATE SET version = "
                             "excluded.version, applied = excluded.applied",
                             (store, len(steps), time.time()))
        return len(steps)

    def schema_version(self, store: str) -> int:
        """The recorded schema version of ``store`` (0: never migrated)."""
        row = self.execute("SELECT version FROM schema_versions WHERE store = ?",
                           (store,)).fetchone()
        return int(row[0]) if row else 0


class SqliteDatabase(Database):
    """One SQLite connection to a WAL file (callers serialise access to it).

    ``checkpoint_seconds``: copy the WAL into the main file that often from a thread of its
    own (:class:`WalCheckpointer`), which also restarts the WAL while the file's
    :attr:`gate` is closed, so this connection's commits never checkpoint unless that
    thread falls behind. ``page_size``: the page size of a file this connection creates
    (SQLite's default is 4,096 bytes; an existing file keeps the one it has)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, timeout_seconds: float = 30.0,
                 synchronous: str = "NORMAL", checkpoint_seconds: float | None = None,
                 page_size: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=timeout_seconds, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout={int(timeout_seconds * 1000)}")
        if page_size is not None:  # a new file's only: an existing one keeps its own
            self.conn.execute(f"PRAGMA page_size={int(page_size)}")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        # Erasure leaves no byte behind: freed content is overwritten (nextbest/sqlite_wipe.py).
        self.conn.execute("PRAGMA secure_delete=ON")
        self._gate = write_gate(self.path)
        self.checkpointer: WalCheckpointer | None = None
        if checkpoint_seconds is not None:
            self.conn.execute(f"PRAGMA wal_autocheckpoint={BOUNDED_WAL_PAGES}")
            self.checkpointer = WalCheckpointer.shared(self.path, checkpoint_seconds,
                                                       timeout_seconds=timeout_seconds)

    @property
    def gate(self) -> WriteGate:
        return self._gate

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, args)

    def insert(self, sql: str, args: Sequence[Any], key: str) -> int | None:
        cursor = self.conn.execute(sql, args)
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def begin(self, lock: str | None = None) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.conn.close()


class WriteGate:
    """Who may write one SQLite file of this process now: the event loop, or a thread that
    needs a moment with no writer (:class:`WalCheckpointer` restarting the WAL).

    The loop never blocks on it: :meth:`writing` takes the gate when it is free and awaits
    its reopening when a thread holds it, so requests that do not write (``/score``) go on
    being answered meanwhile. A thread :meth:`held` waits at most for the one synchronous
    write in progress. Code that writes without the gate (a worker thread, a CLI) is still
    correct: SQLite's own lock makes it wait, only it waits by sleeping.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = threading.Lock()  # guards _waiters against the releasing thread
        self._waiters: list[asyncio.Future[None]] = []
        self._owner: int | None = None  # the thread holding the gate
        self.waits = 0  # writes on the loop that found the gate held and awaited it

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """On the event loop, around synchronous writes (nothing awaited inside): enter once
        no thread holds the gate."""
        while not self._lock.acquire(blocking=False):
            reopened = asyncio.get_running_loop().create_future()
            with self._waiting:
                if not self._lock.locked():  # released since the try: try again
                    continue
                self._waiters.append(reopened)
            self.waits += 1
            await reopened
        self._owner = threading.get_ident()
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def held(self) -> Iterator[None]:
        """From a thread: no write through :meth:`writing` runs until this ends (within
        what the same thread holds already, nothing more to wait for)."""
        if self._owner == threading.get_ident():
            yield
            return
        self._lock.acquire()
        self._owner = threading.get_ident()
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        """Open the gate and wake whoever awaits it (on any loop, from any thread)."""
        self._owner = None
        self._lock.release()
        with self._waiting:
            waiters, self._waiters = self._waiters, []
        for reopened in waiters:
            with suppress(RuntimeError):  # its loop has closed: nobody waits any more
                reopened.get_loop().call_soon_threadsafe(_wake, reopened)


def _wake(reopened: asyncio.Future[None]) -> None:
    if not reopened.done():
        reopened.set_result(None)


OPEN_GATE = WriteGate()  # PostgreSQL's: no thread here ever holds it
_GATES: weakref.WeakValueDictionary[Path, WriteGate] = weakref.WeakValueDictionary()
_GATES_LOCK = threading.Lock()
_CHECKPOINTERS: dict[Path, WalCheckpointer] = {}
_CHECKPOINTERS_LOCK = threading.Lock()


def _file_key(path: Path) -> Path:
    """How the per-file registries (gates, checkpointers) name a SQLite file."""
    return Path(os.path.abspath(path))


def write_gate(path: Path) -> WriteGate:
    """The one gate of the SQLite file ``path`` in this process (every connection to it
    shares it, while any is open)."""
    key = _file_key(path)
    with _GATES_LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = WriteGate()
        return gate


# A database with a WalCheckpointer: its thread restarts the WAL past RESTART_WAL_PAGES;
# its writing connection checkpoints by itself past BOUNDED_WAL_PAGES, which it reaches
# only if the thread cannot restart the WAL (a reader holding an old snapshot for long).
RESTART_WAL_PAGES = 16_000
BOUNDED_WAL_PAGES = 4 * RESTART_WAL_PAGES
LONG_HOLD_MS = 50.0  # a restart that held the gate this long is logged (WARNING)


class WalCheckpointer:
    """Copies a SQLite file's WAL into the main file from a thread, and restarts the WAL
    there, so the event loop's writes never checkpoint.

    SQLite checkpoints inside whichever commit takes the WAL past ``wal_autocheckpoint``
    pages. For the decision log, written on the service's event loop at five pages a
    decision (the table, three indexes, ``arm_stats``), that was a pause every ~200
    decisions: two syncs and the copy of every page changed since the last one, ~12 ms on
    this machine's disk (over 100 when it is busy). This thread copies the WAL every
    ``every_seconds`` (``PASSIVE``: it never blocks a writer or a reader, and SQLite lets go
    of the GIL while it copies and syncs). A copy from another thread never finishes while
    a writer keeps appending, though, and SQLite reuses the WAL from its start only after a
    checkpoint that finished, so once the WAL passes :data:`RESTART_WAL_PAGES` the thread
    closes the file's :class:`WriteGate` for a moment: it copies the last pages and makes
    the write that restarts the WAL (and syncs its header) itself. Writes on the event loop
    await the gate meanwhile without blocking it (benchmarks/wal_checkpoints.py). A round
    that finds another writer (a worker thread's sweep) or a reader on an old snapshot
    leaves the WAL as it is and tries again at the next. Several processes writing one file
    (``serving.workers`` > 1): a process's gate holds only its own writes, so a restart
    succeeds only in a pause of the others, and the writer's own checkpoint
    (:data:`BOUNDED_WAL_PAGES`) is what bounds the WAL there.
    """

    def __init__(self, path: Path, every_seconds: float, *, timeout_seconds: float = 30.0):
        self.path = path
        self.checkpoints = 0
        self.restarts = 0
        self.restart_pages = RESTART_WAL_PAGES
        self.longest_hold_ms = 0.0  # the longest the gate was closed by a restart
        self._users = 1  # the connections sharing this thread (:meth:`shared`)
        self.gate = write_gate(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(path, every_seconds, timeout_seconds),
            name=f"wal-checkpoint:{path.name}", daemon=True)
        self._thread.start()

    def _run(self, path: Path, every_seconds: float, timeout_seconds: float) -> None:
        conn = sqlite3.connect(path, timeout=timeout_seconds, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            # Never wait on another writer's lock while holding the gate: skip the round.
            conn.execute("PRAGMA busy_timeout=0")
            synced = 0  # the WAL's pages copied into the file as of its last sync
            while not self._stop.wait(every_seconds):
                try:
                    pages, copied = self._checkpoint(conn)
                    if copied != synced:  # sync what it copied now, not at the restart
                        flush(self.path)
                        synced = copied
                    if pages >= self.restart_pages:
                        self._restart(conn)
                except sqlite3.Error as exc:  # busy or locked: the next round copies it
                    log.warning("checkpoint of %s failed (%s); trying again in %.1f s",
                                path, exc, every_seconds)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Copy what the WAL holds into the file; the WAL's length in pages and how many of
        them are in the file now."""
        _busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        return int(pages), int(copied)

    def _restart(self, conn: sqlite3.Connection) -> None:
        """With the gate closed: copy the pages written since the last copy and, when that
        leaves nothing uncopied, write once so the WAL starts again from its beginning.

        A copy that finishes syncs the file, and the rounds before, which never finish
        while the loop writes, sync nothing of it: synced only here, with the gate closed,
        every page copied since the last restart was ~10 ms of disk (up to 55) that the
        loop's decisions waited through. So every round syncs what it copied (from this
        thread, the gate open: the round that calls this has just synced the file), and
        the WAL is synced before the gate closes; closed, it waits for the last pages'
        sync only (gate waits under 1 ms but one of ~8 ms in
        benchmarks/wal_checkpoints.py, against 17-30 ms)."""
        flush(Path(f"{self.path}-wal"))
        began = time.perf_counter()
        with self.gate.held():
            busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or pages != copied:
                return  # another connection wrote or checkpoints meanwhile: the next round
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                conn.execute(f"PRAGMA user_version={int(version)}")
            except sqlite3.OperationalError:  # another connection writes: the next round
                return
        held_ms = (time.perf_counter() - began) * 1e3
        self.longest_hold_ms = max(self.longest_hold_ms, held_ms)
        if held_ms >= LONG_HOLD_MS:  # every write of the log waited through it
            log.warning("the WAL restart of %s held the log's writes for %.0f ms (the "
                        "disk's sync of the last copy)", self.path.name, held_ms)
        if self._checkpoint(conn)[0] < pages:
            self.restarts += 1
            log.debug("WAL of %s restarted at %d pages; gate held %.1f ms",
                      self.path, pages, held_ms)

    @classmethod
    def shared(cls, path: Path, every_seconds: float, *,
               timeout_seconds: float = 30.0) -> WalCheckpointer:
        """The file's one checkpointer in this process, started by its first connection
        (the service's decision points each open the log: one thread for all)."""
        key = _file_key(path)
        with _CHECKPOINTERS_LOCK:
            running = _CHECKPOINTERS.get(key)
            if running is not None:
                running._users += 1
                return running
            started = _CHECKPOINTERS[key] = cls(path, every_seconds,
                                                timeout_seconds=timeout_seconds)
            return started

    def close(self) -> None:
        """Let go of the thread; the last connection sharing it stops it (the file's last
        connection to close checkpoints what is left)."""
        with _CHECKPOINTERS_LOCK:
            self._users -= 1
            if self._users > 0:
                return
            _CHECKPOINTERS.pop(_file_key(self.path), None)
        self._stop.set()
        self._thread.join()


SYNC = shutil.which("sync")  # coreutils: `sync --data FILE` fdatasyncs FILE


def flush(path: Path) -> None:
    """Sync what the OS holds of the file ``path`` to the disk, from a process of its own
    (``sync --data``): a descriptor of a SQLite file opened and closed in this process
    would, closed, drop every POSIX lock this process's connections hold on that file
    (fcntl locks belong to the process and the file, not the descriptor). Nothing when the
    file does not exist or ``sync`` is missing (the next checkpoint that finishes syncs)."""
    if SYNC is None or not path.exists():
        return
    with suppress(OSError, subprocess.SubprocessError):
        subprocess.run([SYNC, "--data", str(path)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                       check=False)


class _Rows:
    """A fetched PostgreSQL result, read like a DB-API cursor."""

    lastrowid = None

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int, description: Any):
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.description = description

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[tuple[Any, ...]]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


_PLACEHOLDER = re.compile(r"'[^']*'|\?|%")
_DDL_TYPES = [(re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", re.I),
               "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
              (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
              (re.compile(r"\bBLOB\b", re.I), "BYTEA")]
_CONTROL = {"BEGIN": "begin", "BEGIN IMMEDIATE": "begin", "COMMIT": "commit",
            "ROLLBACK": "rollback"}
_POOLS: dict[tuple[int, str], Any] = {}
_POOLS_LOCK = threading.Lock()


def translate(sql: str) -> str:
    """SQLite-dialect DML as PostgreSQL: ``?`` -> ``%s`` (``%`` escaped), ``INSERT OR
    IGNORE`` -> ``INSERT ... ON CONFLICT DO NOTHING``."""
    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        return {"?": "%s", "%": "%%"}.get(token) or token.replace("%", "%%")

    sql = _PLACEHOLDER.sub(one, sql)
    if sql.lstrip().upper().startswith("INSERT OR IGNORE"):
        sql = re.sub(r"^\s*INSERT OR IGNORE", "INSERT", sql, count=1, flags=re.I)
        sql += " ON CONFLICT DO NOTHING"
    return sql


def _pool(url: str, size: int) -> Any:
    """This process's connection pool for ``url`` (made on first use; checked once)."""
    from psycopg_pool import ConnectionPool, PoolTimeout

    key = (os.getpid(), url)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = ConnectionPool(url, min_size=1, max_size=max(size, 1), open=True,
                                  kwargs={"autocommit": True, "connect_timeout": 10},
                                  name=f"nextbest-{len(_POOLS)}")
            try:
                pool.wait(timeout=15.0)
            except PoolTimeout as exc:
                pool.close()
                raise MissingComponent(f"storage.url: cannot connect to PostgreSQL at "
                                       f"{redact(url)}: is the server running?") from exc
            _POOLS[key] = pool
    return pool


def redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


@atexit.register
def close_pools() -> None:
    """Close every pool of this process (tests call it between databases)."""
    with _POOLS_LOCK:
        for key, pool in list(_POOLS.items()):
            if key[0] == os.getpid():
                pool.close()
            del _POOLS[key]


class PostgresDatabase(Database):
    """A store's view of a PostgreSQL database through the process's pool for its URL."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4):
        self.url = url
        self.pool = _pool(url, pool_size)
        self._local = threading.local()  # .conn: pinned while this thread's transaction runs
        self._sql: dict[str, str] = {}

    @property
    def _conn(self) -> Any:
        return getattr(self._local, "conn", None)

    @_conn.setter
    def _conn(self, conn: Any) -> None:
        self._local.conn = conn

    def _translated(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = translate(sql)
        return out

    def _run(self, sql: str, args: Sequence[Any]) -> _Rows:
        values = [int(a) if isinstance(a, bool) else a for a in args]
        if self._conn is not None:
            return _fetch(self._conn.execute(sql, values))
        with self.pool.connection() as conn:
            return _fetch(conn.execute(sql, values))

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _Rows:
        control = _CONTROL.get(sql.strip().upper())
        if control is not None:
            getattr(self, control)()
            return _Rows([], -1, None)
        return self._run(self._translated(sql), args)

    def insert(self, sql: str, args: Sequence[Any], key: str) -> int | None:
        row = self._run(self._translated(sql) + f" RETURNING {key}", args).fetchone()
        return None if row is None else int(row[0])

    def begin(self, lock: str | None = None) -> None:
        if self._conn is not None:
            raise RuntimeError("a transaction is already open on this store")
        self._conn = self.pool.getconn()
        try:
            self._conn.execute("BEGIN")
            if lock is not None:
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(lock),))
        except BaseException:
            self._release(rollback=True)
            raise

    def commit(self) -> None:
        self._release(rollback=False)

    def rollback(self) -> None:
        self._release(rollback=True)

    def _release(self, *, rollback: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("ROLLBACK" if rollback else "COMMIT")
        finally:
            self.pool.putconn(conn)

    @property
    def in_transaction(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        if self._conn is not None:
            self.rollback()

    def ddl(self, statement: str) -> str:
        for pattern, replacement in _DDL_TYPES:
            statement = pattern.sub(replacement, statement)
        return statement

    def group_concat(self, expression: str) -> str:
        return f"string_agg({expression}, ',')"


def _fetch(cursor: Any) -> _Rows:
    rows = cursor.fetchall() if cursor.description is not None else []
    return _Rows(rows, cursor.rowcount, cursor.description)


def open_database(target: Target, *, timeout_seconds: float = 30.0,
                  synchronous: str = "NORMAL", pool_size: int = 4,
                  checkpoint_seconds: float | None = None,
                  page_size: int | None = None) -> Database:
    """The database of ``target``: a PostgreSQL URL, or a SQLite file path
    (``checkpoint_seconds``: WAL checkpoints from a thread, :class:`WalCheckpointer`;
    ``page_size``: of a SQLite file created now)."""
    if is_postgres(target):
        return PostgresDatabase(str(target), pool_size=pool_size)
    if isinstance(target, str) and "://" in target:
        raise ConfigError(f"storage.url: {redact(target)} is not a postgresql:// URL")
    return SqliteDatabase(Path(target), timeout_seconds=timeout_seconds,
                          synchronous=synchronous, checkpoint_seconds=checkpoint_seconds,
                          page_size=page_size)
