"""The data contract of the five raw tables (docs/CONTRACT.md) and its row validation.

Why: platform exports are messy. :func:`validate` keeps every good row, coerced to the
contract's types, and reports each bad row (1-based row number, column, reason, original
values) instead of failing the whole file. Only a missing *required column* refuses the file,
with a :class:`~nextbest.errors.DataError` naming it.

Types after validation: ids and labels are strings; timestamps naive UTC ``datetime64[us]``;
amounts ``float64``; flags ``bool``; ``stock`` ``int64``. Every check is vectorised over the
column.

Timestamps understood without a format (:func:`read_timestamps`): ISO 8601 (with or without
an offset; offsets are converted to UTC), ``YYYYMMDD`` (``19970101``), epoch seconds, and
day/month/year or month/day/year (``/``, ``.`` or ``-`` between, a 4-digit year, optionally
``HH:MM[:SS]``) when some value of the column has a first or second number above 12, which
tells the order. When no value tells it (every value like ``01/02/2024``) the table is
refused with a DataError asking for a format instead of guessing. With a ``date_format``
(strftime, e.g. ``%m/%d/%Y``) only that format is read.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from nextbest.errors import DataError

Kind = Literal["id", "text", "timestamp", "amount", "count", "flag", "choice", "fingerprint",
               "ip_prefix", "rating"]

ORDER_STATUSES = ("completed", "returned", "cancelled")
# Categories whose items are sold on trust (authenticity certification matters most): the
# synthetic marketplace prices them high, the bandit's context marks them, the simulator's
# certification lift is larger on them.
LUXURY_CATEGORIES = frozenset({"bags", "jewelry", "watches", "art"})
# ``review`` carries ``rating`` (1-5) and optionally ``text``; ``purchase`` marks the moment of
# buying (sent in real time it cancels cart recovery; the orders table stays the record of
# purchases for features); ``order_history`` is a look at one's own orders; ``follow`` names
# the seller followed (``seller_id``); ``listing_started`` is a user opening the listing form
# (the listing itself is a row of ``listings``): one never finished makes a prospective seller.
EVENT_TYPES = ("view", "favorite", "add_to_cart", "search", "follow", "login", "share", "review",
               "purchase", "complaint", "order_history", "listing_started")
RATINGS = (1, 5)
# IP addresses are kept only as these prefixes: a full address is truncated on import.
IPV4_PREFIX, IPV6_PREFIX = 24, 48
TRUE_WORDS = ("true", "t", "yes", "y", "1", "1.0")
FALSE_WORDS = ("false", "f", "no", "n", "0", "0.0")
REJECT_COLUMNS = ["row", "column", "reason"]


class ColumnSpec(BaseModel):
    """One column: its kind, whether it is required, allowed values and default."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    required: bool = False
    choices: tuple[str, ...] = ()
    default: bool | str | int | None = None


class TableSpec(BaseModel):
    """A table of the contract. ``key`` is unique: later duplicates are rejected."""

    model_config = ConfigDict(frozen=True)

    name: str
    columns: tuple[ColumnSpec, ...]
    key: str | None = None

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _col(name: str, kind: Kind, required: bool = False, choices: tuple[str, ...] = (),
         default: bool | str | int | None = None) -> ColumnSpec:
    return ColumnSpec(name=name, kind=kind, required=required, choices=choices, default=default)


SPECS: dict[str, TableSpec] = {
    "users": TableSpec(name="users", key="user_id", columns=(
        _col("user_id", "id", True), _col("signup_ts", "timestamp", True),
        _col("region", "text"), _col("channel", "text"), _col("timezone", "text"),
        _col("acquisition_cost", "amount"),
        # What the platform may know of a user's vulnerability to credit (no default: an
        # unknown value stays null and never counts as vulnerable on its own).
        _col("is_student", "flag"), _col("self_excluded_from_credit", "flag"))),
    "orders": TableSpec(name="orders", key="order_id", columns=(
        _col("order_id", "id", True), _col("buyer_id", "id", True),
        _col("ts", "timestamp", True), _col("amount", "amount", True),
        _col("seller_id", "id"), _col("item_id", "id"), _col("category", "text"),
        _col("commission", "amount"),
        _col("status", "choice", choices=ORDER_STATUSES, default="completed"),
        _col("coupon_used", "flag", default=False),
        _col("payment_fingerprint", "fingerprint"),
        _col("new_user_perk", "flag", default=False))),
    "listings": TableSpec(name="listings", key="item_id", columns=(
        _col("item_id", "id", True), _col("seller_id", "id", True),
        _col("listed_ts", "timestamp", True), _col("category", "text"),
        _col("price", "amount"), _col("stock", "count", default=1),
        _col("sold_ts", "timestamp"))),
    "events": TableSpec(name="events", columns=(
        _col("user_id", "id", True), _col("ts", "timestamp", True),
        _col("type", "choice", True, choices=EVENT_TYPES), _col("item_id", "id"),
        _col("category", "text"), _col("price", "amount"), _col("seller_id", "id"),
        _col("session_id", "id"), _col("ip_prefix", "ip_prefix"), _col("country", "text"),
        _col("rating", "rating"), _col("text", "text"))),
    # Personalisation is on unless the user turned it off; marketing needs an opt-in.
    "preferences": TableSpec(name="preferences", key="user_id", columns=(
        _col("user_id", "id", True), _col("personalization", "flag", default=True),
        _col("marketing_email", "flag", default=False),
        _col("marketing_sms", "flag", default=False),
        _col("marketing_push", "flag", default=False),
        _col("updated_ts", "timestamp"))),
}


@dataclass(frozen=True)
class ValidationResult:
    """Good rows coerced to the contract, one reject line per bad row, and notes on how
    values were read (e.g. the order of day and month)."""

    accepted: pd.DataFrame
    rejects: pd.DataFrame
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Issue:
    """Rows of one column failing one check; ``show_value`` appends the raw value to the reason."""

    bad: np.ndarray
    reason: str
    show_value: bool = True


@dataclass(frozen=True)
class Coerced:
    """A column converted to its contract type, and the checks it failed.

    ``shown``: what the reject file shows in place of the raw values, for columns whose raw
    value must never be written anywhere (a card number masked, an IP address truncated)."""

    values: pd.Series
    issues: tuple[Issue, ...] = ()
    note: str | None = None
    shown: pd.Series | None = None


def spec(table: str) -> TableSpec:
    """The spec of ``table``, or a DataError listing the tables there are."""
    if table not in SPECS:
        raise DataError(f"unknown table {table!r}; expected one of {', '.join(SPECS)}",
                        field="table")
    return SPECS[table]


def check_columns(table: str, columns: list[str]) -> None:
    """Refuse a table whole when a required column is missing, naming it."""
    missing = [c for c in spec(table).required if c not in columns]
    if missing:
        raise DataError(
            f"{table}: required column {missing[0]!r} is missing "
            f"(found: {', '.join(map(str, columns)) or 'no columns'})", field=missing[0])


def _missing(raw: pd.Series) -> np.ndarray:
    """Null, empty or blank values."""
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        return (raw.isna() | (raw.astype("str").str.strip() == "")).to_numpy(bool)
    return raw.isna().to_numpy(bool)


def _text(raw: pd.Series) -> pd.Series:
    """Strings with surrounding blanks removed; blanks become null."""
    text = raw.astype("str").str.strip()
    return text.where(~_missing(raw))


def _whole_numbers_as_text(raw: pd.Series) -> pd.Series:
    """A float column holding whole numbers (ids, ``19970101.0``) as integer strings."""
    whole = raw.notna() & (raw == np.floor(raw))
    return raw.astype(object).where(~whole, raw.where(whole).astype("Int64").astype("str"))


def parse_timestamps(raw: pd.Series, date_format: str | None = None, *,
                     name: str = "timestamp") -> pd.Series:
    """:func:`read_timestamps` without the note: naive UTC ``datetime64[us]``, NaT if unparsable."""
    return read_timestamps(raw, date_format, name=name).values


# Day and month in either order, then a 4-digit year and an optional time: 07/09/2024 10:30.
_DAY_MONTH = (r"^(?P<a>\d{1,2})(?P<sep>[/.\-])(?P<b>\d{1,2})(?P=sep)(?P<year>\d{4})"
              r"(?:[ T](?P<time>\d{1,2}:\d{2}(?::\d{2})?))?$")


def read_timestamps(raw: pd.Series, date_format: str | None = None, *,
                    name: str = "timestamp") -> Coerced:
    """Parse timestamps to naive UTC ``datetime64[us]`` (NaT where unparsable).

    Without ``date_format``: ISO 8601, ``YYYYMMDD``, epoch seconds, or day and month in the
    order the column itself shows (the note says which). With ``date_format`` (strftime;
    ``%z`` offsets are converted to UTC) only that format. Datetime input keeps its instant:
    tz-aware values are converted to UTC, naive ones are taken as UTC already. Raises
    DataError, naming ``name``, when day and month cannot be told apart.
    """
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return Coerced(raw.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]"))
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        return Coerced(raw.astype("datetime64[us]"))
    if pd.api.types.is_float_dtype(raw.dtype):
        raw = _whole_numbers_as_text(raw)
    text = _text(raw)
    if date_format is not None:
        return Coerced(_with_format(text, date_format))
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us]")
    compact = text.str.fullmatch(r"\d{8}", na=False)
    epoch = text.str.fullmatch(r"-?\d{9,11}(\.\d*)?", na=False) & ~compact
    parts = text.str.extract(_DAY_MONTH)
    day_month = parts["a"].notna()
    iso = text.notna() & ~compact & ~epoch & ~day_month
    if compact.any():
        out[compact] = pd.to_datetime(text[compact], format="%Y%m%d", errors="coerce")
    if epoch.any():
        seconds = pd.to_numeric(text[epoch], errors="coerce")
        out[epoch] = pd.to_datetime(seconds, unit="s", errors="coerce")
    if iso.any():
        parsed = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce")
        out[iso] = parsed.dt.tz_localize(None)
    note = None
    if day_month.any():
        parsed, note = _day_month_values(parts[day_month], text[day_month], name)
        out[day_month] = parsed
    return Coerced(out, note=note)


def _with_format(text: pd.Series, date_format: str) -> pd.Series:
    """``text`` parsed with one strftime format; DataError naming the flag if it is not one."""
    if "%" not in date_format:
        raise DataError(f"--date-format {date_format!r} has no % directive "
                        "(e.g. %m/%d/%Y or %d.%m.%Y %H:%M)", field="date_format")
    try:
        parsed = pd.to_datetime(text, format=date_format, utc=True, errors="coerce")
    except ValueError as exc:
        raise DataError(f"--date-format {date_format!r}: {exc}", field="date_format") from exc
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


def _day_month_values(parts: pd.DataFrame, text: pd.Series, name: str
                      ) -> tuple[pd.Series, str]:
    """Day/month/year values read in the order some value proves (a number above 12).

    DataError when no value proves it, or values prove both orders."""
    a, b = parts["a"].astype(int), parts["b"].astype(int)
    sep = parts["sep"].iloc[0]
    formats = f"--date-format %m{sep}%d{sep}%Y (month first) or %d{sep}%m{sep}%Y (day first)"
    day_first, month_first = (a > 12).to_numpy(bool), (b > 12).to_numpy(bool)
    if day_first.any() and month_first.any():
        raise DataError(
            f"{name}: dates {text[day_first].iloc[0]!r} (day first) and "
            f"{text[month_first].iloc[0]!r} (month first) disagree on the order; rerun with "
            f"{formats}", field=name)
    if not day_first.any() and not month_first.any():
        raise DataError(
            f"{name}: dates like {text.iloc[0]!r} could be month/day/year or day/month/year "
            f"and no value tells which; rerun with {formats}", field=name)
    day, month = (a, b) if day_first.any() else (b, a)
    proof = text[day_first if day_first.any() else month_first].iloc[0]
    iso = (parts["year"] + "-" + month.astype(str).str.zfill(2) + "-"
           + day.astype(str).str.zfill(2) + " " + parts["time"].fillna("00:00"))
    parsed = pd.to_datetime(iso, format="ISO8601", errors="coerce").astype("datetime64[us]")
    order = "day/month/year" if day_first.any() else "month/day/year"
    return parsed, f"{name}: dates read as {order} ({proof!r} shows the order)"


def _numbers(raw: pd.Series) -> pd.Series:
    """Numbers from numeric columns or text like ``1,234.50`` or ``$12``."""
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        return raw.astype("float64")
    text = _text(raw).str.replace(r"^[$€£¥]|[$€£¥]$|,(?=\d{3}(\D|$))", "", regex=True)
    return pd.to_numeric(text, errors="coerce").astype("float64")


def _coerce_timestamp(c: ColumnSpec, raw: pd.Series, missing: np.ndarray,
                      date_format: str | None = None) -> Coerced:
    read = read_timestamps(raw, date_format, name=c.name)
    reason = f"unparsable date (expected {date_format})" if date_format else "unparsable date"
    bad = ~missing & read.values.isna().to_numpy(bool)
    return Coerced(read.values, (Issue(bad, reason),), read.note)


def _coerce_amount(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    values = _numbers(raw)
    return Coerced(values, (Issue(~missing & values.isna().to_numpy(bool), "not a number"),
                            Issue((values < 0).to_numpy(bool), f"negative {c.name}")))


def _coerce_count(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    numbers = _numbers(raw)
    valid = ((numbers >= 0) & (numbers == np.floor(numbers))).to_numpy(bool)
    filled = numbers.where(valid, c.default if c.default is not None else 0)
    return Coerced(filled.astype("int64"),
                   (Issue(~missing & ~valid, f"{c.name} is not a whole number >= 0"),))


def _coerce_flag(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    """Booleans from booleans or words; a missing value takes the column's default, or stays
    null (pandas' nullable ``boolean``) when it has none."""
    if pd.api.types.is_bool_dtype(raw.dtype) and not missing.any():
        return Coerced(raw.astype(bool))
    words = _text(raw).str.lower()
    true, false = words.isin(TRUE_WORDS).to_numpy(bool), words.isin(FALSE_WORDS).to_numpy(bool)
    if c.default is None:
        values = pd.Series(pd.array(np.where(true, True, np.where(false, False, None)),
                                    dtype="boolean"), index=raw.index)
        return Coerced(values, (Issue(~missing & ~true & ~false, "not a boolean"),))
    values = pd.Series(np.where(true, True, np.where(false, False, bool(c.default))),
                       index=raw.index, dtype=bool)
    return Coerced(values, (Issue(~missing & ~true & ~false, "not a boolean"),))


def _coerce_choice(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    words = _text(raw).str.lower()
    values = words.fillna(c.default) if c.default is not None else words
    label = "event type" if c.name == "type" else c.name
    return Coerced(values.astype("str"),
                   (Issue(~missing & ~words.isin(c.choices).to_numpy(bool), f"unknown {label}"),))


def _coerce_text(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    if pd.api.types.is_float_dtype(raw.dtype):  # ids read as numbers: 17.0 -> "17"
        raw = _whole_numbers_as_text(raw)
    return Coerced(_text(raw).astype("str"))


_CARD_DIGITS = re.compile(r"^\d{13,19}$")


def _luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn check that payment card numbers carry."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        d = int(char)
        if position % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def looks_like_card_number(value: str) -> bool:
    """13-19 digits (blanks and dashes aside) passing the Luhn check: a payment card number."""
    digits = re.sub(r"[\s\-]", "", value)
    return bool(_CARD_DIGITS.match(digits)) and _luhn_valid(digits)


def _coerce_fingerprint(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    """An opaque token the platform derives from a payment method; a card number is refused
    (and masked in the reject file) so that none is ever stored."""
    text = _coerce_text(c, raw, missing).values
    values = text.dropna().unique()
    cards = {v for v in values if looks_like_card_number(v)}
    bad = text.isin(cards).to_numpy(bool) if cards else np.zeros(len(text), bool)
    masked = raw.where(~bad, text.str.replace(r"[^\s\-](?=(?:[\s\-]*[^\s\-]){4})", "*",
                                              regex=True))
    return Coerced(text, (Issue(bad, "looks like a payment card number, not a fingerprint "
                                     "(send an opaque hash of the card instead)",
                                show_value=False),), shown=masked)


def ip_prefix(value: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of an address or prefix, as text; a shorter
    prefix is kept as it is. None when ``value`` is neither an address nor a prefix."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None
    keep = IPV4_PREFIX if network.version == 4 else IPV6_PREFIX
    if network.prefixlen > keep:
        network = network.supernet(new_prefix=keep)
    return str(network)


def _coerce_ip_prefix(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    """IP prefixes; full addresses (and longer prefixes) are truncated to /24 or /48, so no
    full address is ever stored. Each distinct value is parsed once."""
    text = _text(raw)
    distinct = text.dropna().unique()
    prefixes = {v: ip_prefix(v) for v in distinct}
    values = text.map(prefixes).astype("str")
    bad = ~missing & values.isna().to_numpy(bool)
    truncated = sum(1 for v, p in prefixes.items() if p is not None and p != v)
    note = None
    if truncated:
        rows = int(text.isin([v for v, p in prefixes.items() if p is not None and p != v]).sum())
        note = (f"{c.name}: {rows:,} full addresses (or longer prefixes) truncated to /"
                f"{IPV4_PREFIX} (IPv4) or /{IPV6_PREFIX} (IPv6) prefixes")
    return Coerced(values, (Issue(bad, "not an IP address or prefix"),), note,
                   shown=raw.where(bad | missing, values))


def _coerce_rating(c: ColumnSpec, raw: pd.Series, missing: np.ndarray) -> Coerced:
    """A whole number from RATINGS[0] to RATINGS[1] (stars), as float64 (NaN when absent)."""
    numbers = _numbers(raw)
    low, high = RATINGS
    valid = ((numbers >= low) & (numbers <= high) & (numbers == np.floor(numbers))).to_numpy(bool)
    return Coerced(numbers.where(valid),
                   (Issue(~missing & ~valid, f"{c.name} is not a whole number from {low} to "
                                             f"{high}"),))


COERCERS = {"timestamp": _coerce_timestamp, "amount": _coerce_amount, "count": _coerce_count,
            "flag": _coerce_flag, "choice": _coerce_choice, "id": _coerce_text,
            "text": _coerce_text, "fingerprint": _coerce_fingerprint,
            "ip_prefix": _coerce_ip_prefix, "rating": _coerce_rating}


@dataclass
class _Problems:
    """Bad cells found so far: row positions, column names and reasons."""

    rows: list[np.ndarray]
    columns: list[str]
    reasons: list[np.ndarray]

    def add(self, issue: Issue, column: str, raw: pd.Series) -> None:
        """Record the rows failing ``issue``; reasons are built for those rows only."""
        positions = np.flatnonzero(issue.bad)
        if positions.size == 0:
            return
        reason = np.full(positions.size, issue.reason, object)
        if issue.show_value:
            shown = _text(raw.iloc[positions]).fillna("").map(repr).to_numpy(object)
            reason = reason + " " + shown
        self.rows.append(positions)
        self.columns.append(column)
        self.reasons.append(reason)

    def bad_rows(self, n: int) -> np.ndarray:
        mask = np.zeros(n, bool)
        for positions in self.rows:
            mask[positions] = True
        return mask

    def frame(self, original: pd.DataFrame, row_numbers: np.ndarray) -> pd.DataFrame:
        """One line per bad row: ``row`` (1-based), the bad columns and reasons, raw values.

        Raw columns are prefixed ``value_`` only if they would clash with ``row``,
        ``column`` or ``reason``.
        """
        if original.columns.isin(REJECT_COLUMNS).any():
            original = original.add_prefix("value_")
        if not self.rows:
            return pd.DataFrame(columns=REJECT_COLUMNS + list(original.columns))
        cells = pd.DataFrame({
            "position": np.concatenate(self.rows),
            "column": np.concatenate([np.full(len(p), c, object)
                                      for p, c in zip(self.rows, self.columns, strict=True)]),
            "reason": np.concatenate(self.reasons),
        })
        lines = cells.groupby("position", sort=True).agg({"column": "; ".join, "reason": "; ".join})
        raw = original.iloc[lines.index.to_numpy()].reset_index(drop=True)
        head = pd.DataFrame({"row": row_numbers[lines.index.to_numpy()],
                             "column": lines["column"].to_numpy(),
                             "reason": lines["reason"].to_numpy()})
        return pd.concat([head, raw], axis=1)


def validate(table: str, frame: pd.DataFrame, *,
             date_format: str | None = None) -> ValidationResult:
    """Split ``frame`` (columns already named as in the contract) into good and bad rows.

    A bad row is reported as row ``i + 1`` where ``i`` is its index label in ``frame`` (its
    0-based position in the source file when read as is). Missing optional columns are added
    with their default (or null); columns the contract does not know are dropped.
    ``date_format`` (strftime) is how every timestamp column is written; None reads the
    formats of :func:`read_timestamps`. Raises DataError when a required column is absent
    or the order of day and month cannot be told.
    """
    table_spec = spec(table)
    check_columns(table, list(frame.columns))
    labels = frame.index
    row_numbers = (labels.to_numpy(np.int64) + 1 if pd.api.types.is_integer_dtype(labels.dtype)
                   else np.arange(1, len(frame) + 1))
    frame = frame.reset_index(drop=True)
    problems = _Problems([], [], [])
    values: dict[str, pd.Series] = {}
    notes: list[str] = []
    coercers = {**COERCERS, "timestamp": partial(_coerce_timestamp, date_format=date_format)}
    for c in table_spec.columns:
        raw = frame[c.name] if c.name in frame else pd.Series([None] * len(frame), dtype=object)
        missing = _missing(raw)
        coerced = coercers[c.kind](c, raw, missing)
        if coerced.note:
            notes.append(coerced.note)
        if c.required:
            problems.add(Issue(missing, "missing value", show_value=False), c.name, raw)
        for issue in coerced.issues:
            problems.add(issue, c.name, raw)
        if coerced.shown is not None and c.name in frame:
            frame[c.name] = coerced.shown
        values[c.name] = coerced.values
    accepted = pd.DataFrame(values)
    bad = problems.bad_rows(len(frame))
    if table_spec.key:
        key = accepted[table_spec.key]
        duplicate = ~bad & key.where(~bad).duplicated(keep="first").to_numpy(bool)
        problems.add(Issue(duplicate, f"duplicate {table_spec.key}"), table_spec.key,
                     frame[table_spec.key])
        bad |= duplicate
    return ValidationResult(accepted=accepted[~bad].reset_index(drop=True),
                            rejects=problems.frame(frame, row_numbers), notes=tuple(notes))


def raw_path(raw_dir: Path, table: str) -> Path:
    """Where the Parquet file of ``table`` lives under ``raw_dir``."""
    return Path(raw_dir) / f"{table}.parquet"


def raw_files(raw_dir: Path, table: str) -> list[Path]:
    """Every Parquet file of ``table``: ``TABLE.parquet`` (imported or synthesised) and the
    partitions ``TABLE/*.parquet`` appended since (e.g. events kept by the service)."""
    main = raw_path(raw_dir, table)
    parts = sorted((Path(raw_dir) / table).glob("*.parquet"))
    return ([main] if main.is_file() else []) + parts
