"""Import a platform's own CSV or Parquet file as one table of the data contract.

Why: real exports use their own column names, delimiters and date formats, often have no
header (the CDNOW master file is ``00001 19970101 1 11.77``) and no order ids. The importer
reads the file, maps its names onto ours (``mapping`` is ours -> theirs), lets
:func:`features.contract.validate` coerce types and sort out bad rows, then writes
``OUT/TABLE.parquet`` and ``OUT/rejects/TABLE.csv``.

Nothing is replaced silently: an existing table is only replaced or appended to when the
caller says which (``mode``), and a file with more than ``max_reject_share`` of its rows
rejected leaves the table as it was (the reject file is still written, to show why).

Headerless files: the first line is taken as data when every field looks like a number or a
date; the columns are then named ``1``, ``2``, ... (``col1`` works too in a mapping).
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel

from features.contract import check_columns, spec, validate
from nextbest.config import FeaturesConfig
from nextbest.errors import Conflict, DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
DELIMITERS = ",;\t|"
WHITESPACE = r"\s+"
DATA_LIKE = re.compile(r"^[\d\s.,:/+\-TZ$€£\"']*$")
POSITION = re.compile(r"^(?:col(?:umn)?_?)?(\d+)$", re.IGNORECASE)
SAMPLE_BYTES = 64 * 1024
DEFAULT_ENCODING = "utf-8"
_DEFAULT_MAX_REJECT_SHARE = FeaturesConfig().import_max_reject_share

# What to do with a table that already exists: None refuses.
Mode = Literal["append", "replace"] | None
Action = Literal["created", "replaced", "appended"]


class ImportResult(BaseModel):
    """What an import wrote and what it noticed on the way.

    ``action`` says what happened to the table; ``rows_before`` / ``rows_after`` are its
    rows before and after (0 before when created), ``replaced_keys`` the rows an append
    replaced because they had the same key (order_id, item_id or user_id)."""

    table: str
    accepted: int
    rejected: int
    parquet_path: Path
    rejects_path: Path
    action: Action
    rows_before: int = 0
    rows_after: int
    replaced_keys: int = 0
    ignored_columns: list[str] = []
    notes: list[str] = []

    def lines(self) -> list[str]:
        """The CLI output: the counts line, what happened to the table, then the notes."""
        head = (f"{self.table}: {self.accepted} accepted, {self.rejected} rejected "
                f"(rejects: {self.rejects_path})")
        ignored = ([f"ignored columns: {', '.join(self.ignored_columns)}"]
                   if self.ignored_columns else [])
        return [head, self.outcome(), *self.notes, *ignored]

    def outcome(self) -> str:
        """One line saying whether the table was created, replaced or appended to."""
        if self.action == "created":
            return f"created {self.parquet_path} ({self.rows_after:,} rows)"
        if self.action == "replaced":
            return (f"replaced {self.parquet_path} (it had {self.rows_before:,} rows, "
                    f"now {self.rows_after:,})")
        same = (f", {self.replaced_keys:,} of them replacing rows with the same key"
                if self.replaced_keys else "")
        return (f"appended {self.accepted:,} rows to {self.parquet_path}{same} "
                f"({self.rows_before:,} rows before, now {self.rows_after:,})")


def check_encoding(encoding: str) -> str:
    """``encoding`` if Python knows it; DataError naming the flag otherwise."""
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise DataError(f"--encoding {encoding!r} is not a known encoding "
                        "(e.g. utf-8, latin-1, cp1252, utf-16)", field="encoding") from exc
    return encoding


def _sample(path: Path, encoding: str) -> str:
    """The first bytes of a text file, or a DataError if it cannot be read as text."""
    try:
        with path.open("r", encoding=encoding, errors="replace", newline="") as handle:
            return handle.read(SAMPLE_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}", field="path") from exc


def sniff_delimiter(sample: str) -> str:
    """The delimiter of a CSV sample: one of ``, ; TAB |``, or runs of blanks."""
    first = next((line for line in sample.splitlines() if line.strip()), "")
    if not any(d in first for d in DELIMITERS):
        return WHITESPACE
    try:
        return csv.Sniffer().sniff(sample[:8192], delimiters=DELIMITERS).delimiter
    except csv.Error:
        return max(DELIMITERS, key=first.count)


def sniff_header(sample: str, sep: str) -> bool:
    """False when every field of the first line looks like data (numbers, dates)."""
    first = next((line for line in sample.splitlines() if line.strip()), "")
    fields = first.split() if sep == WHITESPACE else next(csv.reader([first], delimiter=sep))
    return not all(DATA_LIKE.match(f) for f in fields)


def _read_csv(path: Path, sep: str | None, header: bool | None, names: list[str] | None,
              encoding: str) -> tuple[pd.DataFrame, list[str]]:
    """Read every field as text (ids keep leading zeros); returns the frame and notes."""
    sample = _sample(path, encoding)
    notes: list[str] = []
    sep = sep or sniff_delimiter(sample)
    if header is None:
        header = sniff_header(sample, sep)
        if not header and not names:
            notes.append("no header line found: columns are named 1, 2, 3, ...")
    kwargs: dict = {"sep": sep, "dtype": str, "skip_blank_lines": False,
                    "header": 0 if header else None, "encoding": encoding}
    if names:
        kwargs["names"] = names
    try:
        frame = pd.read_csv(path, **kwargs)
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path} as {encoding} ({exc.reason} at byte {exc.start}); "
                        "pass its encoding, e.g. --encoding latin-1 or --encoding cp1252",
                        field="encoding") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"cannot parse {path} as CSV: {str(exc).strip()}", field="path") from exc
    if not header and not names:
        frame.columns = [str(i + 1) for i in range(frame.shape[1])]
    # Blank lines are not rows, but they keep their place so row numbers match the file.
    return frame.dropna(how="all"), notes


def read_table_file(path: Path, *, sep: str | None = None, header: bool | None = None,
                    names: list[str] | None = None,
                    encoding: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV or Parquet file as it is; DataError if it is missing or unreadable.

    ``encoding`` (CSV only; default UTF-8) is any codec name Python knows."""
    path = Path(path)
    encoding = check_encoding(encoding or DEFAULT_ENCODING)
    if not path.is_file():
        raise DataError(f"file not found: {path}", field="path")
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        return _read_csv(path, sep, header, names, encoding)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as Parquet: {exc}", field="path") from exc
    if names:
        frame.columns = names[: frame.shape[1]] + list(frame.columns[len(names):])
    return frame, []


def _resolve(theirs: str, columns: list[str]) -> str:
    """The file's column called ``theirs``, or at position ``N`` / ``colN`` (1-based)."""
    if theirs in columns:
        return theirs
    position = POSITION.match(theirs)
    if position and 1 <= int(position.group(1)) <= len(columns):
        return columns[int(position.group(1)) - 1]
    raise DataError(f"mapped column {theirs!r} is not in the file "
                    f"(found: {', '.join(columns)})", field=theirs)


def apply_mapping(table: str, frame: pd.DataFrame, mapping: dict[str, str]
                  ) -> tuple[pd.DataFrame, list[str]]:
    """Rename the file's columns to ours; returns the frame and the ignored column names.

    Columns already named as in the contract are taken as they are unless mapped over.
    """
    known = spec(table).names
    unknown = [ours for ours in mapping if ours not in known]
    if unknown:
        raise DataError(f"{table} has no column {unknown[0]!r} to map onto "
                        f"(its columns: {', '.join(known)})", field=unknown[0])
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    sources = {ours: _resolve(theirs, columns) for ours, theirs in mapping.items()}
    out = {ours: frame[source] for ours, source in sources.items()}
    for name in columns:
        if name in known and name not in out:
            out[name] = frame[name]
    used = set(sources.values()) | set(out)
    ignored = [c for c in columns if c not in used]
    return pd.DataFrame(out, index=frame.index), ignored


def _derive_order_ids(frame: pd.DataFrame, stem: str) -> pd.DataFrame:
    """Order ids from the 1-based data row number, e.g. ``CDNOW_master-17``."""
    frame = frame.copy()
    frame["order_id"] = [f"{stem}-{i}" for i in range(1, len(frame) + 1)]
    return frame


def import_table(table: str, path: Path, mapping: dict[str, str], out_dir: Path, *,
                 sep: str | None = None, header: bool | None = None,
                 names: list[str] | None = None, date_format: str | None = None,
                 encoding: str | None = None, mode: Mode = None,
                 max_reject_share: float = _DEFAULT_MAX_REJECT_SHARE) -> ImportResult:
    """Import ``path`` as ``table``: map, validate, write Parquet and the reject file.

    ``header`` None sniffs it; ``names`` names the file's columns (with or without a header
    line); ``date_format`` (strftime) is how its timestamps are written (None: the formats
    :func:`features.contract.read_timestamps` knows); ``encoding`` is the CSV's text
    encoding (default UTF-8). When ``OUT/TABLE.parquet`` exists, ``mode`` says what to do:
    ``"replace"`` it, or ``"append"`` the new rows (a row with the key of an existing one,
    e.g. an order's later status, replaces it); None refuses with :class:`Conflict`.

    Raises DataError when the file is missing or unreadable, a required column is absent
    after mapping, or more than ``max_reject_share`` of the rows are rejected; in that last
    case the reject file is written and the table left as it was.
    """
    table_spec = spec(table)
    path, out_dir = Path(path), Path(out_dir)
    parquet_path = out_dir / f"{table}.parquet"
    rejects_path = out_dir / "rejects" / f"{table}.csv"
    if parquet_path.exists() and mode is None:
        raise Conflict(f"{parquet_path} already exists: pass --append to add these rows to it "
                       "or --replace to overwrite it", field="mode")
    frame, notes = read_table_file(path, sep=sep, header=header, names=names,
                                   encoding=encoding)
    frame, ignored = apply_mapping(table, frame, mapping)
    if table == "orders" and "order_id" not in frame.columns:
        frame = _derive_order_ids(frame, path.stem)
        notes.append(f"no order_id column: order ids derived from row numbers ({path.stem}-N)")
    check_columns(table, list(frame.columns))
    result = validate(table, frame, date_format=date_format)
    notes += result.notes
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    result.rejects.to_csv(rejects_path, index=False)
    _check_reject_share(table, result.rejects, len(result.accepted), max_reject_share,
                        parquet_path, rejects_path, date_format)
    existing = pd.read_parquet(parquet_path) if parquet_path.exists() else None
    if existing is None:
        action: Action = "created"
        table_rows, replaced_keys = result.accepted, 0
    elif mode == "replace":
        action, table_rows, replaced_keys = "replaced", result.accepted, 0
    else:
        action = "appended"
        table_rows, replaced_keys = _append(existing, result.accepted, table_spec.key)
    _write_atomically(table_rows, parquet_path)
    return ImportResult(table=table, accepted=len(result.accepted),
                        rejected=len(result.rejects), parquet_path=parquet_path,
                        rejects_path=rejects_path, action=action,
                        rows_before=0 if existing is None else len(existing),
                        rows_after=len(table_rows), replaced_keys=replaced_keys,
                        ignored_columns=ignored, notes=notes)


def _check_reject_share(table: str, rejects: pd.DataFrame, accepted: int, limit: float,
                        parquet_path: Path, rejects_path: Path,
                        date_format: str | None) -> None:
    """DataError when more than ``limit`` of the rows were rejected, naming the most common
    reason (and the date flag when it is about dates)."""
    total = accepted + len(rejects)
    if total == 0 or len(rejects) / total <= limit:
        return
    first_column = rejects["column"].astype(str).str.split("; ").str[0]
    first_reason = (rejects["reason"].astype(str).str.split("; ").str[0]
                    .str.replace(r" '.*$", "", regex=True))
    common = (first_column + ": " + first_reason).value_counts()
    reasons = ", ".join(f"{reason} ({count:,})" for reason, count in common.iloc[:3].items())
    hint = ""
    if "unparsable date" in common.index[0]:
        hint = (f" (is --date-format {date_format} right?)" if date_format
                else "; for another date format pass --date-format, e.g. %m/%d/%Y")
    unchanged = "left unchanged" if parquet_path.exists() else "not created"
    raise DataError(
        f"{table}: {len(rejects):,} of {total:,} rows rejected ({len(rejects) / total:.1%}, "
        f"more than features.import_max_reject_share {limit:.0%}), so {parquet_path} was "
        f"{unchanged}; reasons: {reasons}{hint}; each rejected row is in {rejects_path}",
        field="rows")


def _append(existing: pd.DataFrame, rows: pd.DataFrame, key: str | None
            ) -> tuple[pd.DataFrame, int]:
    """``existing`` plus ``rows``; a new row replaces an existing one with the same key.

    Returns the table and how many existing rows were replaced."""
    if key is None or key not in existing.columns:
        return pd.concat([existing, rows], ignore_index=True), 0
    replaced = existing[key].astype(str).isin(set(rows[key]))
    kept = existing[~replaced.to_numpy(bool)]
    return pd.concat([kept, rows], ignore_index=True), int(replaced.sum())


def _write_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` through a temporary file, so a failed write leaves the
    old table whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
