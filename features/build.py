"""Build the point-in-time feature table of one ``as_of`` date (docs/CONTRACT.md).

The public API other stages call: :func:`build_features`, :func:`load_features`,
:func:`available_as_of`, :func:`default_as_of`, :func:`feature_columns`,
:func:`categorical_columns`, :func:`refresh_online_store`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel
from tqdm import tqdm

from features.comparables import write_comparables
from features.contract import raw_path
from features.definitions import (
    ACTIVITY_COUNTS,
    CATEGORICAL,
    EVENT_KINDS,
    GROUP_FEATURES,
    POLICY_FLAGS,
    SELLER_COUNTS,
    feature_table,
    model_inputs,
    seller_inputs,
    with_30_days,
)
from features.engines import connect, execute_arrow, latest_timestamp, register_tables
from features.segmentation import ClusterReport, segment
from features.sendtime import best_hours
from nextbest.config import FeaturesConfig, Settings
from nextbest.errors import DataError, NotFound, ValidationFailed

if TYPE_CHECKING:
    from features.store import RecordsLoaded

log = logging.getLogger(__name__)

FEATURES_FILE = "features.parquet"
CLUSTERS_FILE = "clusters.json"
_PARTITION = re.compile(r"^as_of=(\d{4}-\d{2}-\d{2})$")
_DEFAULT_WINDOWS: tuple[int, ...] = tuple(FeaturesConfig().windows_days)


def categorical_columns() -> list[str]:
    """Model-input columns that hold categories (strings), not numbers."""
    return list(CATEGORICAL)


def feature_columns(windows: Sequence[int] = _DEFAULT_WINDOWS) -> list[str]:
    """Model-input feature names (numeric, then categorical) in a fixed order."""
    return model_inputs(windows)


def seller_feature_columns(windows: Sequence[int] = _DEFAULT_WINDOWS) -> list[str]:
    """Seller R, F, M and the listing pipeline: written with the others, model inputs of the
    seller churn model (the buyer models keep to :func:`feature_columns`)."""
    return seller_inputs(windows)


def group_feature_columns() -> list[str]:
    """Risk, behaviour-path and sentiment features: written with the others and read by tag
    and risk rules, never model inputs (a risk signal must not lower anyone's score)."""
    return list(GROUP_FEATURES)


def segmentation_columns() -> list[str]:
    """Columns added by segmentation after the engine computed the features."""
    return ["tier", "segment", "r_score", "f_score", "m_score", "cluster", "seller_tier",
            "seller_tags", "lifecycle_stage", "tags", "risk_reasons"]


def policy_columns() -> list[str]:
    """Columns only the policy layer reads (``policy.no_credit_when``), never model inputs:
    what the platform says of the user's vulnerability to credit (null when unknown)."""
    return list(POLICY_FLAGS)


def delivery_columns() -> list[str]:
    """Columns for campaign delivery (not model inputs): the user's time zone and best hour
    to be contacted (:mod:`features.sendtime`)."""
    return ["timezone", "best_hour_utc", "active_events", "best_hour", "best_hour_source"]


def partition_dir(features_dir: Path, as_of: date) -> Path:
    """The directory holding the features of one ``as_of``."""
    return Path(features_dir) / f"as_of={as_of.isoformat()}"


def available_as_of(settings: Settings, features_dir: Path | None = None) -> list[date]:
    """The ``as_of`` dates that have a features file, oldest first."""
    root = Path(features_dir or settings.paths.features_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _PARTITION.match(child.name)
        if match and (child / FEATURES_FILE).is_file():
            found.append(date.fromisoformat(match.group(1)))
    return sorted(found)


def load_features(settings: Settings, as_of: date,
                  features_dir: Path | None = None) -> pd.DataFrame:
    """Read the features written for ``as_of``; :class:`NotFound` if they were never built."""
    path = partition_dir(Path(features_dir or settings.paths.features_dir), as_of) / FEATURES_FILE
    if not path.is_file():
        raise NotFound(f"no features for as_of {as_of.isoformat()} ({path} is missing); "
                       f"run `nextbest features build --as-of {as_of}` first", field="as_of")
    return without_erased(settings, pd.read_parquet(path))


def default_as_of(settings: Settings, raw_dir: Path | None = None,
                  tables: Sequence[str] = ("orders", "events")) -> date:
    """The day after the latest timestamp of the raw ``tables`` (default: orders and events,
    the whole history)."""
    latest = latest_timestamp(Path(raw_dir or settings.paths.raw_dir), tables)
    if latest is None:
        raise DataError("cannot choose a default as_of: the raw orders/events hold no rows",
                        field="as_of")
    return latest.date() + timedelta(days=1)


def check_as_of(settings: Settings, as_of: date, raw_dir: Path | None = None) -> None:
    """Refuse an ``as_of`` more than ``features.as_of_max_days_past_data`` days after the
    day after the data's last order or event.

    Why: such features describe no one's recent behaviour, and the online store keeps the
    latest as_of, so every later correct build would leave them in place.
    """
    latest = latest_timestamp(Path(raw_dir or settings.paths.raw_dir))
    if latest is None:
        return
    end = latest.date() + timedelta(days=1)
    limit = settings.features.as_of_max_days_past_data
    past = (as_of - end).days
    if past > limit:
        raise ValidationFailed(
            f"--as-of {as_of} is {past:,} days after the data ends (last order or event on "
            f"{latest.date()}, default as_of {end}), more than "
            f"features.as_of_max_days_past_data ({limit}); the online store would keep these "
            "records over every later build. Pass --force to build it anyway", field="as_of")


def build_features(settings: Settings, as_of: date | None = None, *, engine: str | None = None,
                   raw_dir: Path | None = None, out_dir: Path | None = None,
                   refresh_store: bool = True, progress: bool = True, force: bool = False,
                   timings: dict[str, float] | None = None) -> pd.DataFrame:
    """Compute, segment and write the features of ``as_of``; return the written frame.

    Reads ``raw_dir/{users,orders,listings,events}.parquet`` (only orders are required),
    computes the point-in-time features with ``engine`` (``duckdb`` in-process by default,
    or ``spark``) from the one ibis definition in :mod:`features.definitions`, adds tiers,
    RFM segments, clusters, seller tiers and tags (:mod:`features.segmentation`), writes
    ``out_dir/as_of=YYYY-MM-DD/features.parquet``, ``clusters.json`` and the sold
    comparables (``comparables.json``, :mod:`features.comparables`) beside it, and
    refreshes the online store (preferences too, :func:`refresh_online_store`) when
    ``refresh_store`` is true. ``as_of`` None means :func:`default_as_of`; a given one far
    past the data's end is refused (:func:`check_as_of`) unless ``force``. ``timings``, if
    given, receives the seconds of each stage.

    On a Spark cluster, submit this module with spark-submit (``main`` runs
    ``nextbest features build --engine spark`` with the same flags). The master and the
    cluster settings then come from spark-submit, the driver binds 127.0.0.1 only for a
    local master, and the raw and output paths must be visible to driver and executors (a
    shared file system). With the project's virtualenv on PATH::

        PYSPARK_PYTHON=.venv/bin/python spark-submit --master spark://HOST:7077 \\
            features/build.py --as-of 2026-01-01 --data /shared/raw --out /shared/features

    (checked here with ``--master local[2]``).
    """
    started = time.perf_counter()
    engine = engine or settings.features.engine
    raw = Path(raw_dir or settings.paths.raw_dir)
    root = Path(out_dir or settings.paths.features_dir)
    windows = with_30_days(settings.features.windows_days)
    if as_of is None:
        as_of = default_as_of(settings, raw)
    elif not force:
        check_as_of(settings, as_of, raw)
    names = ["read raw tables", f"compute features ({engine})", "segment", "write"]
    names += ["refresh online store"] if refresh_store else []
    with _Stages(names, f"features {as_of}", progress) as stages:
        frame = _compute(settings, engine, raw, as_of, windows, stages)
        frame = without_erased(settings, frame)
        frame, report = segment(frame, settings.features, settings.policy)
        frame[["best_hour", "best_hour_source"]] = best_hours(
            frame, as_of, settings.features.best_hour_min_events)
        frame = _as_written(frame[["user_id", "as_of"] + feature_columns(windows)
                                  + seller_feature_columns(windows) + group_feature_columns() + segmentation_columns()
                                  + delivery_columns() + policy_columns()])
        stages.done()
        _write(frame, report, partition_dir(root, as_of))
        write_comparables(raw, as_of, partition_dir(root, as_of))
        stages.done()
        if refresh_store:
            refreshed = refresh_online_store(settings, frame, as_of, raw)
            log.info("%s", refreshed.line())
            stages.done()
    if timings is not None:
        timings.update(stages.seconds)
    log.debug("built features as_of %s: %d users, %d columns in %.1f s (%s)", as_of, len(frame),
              frame.shape[1], time.perf_counter() - started, engine)
    return frame


class StoreRefresh(BaseModel):
    """What refreshing the online store did: the records (written, newer ones kept), the
    users whose preferences the data set, and the latest record as_of in the store."""

    as_of: date
    written: int
    kept_newer: int
    preferences: int
    store_as_of: str | None
    reviews_opened: int = 0

    @classmethod
    def of(cls, as_of: date, loaded: RecordsLoaded, preferences: int,
           store_as_of: str | None) -> StoreRefresh:
        return cls(as_of=as_of, written=loaded.written, kept_newer=loaded.kept_newer,
                   preferences=preferences, store_as_of=store_as_of,
                   reviews_opened=loaded.reviews_opened)

    def line(self) -> str:
        """``store refreshed ...``, or ``store kept N newer records ...`` when it did; and
        how many users risk rules sent to the review queue."""
        prefs = f"preferences of {self.preferences:,} users"
        reviews = (f"; {self.reviews_opened:,} users sent to review (`nextbest review list`)"
                   if self.reviews_opened else "")
        if not self.kept_newer:
            return f"store refreshed: {self.written:,} records, {prefs}{reviews}"
        return (f"store kept {self.kept_newer:,} newer records (as_of {self.store_as_of}) "
                f"and wrote {self.written:,}, {prefs}{reviews}; `nextbest store refresh "
                f"--as-of {self.as_of}` puts this as_of back")


def refresh_online_store(settings: Settings, frame: pd.DataFrame, as_of: date,
                  raw_dir: Path | None = None) -> StoreRefresh:
    """Load the raw preferences and the records of ``frame`` into the online store.

    Preferences: the newer of the stored and the imported ones wins, by ``updated_ts`` (a
    choice made through the API after the file's stamp survives). Records: a stored record
    with a later as_of is kept, and counted. Erased users are skipped (the store's list).
    """
    from features.store import open_store  # only needed when refreshing the store

    path = raw_path(Path(raw_dir or settings.paths.raw_dir), "preferences")
    with open_store(settings) as store:
        preferences = store.load_preferences(pd.read_parquet(path)) if path.is_file() else 0
        loaded = store.load_records(frame, as_of)
        return StoreRefresh.of(as_of, loaded, preferences, store.meta()["as_of"])


def without_erased(settings: Settings, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the rows of users erased on request (the online store's erasure
    list): never built again, and never read back from a partition built before their
    erasure, so neither the online store nor a training set sees them even if a file still
    held them."""
    if frame.empty or "user_id" not in frame.columns:
        return frame
    if settings.store.backend == "sqlite" and not Path(settings.paths.store_path).exists():
        return frame
    from features.store import open_store

    with open_store(settings) as store:
        erased = store.erased_among(frame["user_id"].astype(str).unique())
    if not erased:
        return frame
    return frame[~frame["user_id"].astype(str).isin(erased)].reset_index(drop=True)


class _Stages:
    """A progress bar over the build's stages that also records the seconds each took."""

    def __init__(self, names: list[str], title: str, enabled: bool):
        self.names = names
        self.seconds: dict[str, float] = {}
        self._bar = tqdm(total=len(names), desc=title, unit="stage", disable=not enabled,
                         leave=False)
        self._bar.set_postfix_str(names[0])
        self._since = time.perf_counter()
        self._current = 0

    def done(self) -> None:
        """Finish the current stage and name the next one."""
        now = time.perf_counter()
        self.seconds[self.names[self._current]] = round(now - self._since, 3)
        self._since = now
        self._current += 1
        self._bar.update(1)
        if self._current < len(self.names):
            self._bar.set_postfix_str(self.names[self._current])

    def __enter__(self) -> _Stages:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


def _compute(settings: Settings, engine: str, raw: Path, as_of: date, windows: list[int],
             stages: _Stages) -> pd.DataFrame:
    """Run the ibis definition on ``engine`` and return the normalised feature frame."""
    con = connect(engine, settings.features)
    try:
        tables = register_tables(con, raw)
        stages.done()
        table = execute_arrow(con, feature_table(tables, as_of, windows).order_by("user_id"))
    finally:
        if engine == "duckdb":  # the Spark session is shared by the whole process
            con.disconnect()
    frame = _normalise(table, as_of, windows)
    stages.done()
    return frame


def _int_columns(windows: Sequence[int]) -> list[str]:
    counts = ["frequency_total", "cart_abandonments_30d", "items_listed", "items_sold",
              "active_events", "frequency_prev_90d", "payment_fingerprints_30d",
              "fingerprint_accounts", "new_user_perks", "purchases_after_perk",
              "returns_total", *ACTIVITY_COUNTS, *SELLER_COUNTS]
    counts += [f"frequency_{w}d" for w in windows]
    counts += [f"{kind}_{w}d" for kind in ("listings", "sales") for w in windows]
    counts += [f"{kind}_{w}d" for kind in EVENT_KINDS for w in windows]
    return counts


def _normalise(table: pa.Table, as_of: date, windows: Sequence[int]) -> pd.DataFrame:
    """Same dtypes whatever the engine: ints, floats rounded to 1e-9, strings, a bool.

    Done on the Arrow result, before pandas sees it. Rounding makes sums that two engines
    add up in a different order equal, so tiers and quintiles, which rank these values,
    agree between engines too.
    """
    ints = set(_int_columns(windows))
    strings = {"user_id", *categorical_columns(), "timezone"}
    columns: dict[str, pa.ChunkedArray] = {}
    for name in table.column_names:
        values = table[name]
        if name in ints:
            columns[name] = pc.fill_null(values, 0).cast(pa.int64())
        elif name in strings:
            columns[name] = values.cast(pa.string())
        elif name == "is_seller":
            columns[name] = pc.fill_null(values, False).cast(pa.bool_())
        elif name in POLICY_FLAGS:  # null stays null: unknown is not "no"
            columns[name] = values.cast(pa.bool_())
        elif name == "best_hour_utc":  # an hour 0-23, missing without any activity
            columns[name] = values.cast(pa.float64())
        else:
            columns[name] = pc.round(values.cast(pa.float64()), 9)
        if name == "user_id":
            columns["as_of"] = pa.chunked_array(
                [pa.repeat(pa.scalar(as_of, pa.date32()), len(table)).cast(pa.timestamp("us"))])
    return pa.table(columns).to_pandas(split_blocks=True, self_destruct=True)


def _as_written(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as pandas' string dtype (missing = NaN), as a Parquet round trip gives."""
    text = ["user_id", *categorical_columns(), "timezone", "tier", "segment", "seller_tier",
            "lifecycle_stage", "best_hour_source"]
    flags = {column: "boolean" for column in policy_columns()}
    return frame.astype({column: "str" for column in text} | flags)


def _write(frame: pd.DataFrame, report: ClusterReport, directory: Path) -> None:
    """Write features.parquet and clusters.json, each replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{FEATURES_FILE}.tmp"
    text = [name for name, dtype in frame.dtypes.items() if dtype == "str"]
    # Dictionary-encode only text: float columns rarely repeat, so it is wasted work there.
    frame.to_parquet(tmp, index=False, use_dictionary=text)
    os.replace(tmp, directory / FEATURES_FILE)
    tmp_json = directory / f".{CLUSTERS_FILE}.tmp"
    tmp_json.write_text(report.model_dump_json(indent=2))
    os.replace(tmp_json, directory / CLUSTERS_FILE)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``spark-submit features/build.py ...``: ``features build --engine spark``."""
    from nextbest.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--engine" not in args:
        args += ["--engine", "spark"]
    return cli_main(["features", "build", *args])


if __name__ == "__main__":
    sys.exit(main())
