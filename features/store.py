"""The online store: the latest features, tier, segment and tags of each user.

One interface, :class:`OnlineStore`, and two backends with the same behaviour:

- :class:`SqliteStore` (default): one SQLite file in WAL mode, so several worker processes
  can read while the features build writes. One row per user holds the record (JSON text),
  the tags the user removed and the user's preferences, so a lookup is one primary-key read
  and an erasure is one ``DELETE``.
- :class:`RedisStore`: one hash per user under ``store.redis_prefix`` with the same fields,
  plus a meta hash; conditional writes run as Lua scripts so they are atomic and take one
  round trip per chunk of users.

Erasure sticks: the store keeps an erasure list (salted hash of the user id -> time erased;
the salt is ``privacy.id_salt``, so the list names no one). :meth:`OnlineStore.erase`
deletes what is stored about a user and adds them to it in one step, and every write
(:meth:`~OnlineStore.write`, :meth:`~OnlineStore.load_preferences`,
:meth:`~OnlineStore.set_preferences`) skips listed users inside the same statement or
script, so a features rebuild from tables that still hold the user cannot bring them back;
:meth:`~OnlineStore.update_preferences` refuses them (:class:`~nextbest.errors.Gone`).
SQLite erases with ``secure_delete`` and empties its WAL afterwards
(:mod:`nextbest.sqlite_wipe`).

Writes keep the newest data: a record is replaced only by one with the same or a later
``as_of``, loaded preferences only by ones with the same or a later ``updated_ts``. Both are
compared as ISO strings (``stamps``), which order like the dates they spell. A write says
how many newer records it kept (:class:`RecordsLoaded`), so a store pinned to a later date
(a build with a mistaken ``as_of``) is visible; :meth:`~OnlineStore.load_records` with
``replace_newer`` puts an older date back, and :meth:`~OnlineStore.reset` empties the
records while keeping what users chose (preferences, removed tags) and the erasure list.

The store also keeps the review queue (:mod:`features.review`): :meth:`~OnlineStore.load_records`
puts users whose record carries risk reasons into it, operators clear or confirm them
(:meth:`~OnlineStore.decide_review`), and every record shows ``under_review`` and
``review_reasons``. Resets and refreshes keep the queue; erasure removes the user from it.

The record format is in docs/CONTRACT.md ("Online store record").
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
from pydantic import BaseModel
from pydantic_core import from_json

from features import review
from features.review import REVIEW_STATUSES, ReviewItem
from nextbest.audit import id_salt, subject_hash
from nextbest.config import Settings
from nextbest.errors import DataError, Gone, MissingComponent, NotFound, ValidationFailed
from nextbest.sqlite_wipe import secure, truncate_wal

PREFERENCE_FLAGS = ("personalization", "marketing_email", "marketing_sms", "marketing_push")
WRITE_CHUNK_ROWS = 5000
ENCODE_CHUNK_ROWS = 50_000
SCAN_CHUNK_ROWS = 50_000
# Record fields read as text whatever they look like (pyarrow would make as_of a timestamp).
_TEXT_FIELDS = pa_json.ParseOptions(
    explicit_schema=pa.schema([("user_id", pa.string()), ("as_of", pa.string())]),
    unexpected_field_behavior="infer")
# What every record read back adds to the columns written: the user's review state.
REVIEW_FIELDS = ("under_review", "review_status", "review_reasons")


class Preferences(BaseModel):
    """What a user allows. Every flag is ``True`` until the user says otherwise."""

    personalization: bool = True
    marketing_email: bool = True
    marketing_sms: bool = True
    marketing_push: bool = True
    updated_ts: datetime | None = None


class Erasure(BaseModel):
    """One entry of the erasure list: the salted hash of who was erased, and when (UTC)."""

    id_hash: str
    erased_ts: datetime


class EncodedChunk(NamedTuple):
    """User ids and their JSON records, in the same order."""

    ids: list[str]
    records: list[str]


class RecordsLoaded(NamedTuple):
    """What a bulk write of records did.

    ``written``: records stored; ``kept_newer``: users of the frame whose stored record has
    a later as_of and was kept; ``cleared``: records later than the frame's as_of removed
    for users not in the frame (only when replacing newer records); ``reviews_opened``:
    users the frame's risk reasons put into the review queue (new or reopened)."""

    written: int
    kept_newer: int = 0
    cleared: int = 0
    reviews_opened: int = 0


class StoreEntry(NamedTuple):
    """One user as :meth:`OnlineStore.scan` yields them."""

    user_id: str
    record: dict[str, Any]
    preferences: Preferences


class StoredUser(NamedTuple):
    """The raw fields stored for one user; any of them may be missing (``None``)."""

    record: str | None
    removed: str | None
    prefs: str | None
    review: str | None = None


# Reads the current reviews of some users (those with a record, not erased) and returns the
# reviews to store; the backends run it atomically (:meth:`OnlineStore._update_reviews`).
ReviewChange = Callable[[dict[str, ReviewItem]], dict[str, ReviewItem]]


def _stamp(ts: datetime | pd.Timestamp | None) -> str:
    """A sortable ISO text of a timestamp; the empty string (older than all) for none."""
    if ts is None or pd.isna(ts):
        return ""
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S.%f")


def check_user_ids(frame: pd.DataFrame) -> pd.Series:
    """The user ids of ``frame`` as strings; :class:`DataError` if missing or repeated."""
    if "user_id" not in frame.columns:
        raise DataError("the frame written to the online store has no user_id column",
                        field="user_id")
    ids = frame["user_id"].astype(str)
    repeated = ids.duplicated()
    if repeated.any():
        raise DataError(f"the frame written to the online store has user_id "
                        f"{ids[repeated].iloc[0]!r} more than once; it must hold one row per "
                        "user", field="user_id")
    return ids


def encode_records(frame: pd.DataFrame, as_of: date,
                   chunk_rows: int = ENCODE_CHUNK_ROWS) -> Iterator[EncodedChunk]:
    """The user ids and JSON records of ``frame``, with ``as_of`` set to the date, in chunks.

    pandas' C JSON writer turns NaN/NA into ``null`` and lists (tags) into arrays about 3x
    faster than a per-row ``json.dumps``; floats keep 15 significant digits. Chunks bound
    the memory a 1M-row write needs to a few copies of ``chunk_rows`` records.
    """
    out = frame.assign(user_id=check_user_ids(frame), as_of=as_of.isoformat())
    return _encode_chunks(out, chunk_rows)


def _encode_chunks(out: pd.DataFrame, chunk_rows: int) -> Iterator[EncodedChunk]:
    """The lazy part of :func:`encode_records`, so that bad frames fail before any write."""
    for part in _chunks(len(out), chunk_rows):
        piece = out.iloc[part]
        text = piece.to_json(orient="records", lines=True, double_precision=15,
                             date_format="iso")
        yield EncodedChunk(piece["user_id"].tolist(), text.rstrip("\n").split("\n"))


def _preferences_of(stored: StoredUser | None) -> Preferences:
    """The preferences held in a fetched row; all flags True when the user set none."""
    if stored is None or stored.prefs is None:
        return Preferences()
    return Preferences.model_validate_json(stored.prefs)


def decode_stored(stored: StoredUser | None) -> tuple[dict[str, Any] | None, Preferences]:
    """The record and preferences of a fetched row (:meth:`OnlineStore.get_with_preferences`)."""
    return (decode_record(stored) if stored else None), _preferences_of(stored)


def decode_record(stored: StoredUser) -> dict[str, Any] | None:
    """The record as returned by :meth:`OnlineStore.get`: tags minus the user-removed ones,
    and the review state: ``under_review`` (automated incentives off until an operator
    clears the user), ``review_status`` (None outside the queue) and ``review_reasons``."""
    if stored.record is None:
        return None
    record = from_json(stored.record)  # pydantic's parser: ~2.5x json.loads, per decision
    if stored.removed and record.get("tags"):
        record["tags"] = _without(record["tags"], stored.removed)
    record.update(_review_fields(stored))
    return record


def _review_fields(stored: StoredUser) -> dict[str, Any]:
    """The review state every record read back carries (:data:`REVIEW_FIELDS`)."""
    item = ReviewItem.model_validate_json(stored.review) if stored.review else None
    return {"under_review": bool(item and item.under_review),
            "review_status": item.status if item else None,
            "review_reasons": list(item.reasons) if item and item.under_review else []}


def records_frame(rows: Sequence[tuple[str, StoredUser]]) -> pd.DataFrame:
    """The records of ``rows`` as one frame, a row per user in the order given, with the
    values :meth:`OnlineStore.get` returns (tags minus the user-removed ones, the review
    state).

    The JSON texts are parsed together by pyarrow's reader, several times faster than
    ``json.loads`` per record and a frame built from the dicts. A chunk whose column changed
    type between builds (a number in one record, text in another) is read record by record.
    Numbers come out as float or int columns, ``tags`` as arrays (None when absent).
    """
    kept = [stored for _, stored in rows if stored.record is not None]
    if not kept:
        return pd.DataFrame({"user_id": pd.Series([], dtype=object)})
    texts = [stored.record for stored in kept]
    try:
        frame = pa_json.read_json(io.BytesIO("\n".join(texts).encode()),
                                  parse_options=_TEXT_FIELDS).to_pandas()
    except pa.ArrowInvalid:
        frame = pd.DataFrame.from_records([json.loads(text) for text in texts])
    removed = [stored.removed for stored in kept]
    if "tags" in frame.columns and any(removed):
        frame["tags"] = [_without(tags, hidden)
                         for tags, hidden in zip(frame["tags"], removed, strict=True)]
    reviews = [_review_fields(stored) for stored in kept]
    for name in REVIEW_FIELDS:
        frame[name] = [review[name] for review in reviews]
    return frame


def _without(tags: Sequence[str] | None, removed: str | None) -> Sequence[str] | None:
    """``tags`` minus the JSON array ``removed`` (the tags the user removed)."""
    if not removed or tags is None:
        return tags
    hidden = set(json.loads(removed))
    return [t for t in tags if t not in hidden]


def flagged_users(frame: pd.DataFrame) -> dict[str, list[str]]:
    """``{user_id: risk reasons}`` of the rows of ``frame`` with any (column ``risk_reasons``)."""
    if "risk_reasons" not in frame.columns:
        return {}
    reasons = frame["risk_reasons"]
    has = reasons.map(lambda r: r is not None and not isinstance(r, float) and len(r) > 0)
    chosen = frame.loc[has.to_numpy(bool)]
    return {str(u): [str(r) for r in rs]
            for u, rs in zip(chosen["user_id"], chosen["risk_reasons"], strict=True)}


def preference_rows(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(user_id, stamp, preferences JSON)`` per user of a raw preferences table.

    The latest ``updated_ts`` of each user wins; a missing flag column or value means True.
    The JSON is exactly :class:`Preferences`' own (``model_dump_json``), built column-wise:
    a features build loads every user's preferences, and a model per row costs ~60 us.
    """
    if "user_id" not in frame.columns:
        raise DataError("the preferences table has no user_id column", field="user_id")
    if frame.empty:
        return []
    prefs = frame.copy()
    if "updated_ts" not in prefs.columns:
        prefs["updated_ts"] = pd.NaT
    ts = pd.to_datetime(prefs["updated_ts"])
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    prefs["updated_ts"] = ts
    prefs = prefs.sort_values("updated_ts", kind="stable", na_position="first")
    prefs = prefs.drop_duplicates("user_id", keep="last")
    missing = prefs["updated_ts"].isna().to_numpy(bool)
    # The stamp (_stamp's format), and datetime.isoformat as pydantic writes it: microseconds
    # only when there are some.
    stamps = np.datetime_as_string(prefs["updated_ts"].to_numpy("datetime64[us]"), unit="us")
    iso = np.where(np.char.endswith(stamps, ".000000"), np.char.replace(stamps, ".000000", ""),
                   stamps)
    fields = []
    for flag in PREFERENCE_FLAGS:
        values = prefs[flag] if flag in prefs.columns else pd.Series(True, index=prefs.index)
        words = np.where(values.astype("boolean").fillna(True).to_numpy(bool), "true", "false")
        fields.append(f'"{flag}":' + words.astype(object))
    fields.append('"updated_ts":' + np.where(missing, "null", '"' + iso.astype(object) + '"'))
    text = "{" + fields[0] + "," + fields[1] + "," + fields[2] + "," + fields[3] + "," \
        + fields[4] + "}"
    stamps = np.where(missing, "", stamps)
    return list(zip(prefs["user_id"].astype(str).tolist(), stamps.tolist(), text.tolist(),
                    strict=True))


def _now_stamp(now: datetime | None) -> str:
    """The erasure time as a stamp: ``now`` (naive UTC) or the current UTC time."""
    if now is None:
        now = datetime.now(UTC)
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    return _stamp(now)


def gone(user_id: str) -> Gone:
    """The error of a write about an erased user."""
    return Gone(f"user {user_id!r} was erased at their request; nothing about them is "
                "stored again", field="user_id")


def unique_user_ids(user_ids: Iterable[str]) -> list[str]:
    """The ids as strings, first occurrence order, empty ones refused."""
    ids = list(dict.fromkeys(str(u) for u in user_ids))
    if any(not u for u in ids):
        raise DataError("an empty user id cannot be erased", field="user_id")
    return ids


def _chunks(n: int, size: int = WRITE_CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class OnlineStore(ABC):
    """Latest features, tier, segment, tags and preferences per user.

    Subclasses implement the storage primitives (``_put_records``, ``_put_preferences``,
    ``_fetch``) and the single-user operations; the record format lives here, once.
    """

    backend: str = ""
    salt: str = ""  # of the erasure list's hashes (privacy.id_salt)

    def write(self, frame: pd.DataFrame, as_of: date) -> int:
        """Upsert one record per row of ``frame`` (one row per user) as of ``as_of``.

        A user whose stored record has a later ``as_of`` keeps it; a user on the erasure list
        is skipped. Returns the rows written (:meth:`load_records` says what was kept).
        """
        return self.load_records(frame, as_of).written

    def load_records(self, frame: pd.DataFrame, as_of: date, *,
                     replace_newer: bool = False) -> RecordsLoaded:
        """:meth:`write`, saying how many newer records were kept.

        With ``replace_newer`` the store is put back to ``as_of``: every user of ``frame``
        gets its record even over a later one, and records later than ``as_of`` of users
        not in ``frame`` are removed (their preferences and removed tags stay). Users on the
        erasure list are skipped either way.
        """
        loaded = self._put_records(encode_records(frame, as_of), as_of.isoformat(),
                                   replace_newer=replace_newer)
        opened = self.flag_for_review(flagged_users(frame), as_of)
        return loaded._replace(reviews_opened=opened)

    # -- the review queue ---------------------------------------------------------------------
    def flag_for_review(self, flags: Mapping[str, Sequence[str]], as_of: date, *,
                        now: datetime | None = None) -> int:
        """Put users with risk reasons (``{user_id: ["tag: reason", ...]}``) into the review
        queue, as :func:`features.review.flag` says; users without a record, and erased
        users, are skipped. Returns how many became pending (new or reopened)."""
        if not flags:
            return 0
        stamp, day = review.utc_now(now), as_of.isoformat()
        opened = 0

        def change(current: dict[str, ReviewItem]) -> dict[str, ReviewItem]:
            nonlocal opened
            out = {}
            for user_id, reasons in flags.items():
                before = current.get(user_id)
                item = review.flag(before, user_id, list(reasons), day, stamp)
                if item is not None:
                    out[user_id] = item
                    opened += before is None or before.status == "cleared"
            return out

        for part in _chunks(len(flags)):
            self._update_reviews(list(flags)[part], change)
        return opened

    def decide_review(self, user_id: str, decision: str, note: str, by: str, *,
                      now: datetime | None = None) -> ReviewItem:
        """Clear (incentives come back) or confirm (they stay off) the user's review, with a
        note and the operator's name. NotFound when the user is not in the queue."""
        stamp = review.utc_now(now)

        def change(current: dict[str, ReviewItem]) -> dict[str, ReviewItem]:
            if user_id not in current:
                raise NotFound(f"user {user_id!r} is not in the review queue", field="user_id")
            return {user_id: review.decide(current[user_id], decision, note, by, stamp)}

        return self._update_reviews([user_id], change)[user_id]

    def review(self, user_id: str) -> ReviewItem | None:
        """The user's review, or None when they were never in the queue."""
        stored = self._fetch([user_id]).get(user_id)
        return ReviewItem.model_validate_json(stored.review) if stored and stored.review \
            else None

    def reviews(self, status: str | None = "pending") -> list[ReviewItem]:
        """The reviews with ``status`` (None: all), oldest first (then by user id)."""
        if status is not None and status not in REVIEW_STATUSES:
            raise ValidationFailed(f"status {status!r} must be one of "
                                   f"{', '.join(REVIEW_STATUSES)}", field="status")
        items = [ReviewItem.model_validate_json(raw) for raw in self._all_reviews()]
        chosen = [i for i in items if status is None or i.status == status]
        return sorted(chosen, key=lambda i: (i.opened_ts, i.user_id))

    def reset(self) -> int:
        """Remove every record; keep preferences, removed tags and the erasure list.

        Returns the records removed."""
        return self._clear_records("")

    def get(self, user_id: str) -> dict[str, Any] | None:
        """The user's record (docs/CONTRACT.md), or None for an unknown user."""
        stored = self._fetch([user_id]).get(user_id)
        return decode_record(stored) if stored else None

    def get_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The records of the known users among ``user_ids``, keyed by user id."""
        found = {}
        for user_id, stored in self._fetch(list(dict.fromkeys(user_ids))).items():
            record = decode_record(stored)
            if record is not None:
                found[user_id] = record
        return found

    def get_frame(self, user_ids: Sequence[str]) -> pd.DataFrame:
        """The records of the known users among ``user_ids`` as one frame (a row per user,
        first occurrence order; :func:`records_frame`): the bulk read of batch scoring."""
        ids = list(dict.fromkeys(user_ids))
        stored = self._fetch(ids)
        return records_frame([(u, stored[u]) for u in ids if u in stored])

    def iter_frames(self, chunk_rows: int = SCAN_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        """Every record of the store, as frames of at most ``chunk_rows`` users
        (:func:`records_frame`). Each chunk is its own read: a write running meanwhile may
        or may not show in later chunks, but no user comes twice."""
        for rows in self._scan(chunk_rows):
            if rows:
                yield records_frame(rows)

    def scan(self, chunk_rows: int = SCAN_CHUNK_ROWS) -> Iterator[list[StoreEntry]]:
        """Every user with a record, ``chunk_rows`` at a time, each with their record (as
        :meth:`get` gives it) and preferences: for audiences over all users."""
        for rows in self._scan(chunk_rows):
            entries = []
            for user_id, stored in rows:
                record = decode_record(stored)
                if record is not None:
                    entries.append(StoreEntry(user_id, record, _preferences_of(stored)))
            if entries:
                yield entries

    def get_preferences(self, user_id: str) -> Preferences:
        """The user's preferences; all flags True for a user who never set any."""
        return _preferences_of(self._fetch([user_id]).get(user_id))

    def get_preferences_many(self, user_ids: Sequence[str]) -> dict[str, Preferences]:
        """The preferences of every user of ``user_ids`` in one read (as
        :meth:`get_preferences` gives them: all flags True for a user who set none)."""
        ids = list(dict.fromkeys(user_ids))
        stored = self._fetch(ids)
        return {user_id: _preferences_of(stored.get(user_id)) for user_id in ids}

    def get_with_preferences(self, user_id: str) -> tuple[dict[str, Any] | None, Preferences]:
        """:meth:`get` and :meth:`get_preferences` from one read (every decision needs both)."""
        return decode_stored(self.get_stored(user_id))

    def get_stored(self, user_id: str) -> StoredUser | None:
        """The raw fields stored for ``user_id`` (None: nothing), undecoded: for a caller
        that keeps what it decoded from them (:func:`decode_stored`) and reuses it while
        they are unchanged."""
        return self._fetch([user_id]).get(user_id)

    def set_preferences(self, user_id: str, prefs: Preferences) -> None:
        """Store what the user chose now; ``updated_ts`` defaults to the current UTC time.
        Nothing is stored for an erased user."""
        if prefs.updated_ts is None:
            now = datetime.now(UTC).replace(tzinfo=None)
            prefs = prefs.model_copy(update={"updated_ts": now})
        row = (user_id, _stamp(prefs.updated_ts), prefs.model_dump_json())
        self._put_preferences([row], only_newer=False)

    def update_preferences(self, user_id: str, changes: Mapping[str, bool], *,
                           now: datetime | None = None) -> Preferences:
        """Change some of the user's flags and stamp the change, atomically: two replicas
        changing different flags of one user at once both count (read, merge and write in
        one SQLite transaction, or under Redis ``WATCH``). Returns the preferences stored.

        Raises :class:`~nextbest.errors.Gone` for an erased user (nothing is stored)."""
        unknown = sorted(set(changes) - set(PREFERENCE_FLAGS))
        if unknown:
            raise ValidationFailed(f"unknown preference {unknown[0]!r}", field=unknown[0])

        def merge(current: Preferences) -> tuple[str, str]:
            updated = current.model_copy(update={**changes, "updated_ts": None})
            stamp = _now_stamp(now)
            updated.updated_ts = datetime.fromisoformat(stamp)
            return stamp, updated.model_dump_json()

        return Preferences.model_validate_json(self._update_preferences(user_id, merge))

    @abstractmethod
    def _update_preferences(self, user_id: str,
                            merge: Callable[[Preferences], tuple[str, str]]) -> str:
        """Read the user's preferences, store ``merge``'s (stamp, JSON) in the same
        transaction and return the JSON; raise ``gone(user_id)`` for an erased user."""

    def load_preferences(self, frame: pd.DataFrame) -> int:
        """Bulk-load the raw preferences table; newer stored preferences are kept and erased
        users skipped. Returns the users written."""
        return self._put_preferences(preference_rows(frame), only_newer=True)

    def erase(self, user_id: str, *, now: datetime | None = None) -> bool:
        """Delete everything stored about the user and put them on the erasure list, so later
        bulk writes skip them. False if nothing was stored (the user is listed anyway)."""
        return self.erase_many([user_id], now=now) > 0

    def erase_many(self, user_ids: Iterable[str], *, now: datetime | None = None) -> int:
        """:meth:`erase` for several users in one step; returns how many had anything stored.

        ``now`` (default: the current UTC time) is recorded as the erasure time; a user
        erased before keeps the first time."""
        ids = unique_user_ids(user_ids)
        return self._erase(ids, _now_stamp(now)) if ids else 0

    def erasures(self) -> list[Erasure]:
        """The erasure list (salted hashes), oldest first (then by hash)."""
        rows = sorted(self._erased().items(), key=lambda item: (item[1], item[0]))
        return [Erasure(id_hash=h, erased_ts=datetime.fromisoformat(ts)) for h, ts in rows]

    def erasure_hash(self, user_id: str) -> str:
        """How the erasure list names ``user_id``: its salted SHA-256."""
        return subject_hash(str(user_id), self.salt)

    def is_erased(self, user_id: str) -> bool:
        """Whether the user is on the erasure list."""
        return bool(self.erased_among([user_id]))

    def erased_among(self, user_ids: Iterable[str]) -> set[str]:
        """The ids among ``user_ids`` that are on the erasure list."""
        ids = list(dict.fromkeys(str(u) for u in user_ids))
        if not ids:
            return set()
        hashes = {self.erasure_hash(u): u for u in ids}
        return {hashes[h] for h in self._erased(list(hashes))}

    def export(self, user_id: str) -> dict[str, Any]:
        """Everything stored about the user: the record as built (all tags), the tags the user
        removed and the preferences (None where nothing is stored)."""
        stored = self._fetch([user_id]).get(user_id) or StoredUser(None, None, None)
        return {
            "user_id": user_id,
            "record": json.loads(stored.record) if stored.record else None,
            "removed_tags": json.loads(stored.removed) if stored.removed else [],
            "preferences": json.loads(stored.prefs) if stored.prefs else None,
            "review": json.loads(stored.review) if stored.review else None,
        }

    @abstractmethod
    def _put_records(self, chunks: Iterable[EncodedChunk], as_of: str, *,
                     replace_newer: bool) -> RecordsLoaded:
        """Write records unless a stored one has a later as_of (``replace_newer``: write
        them all, then clear later records); erased users are skipped.

        All chunks go in one transaction where the backend has transactions."""

    @abstractmethod
    def _clear_records(self, after: str) -> int:
        """Remove the records whose as_of is later than ``after`` ('' for all), keeping
        preferences, removed tags and the erasure list; return how many were removed."""

    @abstractmethod
    def _put_preferences(self, rows: list[tuple[str, str, str]], *, only_newer: bool) -> int:
        """Write ``(user_id, stamp, json)`` preferences; with ``only_newer`` keep later ones."""

    @abstractmethod
    def _fetch(self, user_ids: list[str]) -> dict[str, StoredUser]:
        """What is stored for each of ``user_ids`` that has anything stored."""

    @abstractmethod
    def _scan(self, chunk_rows: int) -> Iterator[list[tuple[str, StoredUser]]]:
        """Every user with a record, in chunks of at most ``chunk_rows``, each user once."""

    @abstractmethod
    def _update_reviews(self, user_ids: list[str], change: ReviewChange
                        ) -> dict[str, ReviewItem]:
        """Atomically: read the reviews of those of ``user_ids`` that have a record (and are
        not erased), store what ``change`` returns for them, and return it."""

    @abstractmethod
    def _all_reviews(self) -> list[str]:
        """Every stored review, as JSON."""

    @abstractmethod
    def _erase(self, user_ids: list[str], stamp: str) -> int:
        """Delete the users' rows and list their hashes as erased at ``stamp`` (kept if listed);
        return how many had anything stored."""

    @abstractmethod
    def _erased(self, hashes: list[str] | None = None) -> dict[str, str]:
        """``{id hash: erased stamp}`` of the listed hashes among ``hashes`` (all if None)."""

    @abstractmethod
    def remove_tag(self, user_id: str, tag: str) -> bool:
        """Hide ``tag`` from the user's record now and after every later write.

        Returns False (and stores nothing) when the user has no record."""

    @abstractmethod
    def delete(self, user_id: str) -> bool:
        """Delete the user's record, preferences and removed tags, without listing the user
        as erased (a later write brings the record back); False if nothing was stored."""

    @abstractmethod
    def meta(self) -> dict[str, Any]:
        """``{"backend", "as_of" (latest record as_of or None), "users" (with a record)}``."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    as_of TEXT,
    record TEXT,
    removed TEXT,
    prefs TEXT,
    prefs_ts TEXT,
    review TEXT
);
CREATE INDEX IF NOT EXISTS users_as_of ON users (as_of);
"""
_SQLITE_ERASED_TABLE = """
CREATE TABLE IF NOT EXISTS erased (
    id_hash TEXT PRIMARY KEY,
    erased_ts TEXT NOT NULL
)"""
# Bulk writes skip erased users in the same statement, so an erasure committed before the
# write's transaction is always honoured. (INSERT ... SELECT ... WHERE needs the WHERE for
# SQLite to parse the upsert clause.)
_SQLITE_NOT_ERASED = ("WHERE NOT EXISTS (SELECT 1 FROM erased "
                      "WHERE erased.id_hash = erasure_hash(?1))")
_SQLITE_REPLACE_RECORD = f"""
INSERT INTO users (user_id, as_of, record) SELECT ?1, ?2, ?3 {_SQLITE_NOT_ERASED}
ON CONFLICT (user_id) DO UPDATE SET as_of = excluded.as_of, record = excluded.record
"""
_SQLITE_PUT_RECORD = _SQLITE_REPLACE_RECORD + """
WHERE users.as_of IS NULL OR users.as_of <= excluded.as_of
"""
# Users of a chunk (a JSON array of ids) whose stored record is later than ?1.
_SQLITE_COUNT_NEWER = """
SELECT count(*) FROM users WHERE as_of > ?1 AND user_id IN (SELECT value FROM json_each(?2))
"""
_SQLITE_CLEAR_RECORDS = "UPDATE users SET as_of = NULL, record = NULL WHERE as_of > ?"
_SQLITE_DROP_EMPTY = ("DELETE FROM users WHERE record IS NULL AND removed IS NULL "
                      "AND prefs IS NULL AND review IS NULL")
_SQLITE_REVIEW_INDEX = ("CREATE INDEX IF NOT EXISTS users_review ON users (user_id) "
                        "WHERE review IS NOT NULL")
_SQLITE_LOAD_PREFS = f"""
INSERT INTO users (user_id, prefs_ts, prefs) SELECT ?1, ?2, ?3 {_SQLITE_NOT_ERASED}"""
_SQLITE_PREFS_UPSERT = """
ON CONFLICT (user_id) DO UPDATE SET prefs_ts = excluded.prefs_ts, prefs = excluded.prefs
"""
_SQLITE_ONLY_NEWER = " WHERE users.prefs_ts IS NULL OR users.prefs_ts <= excluded.prefs_ts"
# Appends the tag to the JSON array unless it is already there, in one atomic statement.
_SQLITE_REMOVE_TAG = """
UPDATE users SET removed = CASE
    WHEN EXISTS (SELECT 1 FROM json_each(coalesce(removed, '[]')) WHERE value = ?2)
    THEN removed ELSE json_insert(coalesce(removed, '[]'), '$[#]', ?2) END
WHERE user_id = ?1 AND record IS NOT NULL
"""
_SQLITE_IN_CHUNK = 500


class SqliteStore(OnlineStore):
    """The online store in one SQLite file (WAL), safe for threads and worker processes.

    Each thread (and each process after a fork) opens its own connection on first use.
    """

    backend = "sqlite"

    def __init__(self, path: Path, timeout_seconds: float = 30.0, salt: str = ""):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.salt = salt
        self._timeout = timeout_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        # (pid, connection): close() closes only this process's; a forked worker must not
        # close its parent's connections.
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._closed = False
        with self._conn() as conn:
            conn.executescript(_SQLITE_SCHEMA)
            conn.execute(_SQLITE_ERASED_TABLE)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
            if "review" not in columns:  # a store created before the review queue
                conn.execute("ALTER TABLE users ADD COLUMN review TEXT")
            conn.execute(_SQLITE_REVIEW_INDEX)
            self._hash_old_erasure_list(conn)

    def _hash_old_erasure_list(self, conn: sqlite3.Connection) -> None:
        """A store made when the erasure list held plain ids: replace them by their hashes
        (securely deleted, WAL emptied)."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(erased)")}
        if "user_id" not in columns:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute("SELECT user_id, erased_ts FROM erased").fetchall()
            conn.execute("DROP TABLE erased")
            conn.execute(_SQLITE_ERASED_TABLE)
            conn.executemany("INSERT OR IGNORE INTO erased (id_hash, erased_ts) VALUES (?, ?)",
                             [(self.erasure_hash(u), ts) for u, ts in rows])
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("VACUUM")
        truncate_wal(conn, "online store")

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and configured) on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if self._closed:
            raise RuntimeError("the online store is closed")
        conn = sqlite3.connect(self.path, timeout=self._timeout, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        secure(conn)
        salt = self.salt
        conn.create_function("erasure_hash", 1, lambda user_id: subject_hash(str(user_id), salt),
                             deterministic=True)
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._connections.append((os.getpid(), conn))
        return conn

    def _run_many(self, sql: str, batches: Iterable[Iterable[tuple[Any, ...]]]) -> int:
        """Execute ``sql`` for every row of every batch in one transaction; return the rows
        changed."""
        conn = self._conn()
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            for rows in batches:
                conn.executemany(sql, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return conn.total_changes - before

    def _put_records(self, chunks: Iterable[EncodedChunk], as_of: str, *,
                     replace_newer: bool) -> RecordsLoaded:
        conn = self._conn()
        written = kept = cleared = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for chunk in chunks:
                if not replace_newer:
                    kept += conn.execute(_SQLITE_COUNT_NEWER,
                                         (as_of, json.dumps(chunk.ids))).fetchone()[0]
                before = conn.total_changes
                conn.executemany(_SQLITE_REPLACE_RECORD if replace_newer else _SQLITE_PUT_RECORD,
                                 zip(chunk.ids, [as_of] * len(chunk.ids), chunk.records,
                                     strict=True))
                written += conn.total_changes - before
            if replace_newer:
                cleared = self._clear_in_transaction(conn, as_of)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return RecordsLoaded(written, kept, cleared)

    @staticmethod
    def _clear_in_transaction(conn: sqlite3.Connection, after: str) -> int:
        """Clear records later than ``after`` and drop rows left with nothing stored."""
        cleared = conn.execute(_SQLITE_CLEAR_RECORDS, (after,)).rowcount
        conn.execute(_SQLITE_DROP_EMPTY)
        return cleared

    def _clear_records(self, after: str) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cleared = self._clear_in_transaction(conn, after)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return cleared

    def _put_preferences(self, rows: list[tuple[str, str, str]], *, only_newer: bool) -> int:
        sql = _SQLITE_LOAD_PREFS + _SQLITE_PREFS_UPSERT
        return self._run_many(sql + _SQLITE_ONLY_NEWER if only_newer else sql, [rows])

    def _update_preferences(self, user_id: str,
                            merge: Callable[[Preferences], tuple[str, str]]) -> str:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM erased WHERE id_hash = erasure_hash(?)",
                            (user_id,)).fetchone():
                raise gone(user_id)
            row = conn.execute("SELECT prefs FROM users WHERE user_id = ?",
                               (user_id,)).fetchone()
            current = Preferences.model_validate_json(row[0]) if row and row[0] else Preferences()
            stamp, text = merge(current)
            conn.execute(_SQLITE_LOAD_PREFS + _SQLITE_PREFS_UPSERT, (user_id, stamp, text))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return text

    def _fetch(self, user_ids: list[str]) -> dict[str, StoredUser]:
        conn = self._conn()
        if len(user_ids) == 1:
            row = conn.execute("SELECT record, removed, prefs, review FROM users "
                               "WHERE user_id = ?", (user_ids[0],)).fetchone()
            return {user_ids[0]: StoredUser(*row)} if row else {}
        found = {}
        for part in _chunks(len(user_ids), _SQLITE_IN_CHUNK):
            ids = user_ids[part]
            sql = ("SELECT user_id, record, removed, prefs, review FROM users WHERE user_id IN "
                   f"({','.join('?' * len(ids))})")
            for user_id, *fields in conn.execute(sql, ids):
                found[user_id] = StoredUser(*fields)
        return found

    def _scan(self, chunk_rows: int) -> Iterator[list[tuple[str, StoredUser]]]:
        """Pages in rowid order (the table's own order, read sequentially), each from where
        the last one ended, so no long read transaction holds back the WAL."""
        conn, after = self._conn(), 0
        while True:
            rows = conn.execute(
                "SELECT rowid, user_id, record, removed, prefs, review FROM users WHERE rowid > ? "
                "AND record IS NOT NULL ORDER BY rowid LIMIT ?", (after, chunk_rows)).fetchall()
            if not rows:
                return
            yield [(user_id, StoredUser(*fields)) for _, user_id, *fields in rows]
            after = rows[-1][0]

    def _update_reviews(self, user_ids: list[str], change: ReviewChange
                        ) -> dict[str, ReviewItem]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current: dict[str, ReviewItem] = {}
            have: set[str] = set()
            for part in _chunks(len(user_ids), _SQLITE_IN_CHUNK):
                ids = user_ids[part]
                sql = ("SELECT user_id, review FROM users WHERE record IS NOT NULL AND "
                       f"user_id IN ({','.join('?' * len(ids))})")
                for user_id, raw in conn.execute(sql, ids):
                    have.add(user_id)
                    if raw:
                        current[user_id] = ReviewItem.model_validate_json(raw)
            changed = {u: item for u, item in change(current).items() if u in have}
            conn.executemany("UPDATE users SET review = ? WHERE user_id = ?",
                             [(item.model_dump_json(), u) for u, item in changed.items()])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return changed

    def _all_reviews(self) -> list[str]:
        return [raw for (raw,) in self._conn().execute(
            "SELECT review FROM users WHERE review IS NOT NULL")]

    def _erase(self, user_ids: list[str], stamp: str) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO erased (id_hash, erased_ts) VALUES (?, ?)",
                             [(self.erasure_hash(u), stamp) for u in user_ids])
            before = conn.total_changes
            conn.executemany("DELETE FROM users WHERE user_id = ?", [(u,) for u in user_ids])
            deleted = conn.total_changes - before
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        truncate_wal(conn, "online store")
        return deleted

    def _erased(self, hashes: list[str] | None = None) -> dict[str, str]:
        conn = self._conn()
        if hashes is None:
            return dict(conn.execute("SELECT id_hash, erased_ts FROM erased"))
        found: dict[str, str] = {}
        for part in _chunks(len(hashes), _SQLITE_IN_CHUNK):
            ids = hashes[part]
            sql = ("SELECT id_hash, erased_ts FROM erased WHERE id_hash IN "
                   f"({','.join('?' * len(ids))})")
            found.update(conn.execute(sql, ids))
        return found

    def remove_tag(self, user_id: str, tag: str) -> bool:
        return self._conn().execute(_SQLITE_REMOVE_TAG, (user_id, tag)).rowcount > 0

    def delete(self, user_id: str) -> bool:
        return self._conn().execute("DELETE FROM users WHERE user_id = ?",
                                    (user_id,)).rowcount > 0


    def meta(self) -> dict[str, Any]:
        as_of, users = self._conn().execute(
            "SELECT max(as_of), count(as_of) FROM users").fetchone()
        return {"backend": self.backend, "as_of": as_of, "users": users}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for pid, conn in self._connections:
                if pid == os.getpid():
                    conn.close()
            self._connections.clear()
        self._local = threading.local()


# KEYS[1] = meta hash, KEYS[2] = erasure list hash, KEYS[3..] = user hashes, with their ids
# in the same order after the 5 leading ARGV; ARGV[1] = stamp field, ARGV[2] = data field,
# ARGV[3] = meta counter of new users ('' for none), ARGV[4] = '1' to keep newer stamps,
# ARGV[5] = '1' to skip erased users, then (id, stamp, data, id hash) per user (the erasure
# list holds salted hashes; Lua has no SHA-256, so Python sends them). Writes each user
# unless kept or skipped; returns {users written, users kept because their stamp is later}
# and records the newest stamp written in the meta hash under the stamp field.
_REDIS_PUT = """
local meta, erased, sf, df, counter = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local only_newer, skip_erased = ARGV[4] == '1', ARGV[5] == '1'
local written, kept, added, newest = 0, 0, 0, nil
for i = 3, #KEYS do
  local at = 5 + 4 * (i - 3)
  local stamp, data, hash = ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local cur = redis.call('HGET', KEYS[i], sf)
  local skip = skip_erased and redis.call('HEXISTS', erased, hash) == 1
  if (not skip) and ((not only_newer) or (not cur) or cur <= stamp) then
    redis.call('HSET', KEYS[i], sf, stamp, df, data)
    written = written + 1
    if not cur then added = added + 1 end
    if (not newest) or stamp > newest then newest = stamp end
  elseif not skip then
    kept = kept + 1
  end
end
if counter ~= '' then
  if added > 0 then redis.call('HINCRBY', meta, counter, added) end
  local old = redis.call('HGET', meta, sf)
  if newest and ((not old) or newest > old) then redis.call('HSET', meta, sf, newest) end
end
return {written, kept}
"""
# KEYS[1] = meta hash, KEYS[2..] = user hashes; ARGV[1] = a stamp ('' for all). Removes the
# record and as_of of each user whose as_of is later, keeping the user count right; returns
# {how many were removed, the latest as_of left ('' for none)}.
_REDIS_CLEAR = """
local cleared, latest = 0, ''
for i = 2, #KEYS do
  local cur = redis.call('HGET', KEYS[i], 'as_of')
  if cur and cur > ARGV[1] then
    redis.call('HDEL', KEYS[i], 'as_of', 'record')
    cleared = cleared + 1
  elseif cur and cur > latest then
    latest = cur
  end
end
if cleared > 0 then redis.call('HINCRBY', KEYS[1], 'users', -cleared) end
return {cleared, latest}
"""
# KEYS[1] = user hash; ARGV[1] = tag. Appends the tag to the JSON array of removed tags.
_REDIS_REMOVE_TAG = """
if redis.call('HEXISTS', KEYS[1], 'record') == 0 then return 0 end
local raw = redis.call('HGET', KEYS[1], 'removed')
local tags = raw and cjson.decode(raw) or {}
for _, t in ipairs(tags) do if t == ARGV[1] then return 1 end end
table.insert(tags, ARGV[1])
redis.call('HSET', KEYS[1], 'removed', cjson.encode(tags))
return 1
"""
# KEYS[1] = meta hash, KEYS[2] = erasure list hash, KEYS[3] = review index set, KEYS[4..] =
# user hashes; ARGV[1] = the erasure stamp ('' to delete without listing), ARGV[2..] = the
# users' ids, then their salted hashes in the same order. Deletes the users (and their
# reviews), keeping the user count right; returns how many had anything stored.
_REDIS_DELETE = """
local deleted, gone, n = 0, 0, #KEYS - 3
for i = 4, #KEYS do
  if redis.call('HEXISTS', KEYS[i], 'record') == 1 then gone = gone + 1 end
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[3], ARGV[i - 2])
  if ARGV[1] ~= '' then redis.call('HSETNX', KEYS[2], ARGV[i - 2 + n], ARGV[1]) end
end
if gone > 0 then redis.call('HINCRBY', KEYS[1], 'users', -gone) end
return deleted
"""
_FIELDS = ("record", "removed", "prefs", "review")


class RedisStore(OnlineStore):
    """The online store in Redis, shared by several service replicas.

    Layout: ``{prefix}user:{user_id}`` is a hash with ``as_of``, ``record``, ``removed``,
    ``prefs``, ``prefs_ts``, ``review``; ``{prefix}meta`` holds ``as_of`` and ``users``;
    ``{prefix}erased`` maps the salted hashes of erased users to their erasure stamps; ``{prefix}reviews`` is
    the set of users with a review. The bulk write
    runs one Lua script per chunk of users, so it needs all keys on one node (no cluster).
    """

    backend = "redis"

    def __init__(self, url: str, prefix: str = "nextbest:", timeout_seconds: float = 5.0,
                 salt: str = ""):
        import redis

        self.url, self.prefix, self.salt = url, prefix, salt
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_seconds,
                                            socket_connect_timeout=timeout_seconds)
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise MissingComponent(
                f"the Redis online store at {url} is not reachable ({exc}); start one with "
                "`redis-server --port 6379` (apt-get install redis-server) or point "
                "store.redis_url (NEXTBEST__STORE__REDIS_URL) at a running server") from exc
        self._put = self._client.register_script(_REDIS_PUT)
        self._remove_tag = self._client.register_script(_REDIS_REMOVE_TAG)
        self._delete = self._client.register_script(_REDIS_DELETE)
        self._clear = self._client.register_script(_REDIS_CLEAR)
        self._meta_key = f"{prefix}meta"
        self._erased_key = f"{prefix}erased"
        self._reviews_key = f"{prefix}reviews"

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    def _user_pattern(self) -> str:
        """The SCAN pattern of every user hash. The pattern is a glob: the prefix's own glob
        characters must match literally."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "user:*"

    def _put_rows(self, ids: list[str], stamps: list[str], data: list[str], *, fields: tuple[
            str, str], counter: str, only_newer: bool, skip_erased: bool) -> tuple[int, int]:
        """Run the conditional write script once per chunk of users; return the users
        written and the users kept because their stored stamp is later."""
        written = kept = 0
        for part in _chunks(len(ids)):
            keys = [self._meta_key, self._erased_key, *map(self._key, ids[part])]
            args: list[str] = [*fields, counter, "1" if only_newer else "0",
                               "1" if skip_erased else "0"]
            for user_id, stamp, value in zip(ids[part], stamps[part], data[part], strict=True):
                args += (user_id, stamp, value, self.erasure_hash(user_id))
            done, held = self._put(keys=keys, args=args)
            written, kept = written + int(done), kept + int(held)
        return written, kept

    def _put_records(self, chunks: Iterable[EncodedChunk], as_of: str, *,
                     replace_newer: bool) -> RecordsLoaded:
        written = kept = 0
        for chunk in chunks:
            done, held = self._put_rows(chunk.ids, [as_of] * len(chunk.ids), chunk.records,
                                        fields=("as_of", "record"), counter="users",
                                        only_newer=not replace_newer, skip_erased=True)
            written, kept = written + done, kept + held
        # Not atomic with the writes above: a reader may see a user's later record until
        # the clear reaches it.
        cleared = self._clear_records(as_of) if replace_newer else 0
        return RecordsLoaded(written, kept, cleared)

    def _put_preferences(self, rows: list[tuple[str, str, str]], *, only_newer: bool) -> int:
        if not rows:
            return 0
        ids, stamps, data = (list(col) for col in zip(*rows, strict=True))
        return self._put_rows(ids, stamps, data, fields=("prefs_ts", "prefs"), counter="",
                              only_newer=only_newer, skip_erased=True)[0]

    def _update_preferences(self, user_id: str,
                            merge: Callable[[Preferences], tuple[str, str]]) -> str:
        """Optimistic: WATCH the user's hash and the erasure list, read, then write in
        MULTI/EXEC; a concurrent change to either makes it start again."""
        import redis

        key, hashed = self._key(user_id), self.erasure_hash(user_id)
        with self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, self._erased_key)
                    if pipe.hexists(self._erased_key, hashed):
                        raise gone(user_id)
                    raw = pipe.hget(key, "prefs")
                    current = (Preferences.model_validate_json(raw) if raw is not None
                               else Preferences())
                    stamp, text = merge(current)
                    pipe.multi()
                    pipe.hset(key, mapping={"prefs_ts": stamp, "prefs": text})
                    pipe.execute()
                    return text
                except redis.WatchError:
                    continue

    def _clear_records(self, after: str) -> int:
        """Scan the user hashes, clear those later than ``after`` (one script per chunk of
        keys) and set the meta ``as_of`` to the latest one left."""
        pattern = self._user_pattern()
        cleared, latest = 0, ""
        keys: list[bytes] = []

        def clear_chunk() -> None:
            nonlocal cleared, latest
            done, left = self._clear(keys=[self._meta_key, *keys], args=[after])
            cleared, latest = cleared + int(done), max(latest, left.decode())
            keys.clear()

        for key in self._client.scan_iter(match=pattern, count=1000):
            keys.append(key)
            if len(keys) == WRITE_CHUNK_ROWS:
                clear_chunk()
        if keys:
            clear_chunk()
        if latest:
            self._client.hset(self._meta_key, "as_of", latest)
        else:
            self._client.hdel(self._meta_key, "as_of")
        return cleared

    def _fetch(self, user_ids: list[str]) -> dict[str, StoredUser]:
        if len(user_ids) == 1:
            values = [self._client.hmget(self._key(user_ids[0]), _FIELDS)]
        else:
            pipe = self._client.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.hmget(self._key(user_id), _FIELDS)
            values = pipe.execute()
        found = {}
        for user_id, fields in zip(user_ids, values, strict=True):
            if any(v is not None for v in fields):
                found[user_id] = StoredUser(*(v.decode() if v is not None else None
                                              for v in fields))
        return found

    def _scan(self, chunk_rows: int) -> Iterator[list[tuple[str, StoredUser]]]:
        """SCAN the user hashes, then read each chunk in one pipeline. SCAN may return a
        key twice; the ids already given are remembered, so none comes twice."""
        start = len(self.prefix) + len("user:")
        seen: set[str] = set()
        keys: list[str] = []
        for key in self._client.scan_iter(match=self._user_pattern(), count=1000):
            user_id = key.decode()[start:]
            if user_id not in seen:
                seen.add(user_id)
                keys.append(user_id)
            if len(keys) == chunk_rows:
                yield self._with_records(keys)
                keys = []
        if keys:
            yield self._with_records(keys)

    def _with_records(self, user_ids: list[str]) -> list[tuple[str, StoredUser]]:
        """What is stored for the users among ``user_ids`` that have a record."""
        stored = self._fetch(user_ids)
        return [(u, stored[u]) for u in user_ids if u in stored and stored[u].record]

    def _update_reviews(self, user_ids: list[str], change: ReviewChange
                        ) -> dict[str, ReviewItem]:
        """Optimistic: WATCH the users' hashes and the erasure list, read, then write in
        MULTI/EXEC; a concurrent change to any of them makes it start again."""
        import redis

        keys = [self._key(u) for u in user_ids]
        with self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*keys, self._erased_key)
                    reads = self._client.pipeline(transaction=False)
                    for key in keys:
                        reads.hmget(key, ["record", "review"])
                    reads.hmget(self._erased_key, [self.erasure_hash(u) for u in user_ids])
                    *fields, erased = reads.execute()
                    have = {u for u, (record, _), gone in zip(user_ids, fields, erased,
                                                              strict=True)
                            if record is not None and gone is None}
                    current = {u: ReviewItem.model_validate_json(raw)
                               for u, (_, raw) in zip(user_ids, fields, strict=True)
                               if u in have and raw is not None}
                    changed = {u: item for u, item in change(current).items() if u in have}
                    pipe.multi()
                    for user_id, item in changed.items():
                        pipe.hset(self._key(user_id), "review", item.model_dump_json())
                        pipe.sadd(self._reviews_key, user_id)
                    pipe.execute()
                    return changed
                except redis.WatchError:
                    continue

    def _all_reviews(self) -> list[str]:
        ids = sorted(m.decode() for m in self._client.smembers(self._reviews_key))
        pipe = self._client.pipeline(transaction=False)
        for user_id in ids:
            pipe.hget(self._key(user_id), "review")
        return [raw.decode() for raw in pipe.execute() if raw is not None]

    def remove_tag(self, user_id: str, tag: str) -> bool:
        return bool(self._remove_tag(keys=[self._key(user_id)], args=[tag]))

    def delete(self, user_id: str) -> bool:
        return self._delete_users([user_id], "") > 0

    def _delete_users(self, user_ids: list[str], stamp: str) -> int:
        """Run the delete script per chunk of users; list them as erased unless ``stamp``
        is empty."""
        deleted = 0
        for part in _chunks(len(user_ids)):
            ids = user_ids[part]
            keys = [self._meta_key, self._erased_key, self._reviews_key, *map(self._key, ids)]
            hashes = [self.erasure_hash(u) for u in ids]
            deleted += int(self._delete(keys=keys, args=[stamp, *ids, *hashes]))
        return deleted

    def _erase(self, user_ids: list[str], stamp: str) -> int:
        return self._delete_users(user_ids, stamp)

    def _erased(self, hashes: list[str] | None = None) -> dict[str, str]:
        if hashes is None:
            pairs = self._client.hgetall(self._erased_key).items()
        else:
            pairs = zip(hashes, self._client.hmget(self._erased_key, hashes), strict=True)
        return {(k.decode() if isinstance(k, bytes) else k): v.decode()
                for k, v in pairs if v is not None}

    def meta(self) -> dict[str, Any]:
        as_of, users = self._client.hmget(self._meta_key, ["as_of", "users"])
        return {"backend": self.backend, "as_of": as_of.decode() if as_of else None,
                "users": int(users or 0)}

    def close(self) -> None:
        self._client.close()


def open_store(settings: Settings) -> OnlineStore:
    """The online store named by ``settings.store.backend``.

    Raises :class:`MissingComponent` when the Redis server cannot be reached.
    """
    cfg = settings.store
    salt = id_salt(settings)
    if cfg.backend == "redis":
        return RedisStore(cfg.redis_url, cfg.redis_prefix, cfg.redis_timeout_seconds, salt)
    return SqliteStore(settings.paths.store_path, cfg.sqlite_timeout_seconds, salt)
