"""The campaign store: kept events, items, delayed timers, the outbox and campaign runs.

One SQLite file (``paths.campaign_store``, WAL, like the decision log), so several worker
processes and the scheduler share it on one host, or the PostgreSQL database of
``storage.url`` (:mod:`nextbest.storage`), shared by replicas on many hosts:

- ``events``: every behaviour event accepted, once (``dedupe_key``: the same event posted
  twice, or by two replicas, is kept once); ``seq`` orders them; ``exported`` marks those
  already written into ``raw_dir/events/`` partitions for the next features build. The
  real-time counters triggers read (views of a category in the last days, purchases, open
  carts) are indexed queries over it, so they never wait for a batch build.
- ``items``: the latest state of every listing posted to ``POST /items``.
- ``timers``: delayed trigger instances (``waiting`` until due, then ``fired`` or
  ``cancelled``).
- ``outbox``: one row per firing, written before any answer leaves: a message
  (``pending``), or a firing that sent nothing (``suppressed`` with its reason), or one
  cancelled. ``idempotency_key`` (campaign + user + trigger instance) is unique, so one
  trigger instance never makes two rows, whoever posts it.
- ``runs``: one row per scheduled campaign and schedule slot, so a slot runs once.

Callers serialise access per connection; every method commits before it returns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from campaigns.delivery import Contact
from decisions.decision_log import from_epoch, to_epoch
from nextbest.sqlite_wipe import truncate_wal
from nextbest.storage import Target, open_database

# pending: waiting for its send time; sending: claimed by a dispatcher (until lease_until);
# sent: the channel accepted it; dead: every attempt failed; suppressed / cancelled: never
# sent (reason says why).
MessageStatus = Literal["pending", "sending", "sent", "dead", "cancelled", "suppressed"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    item_id TEXT,
    category TEXT,
    price REAL,
    seller_id TEXT,
    received REAL NOT NULL,
    exported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, type, ts);
CREATE INDEX IF NOT EXISTS events_item ON events (item_id, ts);
CREATE INDEX IF NOT EXISTS events_seller ON events (seller_id, type);
CREATE INDEX IF NOT EXISTS events_unexported ON events (exported, seq);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL,
    category TEXT,
    price REAL,
    stock INTEGER,
    ts REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS timers (
    instance_key TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT,
    due REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('waiting', 'fired', 'cancelled')),
    event_seq INTEGER NOT NULL,
    context TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (status, due);
CREATE INDEX IF NOT EXISTS timers_user ON timers (user_id, status);
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    campaign TEXT NOT NULL,
    user_id TEXT NOT NULL,
    arm TEXT,
    decision_id TEXT,
    channel TEXT,
    created REAL NOT NULL,
    scheduled REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    trigger TEXT NOT NULL,
    tier TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    sent REAL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ts REAL NOT NULL,
    ok INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    seconds REAL NOT NULL,
    PRIMARY KEY (message_id, attempt)
);
CREATE TABLE IF NOT EXISTS receipts (
    message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    ts REAL NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (message_id, status)
);
CREATE TABLE IF NOT EXISTS conversions (
    message_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    revenue REAL NOT NULL,
    reward REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_user ON outbox (user_id, campaign, created);
CREATE INDEX IF NOT EXISTS outbox_campaign ON outbox (campaign, status);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status, scheduled);
CREATE TABLE IF NOT EXISTS runs (
    campaign TEXT NOT NULL,
    slot TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    counts TEXT,
    PRIMARY KEY (campaign, slot)
);
"""
# Migration steps (nextbest.storage): append a step for a change, never edit a released one.
SCHEMA_STEPS = (_SCHEMA,)
_MESSAGE_COLUMNS = ("message_id, idempotency_key, campaign, user_id, arm, decision_id, channel, "
                    "created, scheduled, status, reason, trigger, tier")


class KeptEvent(BaseModel):
    """A behaviour event as the store keeps it."""

    seq: int
    user_id: str
    type: str
    ts: datetime
    item_id: str | None = None
    category: str | None = None
    price: float | None = None
    seller_id: str | None = None


class Item(BaseModel):
    """A listing: its seller, category, price and stock, as last posted."""

    item_id: str = Field(min_length=1, max_length=200)
    seller_id: str = Field(min_length=1, max_length=200)
    category: str | None = Field(None, max_length=100)
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    stock: int | None = Field(None, ge=0, le=1_000_000_000)
    ts: datetime


class Timer(BaseModel):
    """A delayed trigger instance waiting for its time."""

    instance_key: str
    campaign: str
    user_id: str
    item_id: str | None
    due: datetime
    event_seq: int
    context: dict[str, Any]


class OutboxMessage(BaseModel):
    """One firing of a campaign for one user: a message to send, or why nothing is sent."""

    message_id: str
    idempotency_key: str
    campaign: str
    user_id: str
    arm: str | None
    decision_id: str | None  # the decision's event_id (feedback and rewards join on it)
    channel: str | None
    created: datetime
    scheduled: datetime
    status: MessageStatus
    reason: str | None
    trigger: str  # what fired it: "event:<seq>", "timer:<key>", "schedule:<slot>", ...
    tier: str | None = None  # the user's tier when it fired (for reports per tier)


class Claim(BaseModel):
    """A message a dispatcher claimed, and which attempt at it this is (1 for the first)."""

    message: OutboxMessage
    attempt: int


class Attempt(BaseModel):
    """One delivery attempt: when, whether the channel accepted it, and why not."""

    message_id: str
    attempt: int
    ts: datetime
    ok: bool
    status_code: int | None = None  # the webhook's HTTP status (None: no answer, or no HTTP)
    error: str | None = None
    seconds: float


class DeliveryRecord(BaseModel):
    """Where one message stands in delivery."""

    message_id: str
    status: MessageStatus
    attempts: int             # attempts claimed (one may be in flight, or lost with its process)
    scheduled: datetime       # due (again) at
    lease_until: datetime | None
    sent: datetime | None
    last_error: str | None
    history: list[Attempt]    # the attempts recorded, in order


def dedupe_key(user_id: str, type_: str, ts: datetime, item_id: str | None,
               seller_id: str | None, category: str | None) -> str:
    """The identity of an event: the same user, type, moment and subject is one event."""
    text = json.dumps([user_id, type_, to_epoch(ts), item_id, seller_id, category])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CampaignStore:
    """The campaign store of one process (one connection or pool user; callers serialise).
    ``path`` is a SQLite file or a ``postgresql://`` URL (:mod:`nextbest.storage`)."""

    def __init__(self, path: Target, *, timeout_seconds: float = 30.0, pool_size: int = 4):
        self.path = path
        self.conn = open_database(path, timeout_seconds=timeout_seconds, pool_size=pool_size)
        self.conn.migrate("campaign_store", SCHEMA_STEPS)

    def close(self) -> None:
        self.conn.close()

    # -- events ------------------------------------------------------------------------------
    def add_event(self, user_id: str, type_: str, ts: datetime, *, item_id: str | None = None,
                  category: str | None = None, price: float | None = None,
                  seller_id: str | None = None, now: datetime | None = None) -> int | None:
        """Keep one event; its ``seq``, or None when the same event is already kept."""
        key = dedupe_key(user_id, type_, ts, item_id, seller_id, category)
        return self.conn.insert(
            "INSERT OR IGNORE INTO events (dedupe_key, user_id, type, ts, item_id, category, "
            "price, seller_id, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, user_id, type_, to_epoch(ts), item_id, category, price, seller_id,
             to_epoch(now or datetime.now(UTC))), key="seq")

    def count_events(self, user_id: str, type_: str, since: datetime, until: datetime, *,
                     category: str | None = None, item_id: str | None = None) -> int:
        """Events of ``type_`` by ``user_id`` from ``since`` to ``until`` (both included; in
        one category or on one item when given)."""
        sql = ("SELECT count(*) FROM events WHERE user_id = ? AND type = ? AND ts >= ? "
               "AND ts <= ?")
        args: list[Any] = [user_id, type_, to_epoch(since), to_epoch(until)]
        for column, value in (("category", category), ("item_id", item_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return int(self.conn.execute(sql, args).fetchone()[0])

    def last_event_ts(self, user_id: str, type_: str, until: datetime) -> datetime | None:
        """When ``user_id`` last sent an event of ``type_``, up to ``until``."""
        row = self.conn.execute(
            "SELECT max(ts) FROM events WHERE user_id = ? AND type = ? AND ts <= ?",
            (user_id, type_, to_epoch(until))).fetchone()
        return None if row[0] is None else from_epoch(row[0])

    def unfinished_listing(self, user_id: str) -> bool:
        """Whether ``user_id`` started a listing (``listing_started``) after the last item
        they listed here (or never listed one): a prospective seller."""
        row = self.conn.execute(
            "SELECT 1 FROM events WHERE user_id = ? AND type = 'listing_started' AND ts > "
            "coalesce((SELECT max(ts) FROM items WHERE seller_id = ?), -1) LIMIT 1",
            (user_id, user_id)).fetchone()
        return row is not None

    def open_carts(self, user_id: str) -> int:
        """Items the user added to the cart and has not bought since."""
        row = self.conn.execute(
            "SELECT count(DISTINCT c.item_id) FROM events c WHERE c.user_id = ? AND "
            "c.type = 'add_to_cart' AND c.item_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            "events p WHERE p.user_id = c.user_id AND p.type = 'purchase' AND "
            "p.item_id = c.item_id AND p.ts >= c.ts)", (user_id,)).fetchone()
        return int(row[0])

    def viewers(self, item_id: str, since: datetime) -> list[str]:
        """Users who viewed or favourited ``item_id`` at or after ``since``."""
        rows = self.conn.execute(
            "SELECT DISTINCT user_id FROM events WHERE item_id = ? AND ts >= ? AND "
            "type IN ('view', 'favorite') ORDER BY user_id", (item_id, to_epoch(since)))
        return [r[0] for r in rows]

    def followers(self, seller_id: str) -> list[str]:
        """Users who follow ``seller_id`` (a ``follow`` event naming the seller)."""
        rows = self.conn.execute(
            "SELECT DISTINCT user_id FROM events WHERE seller_id = ? AND type = 'follow' "
            "ORDER BY user_id", (seller_id,))
        return [r[0] for r in rows]

    def unexported_events(self, limit: int) -> list[KeptEvent]:
        """The oldest events not yet written into the raw data, in ``seq`` order."""
        rows = self.conn.execute(
            "SELECT seq, user_id, type, ts, item_id, category, price, seller_id FROM events "
            "WHERE exported = 0 ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [KeptEvent(seq=r[0], user_id=r[1], type=r[2], ts=from_epoch(r[3]), item_id=r[4],
                          category=r[5], price=r[6], seller_id=r[7]) for r in rows]

    def mark_exported(self, up_to_seq: int) -> None:
        """Mark every event up to ``up_to_seq`` as written into the raw data."""
        self.conn.execute("UPDATE events SET exported = 1 WHERE exported = 0 AND seq <= ?",
                          (up_to_seq,))

    # -- items -------------------------------------------------------------------------------
    def get_item(self, item_id: str) -> Item | None:
        """The item as last posted, or None."""
        row = self.conn.execute(
            "SELECT item_id, seller_id, category, price, stock, ts FROM items WHERE item_id = ?",
            (item_id,)).fetchone()
        return None if row is None else Item(item_id=row[0], seller_id=row[1], category=row[2],
                                             price=row[3], stock=row[4], ts=from_epoch(row[5]))

    def put_item(self, item: Item, now: datetime | None = None) -> Item | None:
        """Upsert ``item``; the state it replaced (None for a new item)."""
        before = self.get_item(item.item_id)
        self.conn.execute(
            "INSERT INTO items (item_id, seller_id, category, price, stock, ts, updated) VALUES "
            "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (item_id) DO UPDATE SET seller_id = "
            "excluded.seller_id, category = excluded.category, price = excluded.price, "
            "stock = excluded.stock, ts = excluded.ts, updated = excluded.updated",
            (item.item_id, item.seller_id, item.category, item.price, item.stock,
             to_epoch(item.ts), to_epoch(now or datetime.now(UTC))))
        return before

    # -- timers ------------------------------------------------------------------------------
    def add_timer(self, timer: Timer) -> bool:
        """Start a delayed trigger instance; False when this instance already exists."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO timers (instance_key, campaign, user_id, item_id, due, "
            "status, event_seq, context) VALUES (?, ?, ?, ?, ?, 'waiting', ?, ?)",
            (timer.instance_key, timer.campaign, timer.user_id, timer.item_id,
             to_epoch(timer.due), timer.event_seq, json.dumps(timer.context)))
        return cursor.rowcount == 1

    def cancel_timers(self, user_id: str, campaigns: Sequence[str], item_id: str | None) -> int:
        """Cancel the user's waiting timers of ``campaigns`` (on ``item_id`` when given, else
        all of them); how many were cancelled."""
        if not campaigns:
            return 0
        marks = ",".join("?" * len(campaigns))
        sql = (f"UPDATE timers SET status = 'cancelled' WHERE user_id = ? AND status = "
               f"'waiting' AND campaign IN ({marks})")
        args: list[Any] = [user_id, *campaigns]
        if item_id is not None:
            sql += " AND (item_id = ? OR item_id IS NULL)"
            args.append(item_id)
        return self.conn.execute(sql, args).rowcount

    def due_timers(self, now: datetime, limit: int = 1000) -> list[Timer]:
        """Waiting timers due at ``now`` or before, oldest first."""
        rows = self.conn.execute(
            "SELECT instance_key, campaign, user_id, item_id, due, event_seq, context FROM "
            "timers WHERE status = 'waiting' AND due <= ? ORDER BY due LIMIT ?",
            (to_epoch(now), limit)).fetchall()
        return [Timer(instance_key=r[0], campaign=r[1], user_id=r[2], item_id=r[3],
                      due=from_epoch(r[4]), event_seq=r[5], context=json.loads(r[6]))
                for r in rows]

    def finish_timer(self, instance_key: str) -> bool:
        """Mark a due timer fired; False when another scheduler got there first."""
        return self.conn.execute(
            "UPDATE timers SET status = 'fired' WHERE instance_key = ? AND status = 'waiting'",
            (instance_key,)).rowcount == 1

    def timers_of(self, user_id: str) -> list[dict[str, Any]]:
        """Every timer of ``user_id`` (privacy export)."""
        rows = self.conn.execute(
            "SELECT campaign, item_id, due, status FROM timers WHERE user_id = ? ORDER BY due",
            (user_id,))
        return [{"campaign": r[0], "item_id": r[1], "due": from_epoch(r[2]).isoformat(),
                 "status": r[3]} for r in rows]

    # -- outbox ------------------------------------------------------------------------------
    def add_message(self, message: OutboxMessage) -> bool:
        """Write one firing; False when its idempotency key is already in the outbox."""
        cursor = self.conn.execute(
            f"INSERT OR IGNORE INTO outbox ({_MESSAGE_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message.message_id, message.idempotency_key, message.campaign, message.user_id,
             message.arm, message.decision_id, message.channel, to_epoch(message.created),
             to_epoch(message.scheduled), message.status, message.reason, message.trigger,
             message.tier))
        return cursor.rowcount == 1

    def has_key(self, idempotency_key: str) -> bool:
        """Whether a firing with this idempotency key is already in the outbox."""
        return self.conn.execute("SELECT 1 FROM outbox WHERE idempotency_key = ?",
                                 (idempotency_key,)).fetchone() is not None

    def last_message(self, user_id: str, campaign: str) -> datetime | None:
        """When ``campaign`` last made a message (not a suppression) for ``user_id``."""
        row = self.conn.execute(
            "SELECT max(created) FROM outbox WHERE user_id = ? AND campaign = ? AND status "
            "NOT IN ('suppressed', 'cancelled')", (user_id, campaign)).fetchone()
        return None if row[0] is None else from_epoch(row[0])

    def messages(self, *, user_id: str | None = None, campaign: str | None = None,
                 status: str | None = None, after: str | None = None,
                 limit: int = 100) -> list[OutboxMessage]:
        """Outbox rows, oldest first, filtered; ``after`` is the last ``message_id`` of the
        previous page."""
        where, args = [], []
        for column, value in (("user_id", user_id), ("campaign", campaign), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if after is not None:
            where.append("(created, message_id) > (SELECT created, message_id FROM outbox "
                         "WHERE message_id = ?)")
            args.append(after)
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM outbox"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, message_id LIMIT ?"
        rows = self.conn.execute(sql, [*args, limit]).fetchall()
        return [_message(row) for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Outbox rows per campaign and status."""
        out: dict[str, dict[str, int]] = {}
        for campaign, status, n in self.conn.execute(
                "SELECT campaign, status, count(*) FROM outbox GROUP BY campaign, status"):
            out.setdefault(campaign, {})[status] = int(n)
        return out

    def reasons(self, campaign: str) -> dict[str, int]:
        """Suppressed firings of ``campaign`` per reason."""
        return {r: int(n) for r, n in self.conn.execute(
            "SELECT reason, count(*) FROM outbox WHERE campaign = ? AND status = 'suppressed' "
            "GROUP BY reason", (campaign,))}

    def get_message(self, message_id: str) -> OutboxMessage | None:
        """One outbox row by its id."""
        row = self.conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM outbox WHERE message_id = ?",
                                (message_id,)).fetchone()
        return None if row is None else _message(row)

    def contacts(self, user_id: str, since: datetime, until: datetime) -> list[Contact]:
        """Messages to ``user_id`` scheduled or sent with a send time in [since, until]."""
        rows = self.conn.execute(
            "SELECT channel, arm, scheduled FROM outbox WHERE user_id = ? AND status IN "
            "('pending', 'sending', 'sent') AND scheduled >= ? AND scheduled <= ?",
            (user_id, to_epoch(since), to_epoch(until))).fetchall()
        return [Contact(r[0], r[1], from_epoch(r[2])) for r in rows]

    # -- receipts and conversions ------------------------------------------------------------
    def add_receipt(self, message_id: str, status: str, ts: datetime, now: datetime) -> bool:
        """Record a delivery receipt; False when this status was already received."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO receipts (message_id, status, ts, received) "
            "VALUES (?, ?, ?, ?)", (message_id, status, to_epoch(ts), to_epoch(now)))
        return cursor.rowcount == 1

    def delivered_to(self, user_id: str, until: datetime) -> list[tuple[OutboxMessage,
                                                                          datetime]]:
        """The user's delivered, not yet converted messages, with when each was delivered
        (at or before ``until``), the latest first."""
        rows = self.conn.execute(
            f"SELECT {', '.join('o.' + c for c in _MESSAGE_COLUMNS.split(', '))}, r.ts "
            "FROM outbox o JOIN receipts r ON r.message_id = o.message_id AND "
            "r.status = 'delivered' WHERE o.user_id = ? AND r.ts <= ? AND NOT EXISTS "
            "(SELECT 1 FROM conversions c WHERE c.message_id = o.message_id) "
            "ORDER BY r.ts DESC", (user_id, to_epoch(until))).fetchall()
        return [(_message(row[:-1]), from_epoch(row[-1])) for row in rows]

    def add_conversion(self, message_id: str, user_id: str, event_seq: int, ts: datetime,
                       revenue: float, reward: float) -> bool:
        """Record that a purchase converted a message; False when it was converted before."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO conversions (message_id, user_id, event_seq, ts, revenue, "
            "reward) VALUES (?, ?, ?, ?, ?, ?)",
            (message_id, user_id, event_seq, to_epoch(ts), revenue, reward))
        return cursor.rowcount == 1

    def campaign_rows(self, campaign: str) -> list[dict[str, Any]]:
        """Every firing of ``campaign`` with its receipts, conversion and the user's
        purchases after it (for the campaign report)."""
        cursor = self.conn.execute(
            "SELECT o.message_id, o.user_id, o.arm, o.tier, o.status, o.reason, o.created, "
            f"o.sent, (SELECT {self.conn.group_concat('status')} FROM receipts r WHERE r.message_id = "
            "o.message_id) AS receipts, c.revenue, c.reward FROM outbox o LEFT JOIN conversions c ON "
            "c.message_id = o.message_id WHERE o.campaign = ?", (campaign,))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def purchases(self, user_ids: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
        """``{user: [(ts epoch, price)]}`` of the users' purchase events."""
        out: dict[str, list[tuple[float, float]]] = {}
        ids = list(dict.fromkeys(user_ids))
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            rows = self.conn.execute(
                f"SELECT user_id, ts, coalesce(price, 0) FROM events WHERE type = 'purchase' "
                f"AND user_id IN ({','.join('?' * len(part))})", part)
            for user_id, ts, price in rows:
                out.setdefault(user_id, []).append((float(ts), float(price)))
        return out

    # -- dispatch ----------------------------------------------------------------------------
    def claim_due(self, now: datetime, *, channels: Sequence[str], limit: int,
                  lease_seconds: float) -> list[Claim]:
        """Claim up to ``limit`` messages to send on ``channels``: those ``pending`` and due at
        ``now``, and those ``sending`` whose lease ran out (their dispatcher died or stalled).

        One statement in one write transaction turns them ``sending`` with ``lease_until =
        now + lease_seconds`` and counts the attempt, so two dispatchers never claim the same
        message; expired leases come first, then the oldest due.
        """
        if not channels:
            return []
        marks = ",".join("?" * len(channels))
        at = to_epoch(now)
        with self.transaction():
            rows = self.conn.execute(
                f"WITH due AS (SELECT message_id FROM (SELECT message_id FROM outbox WHERE "
                f"status = 'sending' AND lease_until <= ? AND channel IN ({marks}) LIMIT ?) "
                f"AS expired UNION ALL SELECT message_id FROM (SELECT message_id FROM outbox "
                f"WHERE status = 'pending' AND scheduled <= ? AND channel IN ({marks}) ORDER BY "
                f"scheduled LIMIT ?) AS ready LIMIT ?) "
                f"UPDATE outbox SET status = 'sending', lease_until = ?, attempts = attempts + 1 "
                f"WHERE message_id IN (SELECT message_id FROM due) "
                # Checked again on the row itself: PostgreSQL re-reads a row another claim
                # updated meanwhile, and this skips it instead of claiming it twice.
                f"AND (status = 'pending' OR lease_until <= ?) "
                f"RETURNING {_MESSAGE_COLUMNS}, attempts",
                (at, *channels, limit, at, *channels, limit, limit, at + lease_seconds, at),
            ).fetchall()
        claims = [Claim(message=_message(row[:-1]), attempt=row[-1]) for row in rows]
        return sorted(claims, key=lambda c: (c.message.scheduled, c.message.message_id))

    def record_attempt(self, attempt: Attempt) -> None:
        """Keep one delivery attempt (inside the caller's transaction when there is one)."""
        self.conn.execute(
            "INSERT INTO attempts (message_id, attempt, ts, ok, status_code, error, seconds) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id, attempt) DO UPDATE SET "
            "ts = excluded.ts, ok = excluded.ok, status_code = excluded.status_code, "
            "error = excluded.error, seconds = excluded.seconds",
            (attempt.message_id, attempt.attempt, to_epoch(attempt.ts), int(attempt.ok),
             attempt.status_code, attempt.error, attempt.seconds))

    def mark_sent(self, message_id: str, attempt: int, when: datetime) -> bool:
        """The channel accepted attempt ``attempt``; False when that claim is no longer ours
        (the lease ran out and another dispatcher claimed the message again)."""
        return self._settle(message_id, attempt, "status = 'sent', sent = ?, lease_until = NULL, "
                            "last_error = NULL", to_epoch(when))

    def mark_retry(self, message_id: str, attempt: int, retry_at: datetime, error: str) -> bool:
        """Attempt ``attempt`` failed: ``pending`` again, due at ``retry_at``."""
        return self._settle(message_id, attempt, "status = 'pending', scheduled = ?, "
                            "lease_until = NULL, last_error = ?", to_epoch(retry_at), error)

    def mark_dead(self, message_id: str, attempt: int, error: str) -> bool:
        """The last allowed attempt failed: ``dead`` (the dead letters), never sent again."""
        return self._settle(message_id, attempt, "status = 'dead', lease_until = NULL, "
                            "last_error = ?", error)

    def _settle(self, message_id: str, attempt: int, assignments: str, *values: Any) -> bool:
        return self.conn.execute(
            f"UPDATE outbox SET {assignments} WHERE message_id = ? AND status = 'sending' AND "
            f"attempts = ?", (*values, message_id, attempt)).rowcount == 1

    def delivery_of(self, message_id: str) -> DeliveryRecord | None:
        """Where one message stands in delivery, with every attempt recorded."""
        row = self.conn.execute(
            "SELECT status, attempts, scheduled, lease_until, sent, last_error FROM outbox "
            "WHERE message_id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        attempts = [Attempt(message_id=message_id, attempt=a[0], ts=from_epoch(a[1]),
                            ok=bool(a[2]), status_code=a[3], error=a[4], seconds=a[5])
                    for a in self.conn.execute(
                        "SELECT attempt, ts, ok, status_code, error, seconds FROM attempts WHERE "
                        "message_id = ? ORDER BY attempt", (message_id,))]
        optional = [None if value is None else from_epoch(value) for value in row[3:5]]
        return DeliveryRecord(message_id=message_id, status=row[0], attempts=row[1],
                              scheduled=from_epoch(row[2]), lease_until=optional[0],
                              sent=optional[1], last_error=row[5], history=attempts)

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, campaign: str, slot: str, now: datetime) -> bool:
        """Claim one schedule slot of ``campaign``; False when it already ran (or runs)."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO runs (campaign, slot, started) VALUES (?, ?, ?)",
            (campaign, slot, to_epoch(now)))
        return cursor.rowcount == 1

    def finish_run(self, campaign: str, slot: str, counts: dict[str, int],
                   now: datetime) -> None:
        self.conn.execute("UPDATE runs SET finished = ?, counts = ? WHERE campaign = ? AND "
                          "slot = ?", (to_epoch(now), json.dumps(counts), campaign, slot))

    def last_slot(self, campaign: str) -> str | None:
        row = self.conn.execute("SELECT max(slot) FROM runs WHERE campaign = ?",
                                (campaign,)).fetchone()
        return row[0]

    # -- privacy -----------------------------------------------------------------------------
    def erase_user(self, user_id: str) -> int:
        """Delete every event, timer, message (with its attempts, receipts and conversion)
        and listing of ``user_id``, and blank them as the seller of others' events; rows
        deleted. One transaction (rolled back on failure), ``secure_delete``, then the WAL
        is emptied."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("receipts", "attempts"):
                self.conn.execute(f"DELETE FROM {table} WHERE message_id IN (SELECT "
                                  "message_id FROM outbox WHERE user_id = ?)", (user_id,))
            deleted = sum(self.conn.execute(f"DELETE FROM {table} WHERE user_id = ?",
                                            (user_id,)).rowcount
                          for table in ("events", "timers", "conversions", "outbox"))
            deleted += self.conn.execute("DELETE FROM items WHERE seller_id = ?",
                                         (user_id,)).rowcount
            self.conn.execute("UPDATE events SET seller_id = NULL WHERE seller_id = ?",
                              (user_id,))
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        if self.conn.dialect == "sqlite":  # PostgreSQL keeps no WAL file of ours
            truncate_wal(self.conn, "campaign store")
        return deleted

    def export_user(self, user_id: str) -> dict[str, Any]:
        """The user's kept events, timers, messages (with every delivery attempt, receipt
        and conversion) and the listings they sell."""
        events = self.conn.execute(
            "SELECT type, ts, item_id, category, price, seller_id FROM events WHERE user_id = ? "
            "ORDER BY seq", (user_id,)).fetchall()
        messages = [m.model_dump(mode="json") for m in self.messages(user_id=user_id,
                                                                     limit=1_000_000)]
        for message in messages:
            message_id = message["message_id"]
            message["attempts"] = self._rows(
                "SELECT attempt, ts, ok, status_code, error, seconds FROM attempts "
                "WHERE message_id = ? ORDER BY attempt", message_id)
            message["receipts"] = self._rows(
                "SELECT status, ts, received FROM receipts WHERE message_id = ? ORDER BY ts",
                message_id)
            message["conversion"] = next(iter(self._rows(
                "SELECT ts, revenue, reward FROM conversions WHERE message_id = ?",
                message_id)), None)
        items = self._rows("SELECT item_id, category, price, stock, ts, updated FROM items "
                           "WHERE seller_id = ? ORDER BY item_id", user_id)
        return {"events": [{"type": e[0], "ts": from_epoch(e[1]).isoformat(), "item_id": e[2],
                            "category": e[3], "price": e[4], "seller_id": e[5]}
                           for e in events],
                "timers": self.timers_of(user_id),
                "messages": messages,
                "items": items}

    def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of ``sql`` as dicts, epoch columns (``ts``, ``received``, ``updated``) as
        ISO times."""
        cursor = self.conn.execute(sql, args)
        names = [c[0] for c in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            for name in ("ts", "received", "updated"):
                if row.get(name) is not None:
                    row[name] = from_epoch(row[name]).isoformat()
        return rows

    def transaction(self) -> AbstractContextManager[None]:
        """``with store.transaction():`` groups writes into one commit."""
        return self.conn.transaction()


def _message(row: Iterable[Any]) -> OutboxMessage:
    (message_id, key, campaign, user_id, arm, decision_id, channel, created, scheduled, status,
     reason, trigger, tier) = row
    return OutboxMessage(message_id=message_id, idempotency_key=key, campaign=campaign,
                         user_id=user_id, arm=arm, decision_id=decision_id, channel=channel,
                         created=from_epoch(created), scheduled=from_epoch(scheduled),
                         status=status, reason=reason, trigger=trigger, tier=tier)
