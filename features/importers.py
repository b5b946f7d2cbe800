"""Import a platform's own CSV or Parquet file as one table of the data contract.

Why: real exports use their own column names, delimiters and date formats, often have no
header (the CDNOW master file is ``00001 19970101 1 11.77``) and no order ids. The importer
reads the file, maps its names onto ours (``mapping`` is ours -> theirs), lets
:func:`features.contract.validate` coerce types and sort out bad rows, then writes
``OUT/TABLE.parquet`` and ``OUT/rejects/TABLE.csv``.

Headerless files: the first line is taken as data when every field looks like a number or a
date; the columns are then named ``1``, ``2``, ... (``col1`` works too in a mapping).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from features.contract import check_columns, spec, validate
from nextbest.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
DELIMITERS = ",;\t|"
WHITESPACE = r"\s+"
DATA_LIKE = re.compile(r"^[\d\s.,:/+\-TZ$€£\"']*$")
POSITION = re.compile(r"^(?:col(?:umn)?_?)?(\d+)$", re.IGNORECASE)
SAMPLE_BYTES = 64 * 1024


class ImportResult(BaseModel):
    """What an import wrote and what it noticed on the way."""

    table: str
    accepted: int
    rejected: int
    parquet_path: Path
    rejects_path: Path
    ignored_columns: list[str] = []
    notes: list[str] = []

    def lines(self) -> list[str]:
        """The CLI output: the counts line first, then the notes."""
        head = (f"{self.table}: {self.accepted} accepted, {self.rejected} rejected "
                f"(rejects: {self.rejects_path})")
        ignored = ([f"ignored columns: {', '.join(self.ignored_columns)}"]
                   if self.ignored_columns else [])
        return [head, *self.notes, *ignored]


def _sample(path: Path) -> str:
    """The first bytes of a text file, or a DataError if it cannot be read as text."""
    try:
        with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
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


def _read_csv(path: Path, sep: str | None, header: bool | None,
              names: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Read every field as text (ids keep leading zeros); returns the frame and notes."""
    sample = _sample(path)
    notes: list[str] = []
    sep = sep or sniff_delimiter(sample)
    if header is None:
        header = sniff_header(sample, sep)
        if not header and not names:
            notes.append("no header line found: columns are named 1, 2, 3, ...")
    kwargs: dict = {"sep": sep, "dtype": str, "skip_blank_lines": False,
                    "header": 0 if header else None}
    if names:
        kwargs["names"] = names
    try:
        frame = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as exc:
        raise DataError(f"cannot parse {path} as CSV: {str(exc).strip()}", field="path") from exc
    if not header and not names:
        frame.columns = [str(i + 1) for i in range(frame.shape[1])]
    # Blank lines are not rows, but they keep their place so row numbers match the file.
    return frame.dropna(how="all"), notes


def read_table_file(path: Path, *, sep: str | None = None, header: bool | None = None,
                    names: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV or Parquet file as it is; DataError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}", field="path")
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        return _read_csv(path, sep, header, names)
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
                 names: list[str] | None = None) -> ImportResult:
    """Import ``path`` as ``table``: map, validate, write Parquet and the reject file.

    ``header`` None sniffs it; ``names`` names the file's columns (with or without a header
    line). Raises DataError when the file is missing or unreadable, or a required column is
    absent after mapping.
    """
    spec(table)
    path, out_dir = Path(path), Path(out_dir)
    frame, notes = read_table_file(path, sep=sep, header=header, names=names)
    frame, ignored = apply_mapping(table, frame, mapping)
    if table == "orders" and "order_id" not in frame.columns:
        frame = _derive_order_ids(frame, path.stem)
        notes.append(f"no order_id column: order ids derived from row numbers ({path.stem}-N)")
    check_columns(table, list(frame.columns))
    result = validate(table, frame)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rejects").mkdir(exist_ok=True)
    parquet_path = out_dir / f"{table}.parquet"
    rejects_path = out_dir / "rejects" / f"{table}.csv"
    result.accepted.to_parquet(parquet_path, index=False)
    result.rejects.to_csv(rejects_path, index=False)
    return ImportResult(table=table, accepted=len(result.accepted),
                        rejected=len(result.rejects), parquet_path=parquet_path,
                        rejects_path=rejects_path, ignored_columns=ignored, notes=notes)
