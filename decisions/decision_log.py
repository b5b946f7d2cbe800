"""The decision log: every decision and every reward, durably, in SQLite (WAL).

Tables:

- ``decisions``: one row per decision, written before the decision is returned: the
  features exactly as sent to VW, the eligible arms, the chosen action, its probability and
  the whole pmf, so the bandit can learn from it later and other policies can be evaluated
  offline (IPS/SNIPS/DR need context, action, probability and reward).
- ``rewards``: at most one row per decision (``event_id UNIQUE``), from feedback within the
  reward window or from the sweeper when the window closed without feedback. ``seq`` (an
  AUTOINCREMENT key) is the log position the learner's checkpoints refer to. SQLite lets
  one writer at a time commit, so ``seq`` grows in commit order and a reader tailing
  ``seq > n`` never skips a row.
- ``late_feedback``: feedback that arrived after the window: recorded, never learned.
  Feedback rows (in both tables) carry ``key_id``, the API key that sent them (None: the
  sweeper, or a caller without keys).
- ``arm_stats``: decisions, learnable decisions, rewards and their sum per (tier, action),
  kept current by triggers on the two tables above in the writing transaction (whatever
  process writes), so ``/bandit/stats`` reads a few rows instead of the whole log.
  Deleting a decision also takes its reward's share out, so erasure keeps it exact in
  either order.

Older logs are brought up to this schema when opened (:func:`_migrate`: missing columns
added, ``arm_stats`` filled once from the log).

Several processes (BentoML workers, the learner) may open the same file: WAL lets readers
run beside the one writer, and ``busy_timeout`` makes writers wait instead of failing.
``durable=False`` (simulations on a scratch file) commits in batches with
``synchronous=OFF``: fast, but a crash may lose the last batch.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nextbest.config import ArmConfig

BATCH_COMMIT = 1000  # operations per commit when durable=False
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    event_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    ts REAL NOT NULL,
    tier TEXT NOT NULL,
    features TEXT NOT NULL,
    eligible TEXT NOT NULL,
    action TEXT,
    probability REAL NOT NULL,
    pmf TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    personalized INTEGER NOT NULL,
    control INTEGER NOT NULL,
    learnable INTEGER NOT NULL,
    campaign TEXT,
    item_price REAL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_user_ts ON decisions (user_id, ts);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE TABLE IF NOT EXISTS rewards (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    converted INTEGER NOT NULL,
    revenue REAL NOT NULL,
    reward REAL NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('feedback', 'timeout')),
    ts REAL NOT NULL,
    learnable INTEGER NOT NULL,
    key_id TEXT
);
CREATE TABLE IF NOT EXISTS late_feedback (
    event_id TEXT PRIMARY KEY,
    converted INTEGER NOT NULL,
    revenue REAL NOT NULL,
    reward REAL NOT NULL,
    ts REAL NOT NULL,
    key_id TEXT
);
"""
# Columns added after logs were first written: (table, column, declaration).
_ADDED_COLUMNS = (("rewards", "key_id", "TEXT"), ("late_feedback", "key_id", "TEXT"))
# Running totals per (tier, action); action '' is "no action" (NULL is never equal in a key).
_ARM_STATS = """
CREATE TABLE arm_stats (
    tier TEXT NOT NULL,
    action TEXT NOT NULL,
    decisions INTEGER NOT NULL DEFAULT 0,
    learnable INTEGER NOT NULL DEFAULT 0,
    rewards INTEGER NOT NULL DEFAULT 0,
    reward_sum REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tier, action)
) WITHOUT ROWID;
INSERT INTO arm_stats (tier, action, decisions, learnable, rewards, reward_sum)
    SELECT d.tier, coalesce(d.action, ''), count(*), sum(d.learnable), count(r.reward),
           coalesce(sum(r.reward), 0)
    FROM decisions d LEFT JOIN rewards r ON r.event_id = d.event_id
    GROUP BY d.tier, coalesce(d.action, '');
CREATE TRIGGER IF NOT EXISTS arm_stats_decision_in AFTER INSERT ON decisions BEGIN
    INSERT OR IGNORE INTO arm_stats (tier, action) VALUES (NEW.tier, coalesce(NEW.action, ''));
    UPDATE arm_stats SET decisions = decisions + 1, learnable = learnable + NEW.learnable
    WHERE tier = NEW.tier AND action = coalesce(NEW.action, '');
END;
CREATE TRIGGER IF NOT EXISTS arm_stats_decision_out AFTER DELETE ON decisions BEGIN
    UPDATE arm_stats SET decisions = decisions - 1, learnable = learnable - OLD.learnable,
        rewards = rewards - (SELECT count(*) FROM rewards WHERE event_id = OLD.event_id),
        reward_sum = reward_sum - coalesce(
            (SELECT reward FROM rewards WHERE event_id = OLD.event_id), 0)
    WHERE tier = OLD.tier AND action = coalesce(OLD.action, '');
END;
CREATE TRIGGER IF NOT EXISTS arm_stats_reward_in AFTER INSERT ON rewards BEGIN
    UPDATE arm_stats SET rewards = rewards + 1, reward_sum = reward_sum + NEW.reward
    WHERE (tier, action) =
        (SELECT tier, coalesce(action, '') FROM decisions WHERE event_id = NEW.event_id);
END;
CREATE TRIGGER IF NOT EXISTS arm_stats_reward_out AFTER DELETE ON rewards BEGIN
    UPDATE arm_stats SET rewards = rewards - 1, reward_sum = reward_sum - OLD.reward
    WHERE (tier, action) =
        (SELECT tier, coalesce(action, '') FROM decisions WHERE event_id = OLD.event_id);
END;
"""
_DECISION_COLUMNS = ("event_id, user_id, ts, tier, features, eligible, action, probability, "
                     "pmf, policy_version, personalized, control, learnable, campaign, "
                     "item_price, reason")


class Offer(BaseModel):
    """An arm's public terms (``ArmConfig.features``: discount value, installment terms),
    the same for every user it is shown to: one price for everyone. Built from the
    configuration only (:meth:`of`), never from the user."""

    model_config = ConfigDict(frozen=True)

    arm: str
    kind: str | None = None
    terms: dict[str, str | float] = Field(default_factory=dict)
    description: str = ""

    @classmethod
    def of(cls, arm: ArmConfig) -> Offer:
        kind = arm.features.get("kind")
        return cls(arm=arm.name, kind=None if kind is None else str(kind),
                   terms=dict(arm.features), description=arm.description)


class Decision(BaseModel):
    """One next-best-action decision, as returned to the caller."""

    event_id: str
    user_id: str
    action: str | None  # None: no action (control group, or no eligible arm)
    probability: float
    pmf: dict[str, float]
    personalized: bool
    control: bool
    reason: str
    policy_version: str
    eligible: list[str]
    ts: datetime
    campaign: str | None = None
    learnable: bool = False
    # The chosen arm's public terms (None: no action); not kept in the log, where the
    # action names the arm.
    offer: Offer | None = None


class FeedbackResult(BaseModel):
    """What happened to one feedback: accepted, a duplicate (counted once) or late."""

    event_id: str
    status: Literal["accepted", "duplicate", "late"]
    reward: float | None
    learnable: bool
    detail: str
    action: str | None = None  # the decision's arm (None: no action)
    tier: str | None = None    # the user's tier when the decision was made


class StoredReward(BaseModel):
    """A reward row as stored: what was reported and what it counted for."""

    reward: float
    source: Literal["feedback", "timeout"]
    learnable: bool
    converted: bool
    revenue: float


class LoggedDecision(BaseModel):
    """A decision row as stored, with what is needed to learn from it and to price it."""

    decision: Decision
    tier: str
    features: dict[str, Any] = Field(default_factory=dict)  # BanditExample.model_dump()
    item_price: float | None = None


class LoggedReward(BaseModel):
    """A reward row joined with its decision: one thing for the learner to learn."""

    seq: int
    event_id: str
    reward: float
    converted: bool
    learnable: bool
    action: str | None
    probability: float
    features: dict[str, Any]


class RewardRow(BaseModel):
    """A reward to insert."""

    event_id: str
    converted: bool
    revenue: float
    reward: float
    source: Literal["feedback", "timeout"]
    ts: datetime
    learnable: bool
    key_id: str | None = None  # the API key that sent the feedback


def to_epoch(ts: datetime) -> float:
    """UTC seconds; a naive datetime is taken to be UTC (the data contract)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def from_epoch(seconds: float) -> datetime:
    """The aware UTC datetime of ``seconds``."""
    return datetime.fromtimestamp(seconds, UTC)


class DecisionLog:
    """The SQLite decision log of one process (one connection; callers serialise access)."""

    def __init__(self, path: Path, *, durable: bool = True,
                 synchronous: Literal["NORMAL", "FULL"] = "NORMAL"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._pending = 0
        self._swept_to: float | None = None
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous if durable else 'OFF'}")
        _migrate(self.conn)
        if not durable:
            self.conn.execute("BEGIN")

    def _wrote(self) -> None:
        """Commit now (durable) or every ``BATCH_COMMIT`` writes (scratch logs)."""
        if self.durable:
            return  # autocommit: every statement is its own committed transaction
        self._pending += 1
        if self._pending >= BATCH_COMMIT:
            self.flush()

    def flush(self) -> None:
        """Commit pending batched writes (no-op for a durable log)."""
        if not self.durable and self.conn.in_transaction:
            self.conn.execute("COMMIT")
            self.conn.execute("BEGIN")
        self._pending = 0

    # -- decisions -------------------------------------------------------------------------
    def record_decision(self, logged: LoggedDecision) -> None:
        """Write one decision; committed before this returns when the log is durable."""
        d = logged.decision
        self.conn.execute(
            f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (d.event_id, d.user_id, to_epoch(d.ts), logged.tier,
             json.dumps(logged.features, separators=(",", ":")), json.dumps(d.eligible),
             d.action, d.probability, json.dumps(d.pmf), d.policy_version, int(d.personalized),
             int(d.control), int(d.learnable), d.campaign, logged.item_price, d.reason))
        self._wrote()

    def get_decision(self, event_id: str) -> LoggedDecision | None:
        """The logged decision of ``event_id``, or None."""
        row = self.conn.execute(f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE event_id = ?",
                                (event_id,)).fetchone()
        return None if row is None else _logged_decision(row)

    def count_decisions(self) -> int:
        """How many decisions the log holds."""
        return int(self.conn.execute("SELECT count(*) FROM decisions").fetchone()[0])

    # -- rewards ---------------------------------------------------------------------------
    def insert_reward(self, row: RewardRow) -> int | None:
        """Insert a reward; its ``seq``, or None when the decision already has one."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO rewards (event_id, converted, revenue, reward, source, ts, "
            "learnable, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.event_id, int(row.converted), row.revenue, row.reward, row.source,
             to_epoch(row.ts), int(row.learnable), row.key_id))
        self._wrote()
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def get_reward(self, event_id: str) -> StoredReward | None:
        """The reward already recorded for ``event_id``, or None."""
        row = self.conn.execute(
            "SELECT reward, source, learnable, converted, revenue FROM rewards "
            "WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else StoredReward(
            reward=row[0], source=row[1], learnable=bool(row[2]), converted=bool(row[3]),
            revenue=row[4])

    def record_late(self, event_id: str, converted: bool, revenue: float, reward: float,
                    ts: datetime, key_id: str | None = None) -> bool:
        """Record feedback that missed the window (sent with the API key ``key_id``);
        False when it was already recorded."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO late_feedback (event_id, converted, revenue, reward, ts, "
            "key_id) VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, int(converted), revenue, reward, to_epoch(ts), key_id))
        self._wrote()
        return cursor.rowcount == 1

    def sweep(self, now: datetime, window: timedelta, default_reward: float) -> int:
        """Give the default reward to every decision whose window closed without feedback.

        Only decisions newer than the previous sweep's cut-off minus one window are looked
        at again, so a sweep costs what arrived since the last one (the first scans all).
        """
        cutoff = to_epoch(now) - window.total_seconds()
        lower = -1.0 if self._swept_to is None else self._swept_to - window.total_seconds()
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO rewards (event_id, converted, revenue, reward, source, ts, "
            "learnable) SELECT d.event_id, 0, 0.0, ?, 'timeout', ?, d.learnable "
            "FROM decisions d WHERE d.ts >= ? AND d.ts < ? AND NOT EXISTS "
            "(SELECT 1 FROM rewards r WHERE r.event_id = d.event_id) ORDER BY d.ts",
            (default_reward, to_epoch(now), lower, cutoff))
        self._swept_to = cutoff
        self._wrote()
        return max(cursor.rowcount, 0)

    def rewards_after(self, seq: int, limit: int = 1000) -> list[LoggedReward]:
        """Rewards with a log position above ``seq``, in order, joined with their decisions."""
        rows = self.conn.execute(
            "SELECT r.seq, r.event_id, r.reward, r.learnable, d.action, d.probability, "
            "d.features, r.converted FROM rewards r JOIN decisions d ON d.event_id = r.event_id "
            "WHERE r.seq > ? ORDER BY r.seq LIMIT ?", (seq, limit)).fetchall()
        return [LoggedReward(seq=r[0], event_id=r[1], reward=r[2], learnable=bool(r[3]),
                             action=r[4], probability=r[5], features=json.loads(r[6]),
                             converted=bool(r[7]))
                for r in rows]

    def last_seq(self) -> int:
        """The highest reward log position (0 when there is none)."""
        return int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM rewards").fetchone()[0])

    # -- reporting and privacy -------------------------------------------------------------
    def arm_summary(self) -> list[dict[str, Any]]:
        """Per (tier, action): decisions, rewards received and their sum (from the running
        totals of ``arm_stats``: as many rows as tiers x arms, whatever the log's size)."""
        rows = self.conn.execute(
            "SELECT tier, action, decisions, rewards, reward_sum, learnable FROM arm_stats "
            "WHERE decisions > 0 ORDER BY tier, action").fetchall()
        return [{"tier": r[0], "action": r[1] or None, "decisions": r[2], "rewards": r[3],
                 "reward_sum": r[4], "learnable": r[5]} for r in rows]

    def count_rewards(self, *, learnable_only: bool = False) -> int:
        """Rewards in the log (optionally only learnable ones)."""
        where = " WHERE learnable = 1" if learnable_only else ""
        return int(self.conn.execute(f"SELECT count(*) FROM rewards{where}").fetchone()[0])

    def export_user(self, user_id: str) -> list[dict[str, Any]]:
        """Every decision about ``user_id`` with its reward and late feedback, oldest first."""
        rows = self.conn.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE user_id = ? ORDER BY ts",
            (user_id,)).fetchall()
        out = []
        for row in rows:
            logged = _logged_decision(row)
            item = logged.decision.model_dump(mode="json")
            item.update(tier=logged.tier, features=logged.features, item_price=logged.item_price)
            item["reward"] = self._reward_dict("rewards", logged.decision.event_id)
            item["late_feedback"] = self._reward_dict("late_feedback", logged.decision.event_id)
            out.append(item)
        return out

    def _reward_dict(self, table: str, event_id: str) -> dict[str, Any] | None:
        """One reward-like row of ``table`` as a dict with an ISO timestamp."""
        cursor = self.conn.execute(f"SELECT * FROM {table} WHERE event_id = ?", (event_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        item = dict(zip([c[0] for c in cursor.description], row, strict=True))
        item["ts"] = from_epoch(item["ts"]).isoformat()
        return item

    def erase_user(self, user_id: str) -> int:
        """Delete every decision, reward and late feedback of ``user_id``; decisions deleted."""
        subquery = "SELECT event_id FROM decisions WHERE user_id = ?"
        if self.durable:  # one transaction: no reader sees rewards without their decision
            self.conn.execute("BEGIN IMMEDIATE")
        for table in ("rewards", "late_feedback"):
            self.conn.execute(f"DELETE FROM {table} WHERE event_id IN ({subquery})", (user_id,))
        count = self.conn.execute("DELETE FROM decisions WHERE user_id = ?", (user_id,)).rowcount
        if self.durable:
            self.conn.execute("COMMIT")
        else:
            self.flush()
        return count

    def close(self) -> None:
        """Commit what is pending and close the connection."""
        self.flush()
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        self.conn.close()


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, add the columns older logs lack, and create and fill
    ``arm_stats`` with its triggers, in one transaction that waits for other writers (so
    two processes opening an old log at once migrate it once)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        for table, column, declaration in _ADDED_COLUMNS:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                              "name = 'arm_stats'").fetchone()
        if not exists:
            for statement in _statements(_ARM_STATS):
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (a trigger body's ``;`` does not end one)."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return out


def _logged_decision(row: tuple[Any, ...]) -> LoggedDecision:
    """Rebuild a LoggedDecision from a ``SELECT {_DECISION_COLUMNS}`` row."""
    (event_id, user_id, ts, tier, features, eligible, action, probability, pmf, version,
     personalized, control, learnable, campaign, item_price, reason) = row
    decision = Decision(event_id=event_id, user_id=user_id, action=action,
                        probability=probability, pmf=json.loads(pmf),
                        personalized=bool(personalized), control=bool(control), reason=reason,
                        policy_version=version, eligible=json.loads(eligible),
                        ts=from_epoch(ts), campaign=campaign, learnable=bool(learnable))
    return LoggedDecision(decision=decision, tier=tier, features=json.loads(features),
                          item_price=item_price)
