"""Erasure from the store and the data files: a user's data leaves every place it is kept.

The places, and what erasing a user means in each:

- the online store: record, preferences and removed tags deleted, and the user put on the
  store's erasure list, so every later ``features build`` skips them (:mod:`features.store`);
- the raw tables in ``paths.raw_dir``: ``users``, ``events``, ``preferences`` and
  ``review_scores`` rows of the user, ``listings`` the user sells, ``orders`` the user bought; orders the user *sold* stay
  (they are the buyer's history) with ``seller_id`` blanked; import rejects
  (``rejects/*.csv``) lines naming the user;
- the feature partitions ``paths.features_dir/as_of=*/features.parquet`` and the latent
  traits ``paths.latent_dir/user_traits.parquet`` and ``seller_traits.parquet``: the
  user's rows;
- the decision log: decisions, rewards and late feedback (any :class:`UserEraser` the
  caller passes; this package knows nothing of decisions).

The store is erased first: a features build running meanwhile then skips the user even if
it read the raw tables before they were rewritten. Parquet files are rewritten atomically
(temporary file, then rename) and only when they held the user. ``nextbest data erase``
(:mod:`serving.erasure`) does all of it; ``DELETE /users/{id}`` does the store and the
decision log and lists the user, and ``nextbest data erase --pending`` later purges the
files of every listed user.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from features.contract import raw_files
from features.store import OnlineStore, unique_user_ids
from features.synth import SELLER_TRAITS_FILE, USER_TRAITS_FILE
from nextbest.errors import ErasureFailed

FEATURES_GLOB = "as_of=*/features.parquet"
# The synthetic marketplace's latent traits: of every user, and of sellers and prospects.
LATENT_FILES = (USER_TRAITS_FILE, SELLER_TRAITS_FILE)


class TableRule(BaseModel):
    """How one table refers to users: rows to drop by these columns, ids to blank in those."""

    drop: tuple[str, ...] = ()
    blank: tuple[str, ...] = ()


RAW_RULES: dict[str, TableRule] = {
    "users": TableRule(drop=("user_id",)),
    "orders": TableRule(drop=("buyer_id",), blank=("seller_id",)),
    "listings": TableRule(drop=("seller_id",)),
    "events": TableRule(drop=("user_id",)),
    "preferences": TableRule(drop=("user_id",)),
}
BY_USER_ID = TableRule(drop=("user_id",))
# Tables nextbest derives into raw_dir (not the platform's): ratings estimated from texts.
DERIVED_TABLES = ("review_scores",)


class FileErasure(BaseModel):
    """What erasing changed in one file."""

    rows_removed: int = 0
    ids_blanked: int = 0


class ErasureReport(BaseModel):
    """What an erasure removed, counted per place (file paths, ``store``, ``decision_log``)."""

    user_ids: list[str]
    store_records: int = 0
    decisions: int | None = None  # None: the decision log was not touched
    campaign_rows: int | None = None  # None: the campaign store was not touched
    files: dict[str, FileErasure] = Field(default_factory=dict)

    @property
    def rows_removed(self) -> int:
        """Rows removed from all files."""
        return sum(f.rows_removed for f in self.files.values())

    def lines(self) -> list[str]:
        """A human summary: one line overall, then one per file that changed."""
        decisions = "not touched" if self.decisions is None else str(self.decisions)
        campaigns = "not touched" if self.campaign_rows is None else str(self.campaign_rows)
        head = (f"erased {len(self.user_ids)} user(s): {self.store_records} store record(s), "
                f"{decisions} decision(s), {campaigns} campaign row(s), "
                f"{self.rows_removed} file row(s) removed, "
                f"{sum(f.ids_blanked for f in self.files.values())} seller id(s) blanked")
        return [head, *(f"  {path}: -{f.rows_removed} rows, {f.ids_blanked} ids blanked"
                        for path, f in sorted(self.files.items()))]


class UserEraser(Protocol):
    """What erasure needs from a store of decisions (the decision log and the engine
    satisfy it): delete the user's rows, return how many decisions went."""

    def erase_user(self, user_id: str) -> int: ...


def _matches(column: pa.ChunkedArray, ids: pa.Array) -> pa.ChunkedArray:
    """True where ``column`` (any string-like type) holds one of ``ids``; False for nulls."""
    as_text = pc.cast(column, pa.string())
    return pc.fill_null(pc.is_in(as_text, value_set=ids), False)


def erase_from_table(table: pa.Table, rule: TableRule,
                     user_ids: Sequence[str]) -> tuple[pa.Table, FileErasure]:
    """``table`` without the users' rows and with their ids blanked, and what changed.

    Columns the rule names but the table lacks are ignored (optional contract columns)."""
    ids = pa.array(list(user_ids), type=pa.string())
    counts = FileErasure()
    keep = pa.chunked_array([pa.array([True] * table.num_rows, type=pa.bool_())])
    for name in (c for c in rule.drop if c in table.column_names):
        keep = pc.and_(keep, pc.invert(_matches(table[name], ids)))
    if rule.drop:
        counts.rows_removed = table.num_rows - pc.sum(keep).as_py() if table.num_rows else 0
        table = table.filter(keep)
    for name in (c for c in rule.blank if c in table.column_names):
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        hit = _matches(column, ids)
        counts.ids_blanked += pc.sum(hit).as_py() or 0
        blanked = pc.if_else(hit, pa.scalar(None, type=column.type), column)
        table = table.set_column(table.column_names.index(name), name, blanked)
    return table, counts


class StagedFile:
    """One file's erasure, written beside it and not yet visible: :meth:`commit` puts it in
    place (an atomic rename), :meth:`discard` forgets it. Staging every file before any
    store is touched lets a failed erasure leave every file as it was."""

    def __init__(self, path: Path, counts: FileErasure, tmp: Path):
        self.path, self.counts, self.tmp = Path(path), counts, Path(tmp)

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.erasing")


def stage_parquet(path: Path, rule: TableRule | None, user_ids: Sequence[str]
                  ) -> StagedFile | None:
    """One Parquet file without the users, staged (None when it does not hold them).

    ``rule`` None: drop every row in which any text column equals one of the ids (a file
    erasure knows no rule for, e.g. ``score --all`` output or a report's table)."""
    table = pq.read_table(path)
    if rule is None:
        rule = TableRule(drop=tuple(f.name for f in table.schema
                                    if pa.types.is_string(f.type)
                                    or pa.types.is_large_string(f.type)
                                    or pa.types.is_dictionary(f.type)))
        table = _any_column_rule(table, rule, user_ids)
        if table is None:
            return None
        cleaned, counts = table
    else:
        cleaned, counts = erase_from_table(table, rule, user_ids)
    if not (counts.rows_removed or counts.ids_blanked):
        return None
    tmp = _tmp(path)
    pq.write_table(cleaned, tmp)
    return StagedFile(path, counts, tmp)


def _any_column_rule(table: pa.Table, rule: TableRule, user_ids: Sequence[str]
                     ) -> tuple[pa.Table, FileErasure] | None:
    """Drop rows where *any* of the rule's columns holds an id (not all of them)."""
    if not rule.drop:
        return None
    ids = pa.array(list(user_ids), type=pa.string())
    hit = None
    for name in rule.drop:
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        match = _matches(column, ids)
        hit = match if hit is None else pc.or_(hit, match)
    removed = pc.sum(hit).as_py() or 0
    return table.filter(pc.invert(hit)), FileErasure(rows_removed=removed)


def stage_csv(path: Path, user_ids: Sequence[str]) -> StagedFile | None:
    """A CSV file without the lines in which any cell is one of the users' ids, staged (None
    when it holds none): import rejects, MLflow runs' validation predictions, report tables."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    hit = frame.isin(set(user_ids)).any(axis=1)
    if not hit.any():
        return None
    tmp = _tmp(path)
    frame[~hit].to_csv(tmp, index=False)
    return StagedFile(path, FileErasure(rows_removed=int(hit.sum())), tmp)


def _texts(value: Any) -> Iterator[str]:
    """Every string of a parsed JSON value: object keys and string values, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _texts(item)


def names_user(line: bytes, pattern: re.Pattern[bytes]) -> bool:
    """Whether one JSON text names a user: one of its strings holds the id as a token (a
    number that looks like an id is not the id). A line that is not JSON is read as text."""
    if not pattern.search(line):
        return False
    try:
        parsed = json.loads(line)
    except ValueError:
        return True
    return any(pattern.search(text.encode()) for text in _texts(parsed))


def stage_json_lines(path: Path, user_ids: Sequence[str]) -> StagedFile | None:
    """A JSON-lines file (a channel's deliveries) without the lines naming a user, staged."""
    pattern = token_pattern(user_ids)
    lines = path.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if not names_user(line, pattern)]
    if len(kept) == len(lines):
        return None
    tmp = _tmp(path)
    tmp.write_bytes(b"".join(kept))
    return StagedFile(path, FileErasure(rows_removed=len(lines) - len(kept)), tmp)


def _scrub_json(value: Any, ids: set[str]) -> tuple[Any, int]:
    """``value`` without the users: list items that are an id, or objects with an id among
    their own values, are dropped; object keys that are an id too; returns the count."""
    if isinstance(value, list):
        kept, removed = [], 0
        for item in value:
            named = item in ids if isinstance(item, str) else isinstance(item, dict) and any(
                isinstance(v, str) and v in ids for v in item.values())
            if named:
                removed += 1
                continue
            item, n = _scrub_json(item, ids)
            kept.append(item)
            removed += n
        return kept, removed
    if isinstance(value, dict):
        out, removed = {}, 0
        for key, item in value.items():
            if key in ids:
                removed += 1
                continue
            out[key], n = _scrub_json(item, ids)
            removed += n
        return out, removed
    return value, 0


def stage_json(path: Path, user_ids: Sequence[str]) -> StagedFile | None:
    """A JSON file (a report's ``report.json`` listing users in an alert) without the users
    (:func:`_scrub_json`), staged; None when it does not name them. A ValueError when an
    id is still there afterwards (inside free text): such a file must be regenerated."""
    pattern = token_pattern(user_ids)
    raw = path.read_bytes()
    if not pattern.search(raw):
        return None
    parsed = json.loads(raw)
    if not any(pattern.search(text.encode()) for text in _texts(parsed)):
        return None  # only a number that looks like an id
    scrubbed, removed = _scrub_json(parsed, set(map(str, user_ids)))
    if any(pattern.search(text.encode()) for text in _texts(scrubbed)):
        raise ValueError("a user's id is inside a text value")
    text = json.dumps(scrubbed, indent=2, default=str).encode()
    tmp = _tmp(path)
    tmp.write_bytes(text)
    return StagedFile(path, FileErasure(rows_removed=removed), tmp)


def token_pattern(user_ids: Sequence[str]) -> re.Pattern[bytes]:
    """Matches one of the ids as a whole token (not inside a longer id or word)."""
    alternatives = b"|".join(re.escape(str(u).encode()) for u in user_ids)
    return re.compile(rb"(?<![\w.-])(?:" + alternatives + rb")(?![\w.-])")


def stage_files(user_ids: Sequence[str], *, raw_dir: Path | None = None,
                features_dir: Path | None = None,
                latent_dir: Path | None = None) -> list[StagedFile]:
    """Stage the users' erasure from the raw tables, import rejects, feature partitions and
    latent traits under the given directories (missing directories and tables are skipped).

    On any failure the files staged so far are discarded and :class:`ErasureFailed` names
    the file."""
    jobs: list[tuple[Path, TableRule | None]] = []
    if raw_dir is not None:
        jobs += [(path, rule) for name, rule in RAW_RULES.items()
                 for path in raw_files(Path(raw_dir), name)]
        jobs += [(Path(raw_dir) / f"{name}.parquet", BY_USER_ID) for name in DERIVED_TABLES]
        jobs += [(path, None) for path in sorted((Path(raw_dir) / "rejects").glob("*.csv"))]
    if features_dir is not None:
        jobs += [(path, BY_USER_ID) for path in sorted(Path(features_dir).glob(FEATURES_GLOB))]
    if latent_dir is not None:
        jobs += [(Path(latent_dir) / name, BY_USER_ID) for name in LATENT_FILES]
    staged: list[StagedFile] = []
    for path, rule in jobs:
        if not path.is_file():
            continue
        try:
            one = (stage_csv(path, user_ids) if rule is None
                   else stage_parquet(path, rule, user_ids))
        except Exception as exc:
            for done in staged:
                done.discard()
            raise ErasureFailed(f"{path}: cannot rewrite it without the user ({exc}); "
                                "nothing was erased", field=str(path)) from exc
        if one is not None:
            staged.append(one)
    return staged


def erase_files(user_ids: Sequence[str], *, raw_dir: Path | None = None,
                features_dir: Path | None = None,
                latent_dir: Path | None = None) -> dict[str, FileErasure]:
    """Erase the users from the files :func:`stage_files` knows; what changed per file path
    (only the files that held any of the users)."""
    staged = stage_files(user_ids, raw_dir=raw_dir, features_dir=features_dir,
                         latent_dir=latent_dir)
    for one in staged:
        one.commit()
    return {str(one.path): one.counts for one in staged}


def erase_users(user_ids: Iterable[str], *, store: OnlineStore,
                decisions: UserEraser | None = None,
                raw_dir: Path | None = None, features_dir: Path | None = None,
                latent_dir: Path | None = None, now: datetime | None = None) -> ErasureReport:
    """Erase the users from the store (listing them as erased), the decision log when
    ``decisions`` is given, and the files under the given directories (module docstring).
    """
    ids = unique_user_ids(user_ids)
    report = ErasureReport(user_ids=ids, store_records=store.erase_many(ids, now=now))
    if decisions is not None:
        report.decisions = sum(decisions.erase_user(user_id) for user_id in ids)
    report.files = erase_files(ids, raw_dir=raw_dir, features_dir=features_dir,
                               latent_dir=latent_dir)
    return report


def _rows_naming(path: Path, columns: Sequence[str], user_id: str) -> list[dict[str, Any]]:
    """The rows of a Parquet file in which any of ``columns`` is ``user_id``, as JSON-ready
    dicts (timestamps as ISO text, missing values as None)."""
    present = [c for c in columns if c in pq.read_schema(path).names]
    if not present:
        return []
    table = pq.read_table(path)
    ids = pa.array([user_id], type=pa.string())
    hit = None
    for name in present:
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        match = _matches(column, ids)
        hit = match if hit is None else pc.or_(hit, match)
    rows = table.filter(hit).to_pandas()
    if rows.empty:
        return []
    return json.loads(rows.to_json(orient="records", date_format="iso"))


def export_files(user_id: str, *, raw_dir: Path | None = None,
                 features_dir: Path | None = None,
                 latent_dir: Path | None = None) -> dict[str, Any]:
    """Every row naming the user in the files erasure knows (the same places and rules):
    ``raw`` (table -> rows: orders they bought and sold, listings, events, preferences,
    derived review scores, each file's rows in turn), ``features`` (the user's row of every
    partition, oldest as_of first: their feature history) and ``latent``."""
    raw: dict[str, list[dict[str, Any]]] = {}
    if raw_dir is not None:
        tables = {**RAW_RULES, **{name: BY_USER_ID for name in DERIVED_TABLES}}
        for name, rule in tables.items():
            rows = [row for path in raw_files(Path(raw_dir), name)
                    for row in _rows_naming(path, (*rule.drop, *rule.blank), user_id)]
            if rows:
                raw[name] = rows
    history = []
    if features_dir is not None:
        for path in sorted(Path(features_dir).glob(FEATURES_GLOB)):
            history += _rows_naming(path, ("user_id",), user_id)
    latent: list[dict[str, Any]] = []  # the user's row of each latent traits file
    if latent_dir is not None:
        for path in (Path(latent_dir) / name for name in LATENT_FILES):
            if path.is_file():
                latent += _rows_naming(path, ("user_id",), user_id)
    return {"raw": raw, "features": history, "latent": latent}
