"""The decision log: every decision and every reward, durably, in SQLite (WAL).

Tables:

- ``decisions``: one row per decision, written before the decision is returned: the
  features exactly as sent to VW, the eligible arms, the chosen action, its probability and
  the whole pmf, so the bandit can learn from it later and other policies can be evaluated
  offline (IPS/SNIPS/DR need context, action, probability and reward).
- ``rewards``: at most one row per decision (``event_id UNIQUE``), from feedback within the
  reward window or from the sweeper when the window closed without feedback. ``seq`` (an
  auto-increment key) is the log position the learner's checkpoints refer to. It must grow
  in commit order, or a reader tailing ``seq > n`` could pass a row still uncommitted
  below ``n``: SQLite commits one writer at a time; on PostgreSQL every reward write holds
  one advisory lock from taking its ``seq`` to its commit, so a rolled-back writer leaves a
  hole (skipped harmlessly) and never a late row below a committed one.
- ``late_feedback``: feedback that arrived after the window: recorded, never learned.
- ``shadow_decisions``: what a shadow policy would have chosen on a decision, with its
  probability and pmf (decisions/lifecycle.py); never shown to anyone.
  Feedback rows (in both tables) carry ``key_id``, the API key that sent them (None: the
  sweeper, or a caller without keys).
- ``arm_stats``: decisions, learnable decisions, rewards and their sum per (decision point,
  tier, action),
  kept current by triggers on the two tables above in the writing transaction (whatever
  process writes), so ``/bandit/stats`` reads a few rows instead of the whole log.
  Deleting a decision also takes its reward's share out, so erasure keeps it exact in
  either order.

Older logs are brought up to this schema when opened (``SCHEMA_STEPS``, nextbest/storage.py).
On PostgreSQL trigger functions keep ``arm_stats`` (since step 4).
- ``decision_point`` on decisions and rewards: which decision point made the decision
  (``buyer_offer``, ``seller_offer``, ...). A :class:`DecisionLog` opened for one point
  (``point=``) learns, sweeps and counts that point's rows only.

The rows live in a SQLite file (default) or a PostgreSQL database (``storage.url``), through
:mod:`nextbest.storage`. Several processes (BentoML workers, replicas, the learner) may open
the same log: on SQLite, WAL lets readers run beside the one writer and ``busy_timeout``
makes writers wait instead of failing. ``durable=False`` (simulations on a scratch file)
commits in batches with ``synchronous=OFF``: fast, but a crash may lose the last batch (a
PostgreSQL log is always durable).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import from_json, to_json

from nextbest.config import DEFAULT_POINT, ArmConfig, RewardConfig
from nextbest.sqlite_wipe import truncate_wal
from nextbest.storage import Target, WriteGate, open_database

BATCH_COMMIT = 1000  # operations per commit when durable=False
# A new SQLite log's page size: SQLite's default, measured against smaller pages. A durable
# decision is its own commit, which writes each page it changed to the WAL whole (the
# table, three indexes, arm_stats: 25 KiB a ~1 KB decision at 4,096 bytes, 8.8 KiB at
# 1,024), but with the checkpointer thread copying beside the loop, 1,024-byte pages made
# the loop's commits slower and its pauses longer (benchmarks/wal_checkpoints.py
# --page-sizes 4096,1024: mean commit 155 against 122 us, longest pauses 78-511 against
# 3-99 ms, three rounds). A log created with another size keeps it.
PAGE_SIZE = 4096
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
    learnable INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS late_feedback (
    event_id TEXT PRIMARY KEY,
    converted INTEGER NOT NULL,
    revenue REAL NOT NULL,
    reward REAL NOT NULL,
    ts REAL NOT NULL
);
"""
# Step 2: the reward model's version on each decision (decisions/reward_model.py) and what
# shadow policies would have chosen (decisions/lifecycle.py).
_SCHEMA_2 = """
ALTER TABLE decisions ADD COLUMN reward_model TEXT;
CREATE TABLE IF NOT EXISTS shadow_decisions (
    event_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    action TEXT,
    probability REAL NOT NULL,
    pmf TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    reward_model TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (event_id, policy)
);
"""
# Step 3: who sent each feedback (``key_id``) and the running totals of /bandit/stats.
_KEY_IDS = """
ALTER TABLE rewards ADD COLUMN key_id TEXT;
ALTER TABLE late_feedback ADD COLUMN key_id TEXT;
"""
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
_ARM_STATS_VIEW = """
CREATE VIEW arm_stats AS
    SELECT d.tier AS tier, coalesce(d.action, '') AS action, count(*) AS decisions,
           sum(d.learnable) AS learnable, count(r.reward) AS rewards,
           coalesce(sum(r.reward), 0) AS reward_sum
    FROM decisions d LEFT JOIN rewards r ON r.event_id = d.event_id
    GROUP BY d.tier, coalesce(d.action, '');
"""
# Step 4: decision points. Every decision and reward names its decision point (older rows
# were buyer offers); rewards carry it too, so a point's learner tails its own rewards by
# (decision_point, seq) on an index. The running totals are kept per point, on PostgreSQL
# too (a table kept by a trigger function, replacing step 3's view, a scan of the log).
_POINTS = """
ALTER TABLE decisions ADD COLUMN decision_point TEXT NOT NULL DEFAULT 'buyer_offer';
ALTER TABLE rewards ADD COLUMN decision_point TEXT NOT NULL DEFAULT 'buyer_offer';
CREATE INDEX rewards_point_seq ON rewards (decision_point, seq);
"""
_POINT_STATS_TABLE = """
CREATE TABLE arm_stats (
    decision_point TEXT NOT NULL,
    tier TEXT NOT NULL,
    action TEXT NOT NULL,
    decisions INTEGER NOT NULL DEFAULT 0,
    learnable INTEGER NOT NULL DEFAULT 0,
    rewards INTEGER NOT NULL DEFAULT 0,
    reward_sum REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (decision_point, tier, action)
){suffix};
INSERT INTO arm_stats (decision_point, tier, action, decisions, learnable, rewards, reward_sum)
    SELECT d.decision_point, d.tier, coalesce(d.action, ''), count(*), sum(d.learnable),
           count(r.reward), coalesce(sum(r.reward), 0)
    FROM decisions d LEFT JOIN rewards r ON r.event_id = d.event_id
    GROUP BY d.decision_point, d.tier, coalesce(d.action, '');
"""
_KEY_OF = "(SELECT decision_point, tier, coalesce(action, '') FROM decisions " \
    "WHERE event_id = {row}.event_id)"
_POINT_STATS_SQLITE = """
DROP TRIGGER arm_stats_decision_in;
DROP TRIGGER arm_stats_decision_out;
DROP TRIGGER arm_stats_reward_in;
DROP TRIGGER arm_stats_reward_out;
DROP TABLE arm_stats;
""" + _POINT_STATS_TABLE.format(suffix=" WITHOUT ROWID") + """
CREATE TRIGGER arm_stats_decision_in AFTER INSERT ON decisions BEGIN
    INSERT OR IGNORE INTO arm_stats (decision_point, tier, action)
        VALUES (NEW.decision_point, NEW.tier, coalesce(NEW.action, ''));
    UPDATE arm_stats SET decisions = decisions + 1, learnable = learnable + NEW.learnable
    WHERE decision_point = NEW.decision_point AND tier = NEW.tier
        AND action = coalesce(NEW.action, '');
END;
CREATE TRIGGER arm_stats_decision_out AFTER DELETE ON decisions BEGIN
    UPDATE arm_stats SET decisions = decisions - 1, learnable = learnable - OLD.learnable,
        rewards = rewards - (SELECT count(*) FROM rewards WHERE event_id = OLD.event_id),
        reward_sum = reward_sum - coalesce(
            (SELECT reward FROM rewards WHERE event_id = OLD.event_id), 0)
    WHERE decision_point = OLD.decision_point AND tier = OLD.tier
        AND action = coalesce(OLD.action, '');
END;
CREATE TRIGGER arm_stats_reward_in AFTER INSERT ON rewards BEGIN
    UPDATE arm_stats SET rewards = rewards + 1, reward_sum = reward_sum + NEW.reward
    WHERE (decision_point, tier, action) = """ + _KEY_OF.format(row="NEW") + """;
END;
CREATE TRIGGER arm_stats_reward_out AFTER DELETE ON rewards BEGIN
    UPDATE arm_stats SET rewards = rewards - 1, reward_sum = reward_sum - OLD.reward
    WHERE (decision_point, tier, action) = """ + _KEY_OF.format(row="OLD") + """;
END;
"""
# PostgreSQL: one trigger function per table; row locks on arm_stats serialise replicas.
_POINT_STATS_POSTGRES = "DROP VIEW arm_stats;" + _POINT_STATS_TABLE.format(suffix="") + """
CREATE FUNCTION nextbest_arm_stats_decision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO arm_stats (decision_point, tier, action)
            VALUES (NEW.decision_point, NEW.tier, coalesce(NEW.action, ''))
            ON CONFLICT DO NOTHING;
        UPDATE arm_stats SET decisions = decisions + 1, learnable = learnable + NEW.learnable
        WHERE decision_point = NEW.decision_point AND tier = NEW.tier
            AND action = coalesce(NEW.action, '');
    ELSE
        UPDATE arm_stats SET decisions = decisions - 1, learnable = learnable - OLD.learnable,
            rewards = rewards - (SELECT count(*) FROM rewards WHERE event_id = OLD.event_id),
            reward_sum = reward_sum - coalesce(
                (SELECT reward FROM rewards WHERE event_id = OLD.event_id), 0)
        WHERE decision_point = OLD.decision_point AND tier = OLD.tier
            AND action = coalesce(OLD.action, '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER arm_stats_decision AFTER INSERT OR DELETE ON decisions
    FOR EACH ROW EXECUTE FUNCTION nextbest_arm_stats_decision();
CREATE FUNCTION nextbest_arm_stats_reward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE arm_stats SET rewards = rewards + 1, reward_sum = reward_sum + NEW.reward
        WHERE (decision_point, tier, action) = """ + _KEY_OF.format(row="NEW") + """;
    ELSE
        UPDATE arm_stats SET rewards = rewards - 1, reward_sum = reward_sum - OLD.reward
        WHERE (decision_point, tier, action) = """ + _KEY_OF.format(row="OLD") + """;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER arm_stats_reward AFTER INSERT OR DELETE ON rewards
    FOR EACH ROW EXECUTE FUNCTION nextbest_arm_stats_reward();
"""
# Migration steps (nextbest.storage): append a step for a change, never edit a released one.
SCHEMA_STEPS = (_SCHEMA, _SCHEMA_2, {"sqlite": _KEY_IDS + _ARM_STATS,
                                     "postgresql": _KEY_IDS + _ARM_STATS_VIEW},
                {"sqlite": _POINTS + _POINT_STATS_SQLITE,
                 "postgresql": _POINTS + _POINT_STATS_POSTGRES})
REWARD_LOCK = "decision_log:rewards"  # serialises reward writers on PostgreSQL
_DECISION_COLUMNS = ("event_id, user_id, ts, tier, features, eligible, action, probability, "
                     "pmf, policy_version, personalized, control, learnable, campaign, "
                     "item_price, reason, reward_model, decision_point")
# One decision as stored, in the order of _DECISION_COLUMNS (user_id at ROW_USER_ID).
DecisionRow = tuple[Any, ...]
ROW_USER_ID = 1


class Offer(BaseModel):
    """An arm's public terms (``ArmConfig.features``: discount value, installment terms),
    the same for every user it is shown to: one price for everyone. Built from the
    configuration only (:meth:`of`), never from the user."""

    model_config = ConfigDict(frozen=True)

    arm: str
    kind: str | None = None
    terms: dict[str, str | float] = Field(default_factory=dict)
    description: str = ""
    # A pricing arm (``kind: pricing``): the median price items of the request's category
    # sold for, and the evidence (features/comparables.py); the same for every listing of
    # that category, whoever lists it.
    suggested_price: float | None = None
    evidence: str | None = None

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
    decision_point: str = DEFAULT_POINT
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
    decision_point: str = DEFAULT_POINT


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
    # The version of the reward model that informed the choice (decisions/reward_model.py;
    # None: VW alone), so replays and offline evaluation use the model that decided.
    reward_model: str | None = None


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
    decision_point: str = DEFAULT_POINT


def _json(value: Any) -> str:
    """Compact JSON text of a decision's column (pydantic's serializer: a third of
    ``json.dumps``' time, on every decision)."""
    return to_json(value).decode()


def to_epoch(ts: datetime) -> float:
    """UTC seconds; a naive datetime is taken to be UTC (the data contract)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def from_epoch(seconds: float) -> datetime:
    """The aware UTC datetime of ``seconds``."""
    return datetime.fromtimestamp(seconds, UTC)


class DecisionLog:
    """The decision log of one process (one connection or pool user; callers serialise
    access). ``path`` is a SQLite file or a ``postgresql://`` URL (:mod:`nextbest.storage`).

    ``point``: the decision point whose rewards this log tails, sweeps and counts (every
    point's decisions share the file; reading, export and erasure see them all)."""

    def __init__(self, path: Target, *, durable: bool = True,
                 synchronous: Literal["NORMAL", "FULL"] = "NORMAL", pool_size: int = 4,
                 point: str = DEFAULT_POINT, checkpoint_seconds: float | None = None):
        """``checkpoint_seconds`` (a durable SQLite log): copy the WAL into the file that
        often from a thread (:class:`nextbest.storage.WalCheckpointer`), so the commits of
        this connection (the service's, on its event loop) rarely checkpoint themselves."""
        self.path = path
        self.point = point
        self._pending = 0
        self._swept_to: float | None = None
        self.conn = open_database(path, synchronous=synchronous if durable else "OFF",
                                  pool_size=pool_size,
                                  checkpoint_seconds=checkpoint_seconds if durable else None,
                                  page_size=PAGE_SIZE)
        self.durable = durable or self.conn.dialect != "sqlite"
        self.conn.migrate("decision_log", SCHEMA_STEPS)
        if not self.durable:
            self.conn.execute("BEGIN")

    @property
    def gate(self) -> WriteGate:
        """What the event loop's writes to this log pass (:class:`nextbest.storage.WriteGate`):
        the WAL checkpointer closes it for a moment to restart the WAL."""
        return self.conn.gate

    @contextmanager
    def _reward_writer(self) -> Iterator[None]:
        """Around every write to ``rewards``: makes ``seq`` follow commit order (see the
        module docstring; SQLite's single writer already does)."""
        if self.conn.dialect == "sqlite":
            yield
            return
        with self.conn.transaction(lock=REWARD_LOCK):
            yield

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
            self.conn.commit()
            self.conn.execute("BEGIN")
        self._pending = 0

    # -- decisions -------------------------------------------------------------------------
    def record_decision(self, logged: LoggedDecision) -> DecisionRow:
        """Write one decision; committed before this returns when the log is durable.

        Returns the row as written: plain values only, which the garbage collector stops
        tracking, so a caller that keeps thousands of them for their feedback (the engine)
        adds nothing to a collection's pause; :func:`logged_from_row` turns it back."""
        d = logged.decision
        row = (d.event_id, d.user_id, to_epoch(d.ts), logged.tier,
               _json(logged.features), _json(d.eligible),
               d.action, d.probability, _json(d.pmf), d.policy_version, int(d.personalized),
               int(d.control), int(d.learnable), d.campaign, logged.item_price, d.reason,
               logged.reward_model, d.decision_point)
        self.conn.execute(
            f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        self._wrote()
        return row

    def get_decision(self, event_id: str) -> LoggedDecision | None:
        """The logged decision of ``event_id``, or None."""
        row = self.conn.execute(f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE event_id = ?",
                                (event_id,)).fetchone()
        return None if row is None else logged_from_row(row)

    def count_decisions(self) -> int:
        """How many decisions of this log's decision point the log holds (running totals)."""
        return int(self.conn.execute(
            "SELECT coalesce(sum(decisions), 0) FROM arm_stats WHERE decision_point = ?",
            (self.point,)).fetchone()[0])

    # -- rewards ---------------------------------------------------------------------------
    def insert_reward(self, row: RewardRow) -> int | None:
        """Insert a reward; its ``seq``, or None when the decision already has one."""
        with self._reward_writer():
            seq = self.conn.insert(
                "INSERT OR IGNORE INTO rewards (event_id, converted, revenue, reward, source, "
                "ts, learnable, key_id, decision_point) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.event_id, int(row.converted), row.revenue, row.reward, row.source,
                 to_epoch(row.ts), int(row.learnable), row.key_id, row.decision_point),
                key="seq")
        self._wrote()
        return seq

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
        """Give the default reward to every decision of this log's point whose window closed
        without feedback.

        Only decisions newer than the previous sweep's cut-off minus one window are looked
        at again, so a sweep costs what arrived since the last one (the first scans all).
        It holds the SQLite file's gate (:attr:`gate`) while it writes: the service sweeps
        from a worker thread, and its event loop's writes await the sweep instead of
        sleeping in SQLite's busy handler on the loop (a first sweep of a large log holds
        the write lock for 100 ms or more).
        """
        cutoff = to_epoch(now) - window.total_seconds()
        lower = -1.0 if self._swept_to is None else self._swept_to - window.total_seconds()
        gated = self.gate.held() if self.conn.dialect == "sqlite" else nullcontext()
        with gated, self._reward_writer():
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO rewards (event_id, converted, revenue, reward, source, "
                "ts, learnable, decision_point) SELECT d.event_id, 0, 0.0, ?, 'timeout', ?, "
                "d.learnable, d.decision_point FROM decisions d WHERE d.ts >= ? AND d.ts < ? "
                "AND d.decision_point = ? AND NOT EXISTS "
                "(SELECT 1 FROM rewards r WHERE r.event_id = d.event_id) ORDER BY d.ts",
                (default_reward, to_epoch(now), lower, cutoff, self.point))
        self._swept_to = cutoff
        self._wrote()
        return max(cursor.rowcount, 0)

    def sweep_closed(self, now: datetime, reward: RewardConfig) -> int:
        """:meth:`sweep` with the reward settings' window and default reward."""
        return self.sweep(now, timedelta(days=reward.window_days), reward.default)

    def rewards_after(self, seq: int, limit: int = 1000) -> list[LoggedReward]:
        """This point's rewards with a log position above ``seq``, in order, joined with their
        decisions."""
        rows = self.conn.execute(
            "SELECT r.seq, r.event_id, r.reward, r.learnable, d.action, d.probability, "
            "d.features, r.converted FROM rewards r JOIN decisions d ON d.event_id = r.event_id "
            "WHERE r.decision_point = ? AND r.seq > ? ORDER BY r.seq LIMIT ?",
            (self.point, seq, limit)).fetchall()
        return [LoggedReward(seq=r[0], event_id=r[1], reward=r[2], learnable=bool(r[3]),
                             action=r[4], probability=r[5], features=from_json(r[6]),
                             converted=bool(r[7]))
                for r in rows]

    def last_seq(self) -> int:
        """The highest reward log position of this point (0 when there is none)."""
        return int(self.conn.execute(
            "SELECT coalesce(max(seq), 0) FROM rewards WHERE decision_point = ?",
            (self.point,)).fetchone()[0])

    # -- reporting and privacy -------------------------------------------------------------
    def arm_summary(self) -> list[dict[str, Any]]:
        """Per (tier, action): decisions, rewards received and their sum (from the running
        totals of ``arm_stats``: as many rows as tiers x arms, whatever the log's size)."""
        rows = self.conn.execute(
            "SELECT tier, action, decisions, rewards, reward_sum, learnable FROM arm_stats "
            "WHERE decision_point = ? AND decisions > 0 ORDER BY tier, action",
            (self.point,)).fetchall()
        return [{"tier": r[0], "action": r[1] or None, "decisions": r[2], "rewards": r[3],
                 "reward_sum": r[4], "learnable": r[5]} for r in rows]

    def count_rewards(self, *, learnable_only: bool = False) -> int:
        """This point's rewards in the log (optionally only learnable ones)."""
        where = " AND learnable = 1" if learnable_only else ""
        return int(self.conn.execute(
            f"SELECT count(*) FROM rewards WHERE decision_point = ?{where}",
            (self.point,)).fetchone()[0])

    def export_user(self, user_id: str) -> list[dict[str, Any]]:
        """Every decision about ``user_id`` with its reward and late feedback, oldest first."""
        rows = self.conn.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE user_id = ? ORDER BY ts",
            (user_id,)).fetchall()
        out = []
        for row in rows:
            logged = logged_from_row(row)
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
        """Delete every decision, reward, late feedback and shadow decision of ``user_id``;
        decisions deleted.

        Durable log: one transaction (no reader sees rewards without their decision), rolled
        back on any failure so the log stays writable; the deleted bytes are overwritten
        (``secure_delete``) and the WAL is emptied afterwards."""
        subquery = "SELECT event_id FROM decisions WHERE user_id = ?"
        if self.durable:
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("rewards", "late_feedback", "shadow_decisions"):
                self.conn.execute(f"DELETE FROM {table} WHERE event_id IN ({subquery})",
                                  (user_id,))
            count = self.conn.execute("DELETE FROM decisions WHERE user_id = ?",
                                      (user_id,)).rowcount
        except BaseException:
            if self.durable and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        if not self.durable:
            self.flush()
            return count
        self.conn.execute("COMMIT")
        if self.conn.dialect == "sqlite":  # PostgreSQL keeps no WAL file of ours
            truncate_wal(self.conn, "decision log")
        return count

    def close(self) -> None:
        """Commit what is pending and close the connection."""
        self.flush()
        if self.conn.in_transaction:
            self.conn.commit()
        self.conn.close()


def logged_from_row(row: DecisionRow) -> LoggedDecision:
    """Rebuild a LoggedDecision from a ``SELECT {_DECISION_COLUMNS}`` row (or the row
    :meth:`DecisionLog.record_decision` wrote)."""
    (event_id, user_id, ts, tier, features, eligible, action, probability, pmf, version,
     personalized, control, learnable, campaign, item_price, reason, reward_model,
     decision_point) = row
    decision = Decision(event_id=event_id, user_id=user_id, action=action,
                        probability=probability, pmf=from_json(pmf),
                        personalized=bool(personalized), control=bool(control), reason=reason,
                        policy_version=version, eligible=from_json(eligible),
                        ts=from_epoch(ts), campaign=campaign, learnable=bool(learnable),
                        decision_point=decision_point)
    return LoggedDecision(decision=decision, tier=tier, features=from_json(features),
                          item_price=item_price, reward_model=reward_model)
