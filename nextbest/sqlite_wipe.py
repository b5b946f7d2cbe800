"""Erasing from SQLite so that no byte stays behind: ``secure_delete`` and the WAL.

A plain ``DELETE`` leaves the row's bytes in the freed page until it is reused, and in WAL
mode the page images written before the delete stay in the ``-wal`` file until a
checkpoint. Every store that erases users turns ``secure_delete`` on for its connections
(freed content is overwritten with zeros) and, after committing an erasure, checkpoints
with ``TRUNCATE`` (the pages are copied into the database and the ``-wal`` file emptied).
"""

from __future__ import annotations

import sqlite3
import time

from nextbest.errors import ErasureFailed

CHECKPOINT_ATTEMPTS = 100
CHECKPOINT_PAUSE_SECONDS = 0.05


def secure(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Turn ``secure_delete`` on for ``conn``: deleted content is overwritten with zeros."""
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def truncate_wal(conn: sqlite3.Connection, place: str) -> None:
    """Checkpoint ``conn``'s database with ``TRUNCATE``: afterwards its ``-wal`` file is
    empty, so no page image from before an erasure remains in it.

    A reader in the middle of a transaction can hold the checkpoint back for a moment: it is
    retried for a few seconds, then :class:`ErasureFailed` names ``place`` (the erasure is
    committed; running it again empties the WAL)."""
    for _ in range(CHECKPOINT_ATTEMPTS):
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return
        time.sleep(CHECKPOINT_PAUSE_SECONDS)
    raise ErasureFailed(f"{place}: the erasure is committed but its write-ahead log could "
                        "not be emptied (a reader kept a transaction open); run the erasure "
                        "again", field=place)
