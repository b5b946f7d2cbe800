"""The audit log: append-only and hash-chained, so an edited or deleted entry is detected.

Every entry records what was done (``action``: a preference change, an erasure, an export,
a model reload or promotion, a campaign run, a key created or revoked), by whom (the API key
id or ``cli:<user>``; never a key), when, to which user (as a salted hash, so an erased
user's id is nowhere in it) and a few details. Each entry carries the hash of the one
before it and its own hash over both; :meth:`AuditLog.verify` recomputes the chain.

One SQLite file (``paths.audit_log``, WAL), or the PostgreSQL database of ``storage.url``
(:mod:`nextbest.storage`): the service's workers (on any host), the CLI and the scheduler
append to it; one write transaction per append, holding a lock every appender takes,
keeps the chain a chain.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nextbest.config import Settings
from nextbest.storage import Target, location, open_database

GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject);
"""
# Migration steps (nextbest.storage): append a step for a change, never edit a released one.
SCHEMA_STEPS = (_SCHEMA,)
APPEND_LOCK = "audit:append"


class AuditEntry(BaseModel):
    """One entry of the audit log."""

    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str | None  # salted hash of the user concerned, if any
    details: dict[str, Any]
    prev_hash: str
    hash: str


class Verification(BaseModel):
    """What ``audit verify`` found."""

    entries: int
    ok: bool
    problem: str | None = None


def id_salt(settings: Settings) -> str:
    """The secret salt of user-id hashes: ``privacy.id_salt``, else a random one made once
    and kept in ``paths.data_dir/id_salt`` (readable by its owner only)."""
    if settings.privacy.id_salt:
        return settings.privacy.id_salt
    path = Path(settings.paths.data_dir) / "id_salt"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        salt = secrets.token_hex(16)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(salt)
        return salt


def open_audit(settings: Settings) -> AuditLog:
    """The audit log of these settings."""
    return AuditLog(location(settings, "audit_log"), id_salt(settings))


def subject_hash(user_id: str, salt: str) -> str:
    """How a user is named in the audit log and on the erasure list: a salted SHA-256."""
    return hashlib.sha256(f"{salt}|{user_id}".encode()).hexdigest()


def cli_actor() -> str:
    """The actor of a command run from the CLI."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _entry_hash(prev_hash: str, ts: str, actor: str, action: str, subject: str | None,
                details: str) -> str:
    body = json.dumps([prev_hash, ts, actor, action, subject, details], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


class AuditLog:
    """The audit log in a SQLite file or a PostgreSQL database (``path`` is either)."""

    def __init__(self, path: Target, salt: str):
        self.path = path
        self.salt = salt
        self.conn = open_database(path)
        self.conn.migrate("audit_log", SCHEMA_STEPS)

    def close(self) -> None:
        self.conn.close()

    def append(self, action: str, *, actor: str, user_id: str | None = None,
               details: dict[str, Any] | None = None,
               now: datetime | None = None) -> AuditEntry:
        """Add an entry after the last one (the chain is extended in one transaction)."""
        ts = (now or datetime.now(UTC)).isoformat()
        subject = subject_hash(user_id, self.salt) if user_id is not None else None
        body = json.dumps(details or {}, sort_keys=True, default=str)
        with self.conn.transaction(lock=APPEND_LOCK):
            row = self.conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            digest = _entry_hash(prev, ts, actor, action, subject, body)
            seq = self.conn.insert(
                "INSERT INTO audit (ts, actor, action, subject, details, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (ts, actor, action, subject, body, prev, digest),
                key="seq")
        return AuditEntry(seq=seq, ts=datetime.fromisoformat(ts), actor=actor,
                          action=action, subject=subject, details=details or {},
                          prev_hash=prev, hash=digest)

    def entries(self, *, after: int = 0, limit: int = 100,
                user_id: str | None = None) -> list[AuditEntry]:
        """Entries after ``after`` (a seq), oldest first; only about ``user_id`` if given."""
        sql = ("SELECT seq, ts, actor, action, subject, details, prev_hash, hash FROM audit "
               "WHERE seq > ?")
        args: list[Any] = [after]
        if user_id is not None:
            sql += " AND subject = ?"
            args.append(subject_hash(user_id, self.salt))
        rows = self.conn.execute(sql + " ORDER BY seq LIMIT ?", [*args, limit]).fetchall()
        return [AuditEntry(seq=r[0], ts=datetime.fromisoformat(r[1]), actor=r[2], action=r[3],
                           subject=r[4], details=json.loads(r[5]), prev_hash=r[6], hash=r[7])
                for r in rows]

    def verify(self) -> Verification:
        """Recompute the chain: a changed byte, a deleted or re-ordered entry breaks it."""
        prev = GENESIS
        count = 0
        last_seq = 0
        for seq, ts, actor, action, subject, details, prev_hash, digest in self.conn.execute(
                "SELECT seq, ts, actor, action, subject, details, prev_hash, hash FROM audit "
                "ORDER BY seq"):
            count += 1
            if seq != last_seq + 1:
                return Verification(entries=count, ok=False,
                                    problem=f"entry {last_seq + 1} is missing")
            if prev_hash != prev:
                return Verification(entries=count, ok=False,
                                    problem=f"entry {seq} does not follow entry {seq - 1}")
            if _entry_hash(prev_hash, ts, actor, action, subject, details) != digest:
                return Verification(entries=count, ok=False,
                                    problem=f"entry {seq} was changed")
            prev, last_seq = digest, seq
        # The key's sequence remembers the highest seq ever written: a deleted last entry
        # shows.
        row = self.conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit'" if self.conn.dialect ==
            "sqlite" else "SELECT pg_sequence_last_value(pg_get_serial_sequence('audit', "
            "'seq'))").fetchone()
        if row is not None and row[0] is not None and row[0] > last_seq:
            return Verification(entries=count, ok=False,
                                problem=f"entries {last_seq + 1} to {row[0]} are missing")
        return Verification(entries=count, ok=True)
