"""The engines that execute the ibis feature definition: DuckDB (default) and Spark.

An engine connects an ibis backend, registers the raw Parquet tables of docs/CONTRACT.md
as ibis tables (adding optional columns a platform did not supply, with their defaults),
and executes an expression into pandas. The feature definition itself
(:mod:`features.definitions`) never knows which engine runs it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa

from features.contract import raw_files, raw_path
from nextbest.config import FeaturesConfig
from nextbest.errors import ConfigError, DataError, MissingComponent

ENGINES = ("duckdb", "spark")
TABLES = ("users", "orders", "listings", "events", "review_scores")

# Required columns per table (docs/CONTRACT.md); a file without one is unusable.
REQUIRED: dict[str, tuple[str, ...]] = {
    "users": ("user_id", "signup_ts"),
    "orders": ("order_id", "buyer_id", "ts", "amount"),
    "listings": ("item_id", "seller_id", "listed_ts"),
    "events": ("user_id", "ts", "type"),
    # Derived, not a contract table: ratings that `nextbest train sentiment` estimated for
    # reviews that came with a text only.
    "review_scores": ("user_id", "ts", "rating"),
}

# Optional columns the definition reads, with the value used when a platform lacks them.
OPTIONAL: dict[str, dict[str, tuple[str, Any]]] = {
    "users": {"region": ("string", None), "channel": ("string", None),
              "timezone": ("string", None),
              "is_student": ("boolean", None), "self_excluded_from_credit": ("boolean", None)},
    "orders": {"seller_id": ("string", None), "item_id": ("string", None),
               "category": ("string", None), "commission": ("float64", 0.0),
               "status": ("string", "completed"), "coupon_used": ("boolean", False),
               "payment_fingerprint": ("string", None), "new_user_perk": ("boolean", False)},
    "listings": {"sold_ts": ("timestamp", None)},
    "events": {"item_id": ("string", None), "category": ("string", None),
               "session_id": ("string", None), "ip_prefix": ("string", None),
               "country": ("string", None), "rating": ("float64", None)},
    "review_scores": {},
}


@dataclass(frozen=True)
class RawTables:
    """The raw tables as ibis tables of one backend; ``None`` where the file is absent."""

    orders: ir.Table
    users: ir.Table | None = None
    listings: ir.Table | None = None
    events: ir.Table | None = None
    review_scores: ir.Table | None = None


def connect(engine: str, config: FeaturesConfig) -> ibis.BaseBackend:
    """An ibis backend for ``engine`` (``duckdb`` or ``spark``), configured from settings."""
    if engine == "duckdb":
        threads = config.duckdb_threads or os.cpu_count() or 1
        return ibis.duckdb.connect(threads=threads, memory_limit=config.duckdb_memory_limit)
    if engine == "spark":
        return ibis.pyspark.connect(spark_session(config))
    raise ConfigError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}",
                      field="engine")


def spark_session(config: FeaturesConfig) -> Any:
    """The process's Spark session, created on first use and then shared.

    Under ``spark-submit`` the master and the cluster settings come from spark-submit
    (``SparkConf`` already holds ``spark.master``); otherwise ``config.spark_master`` is
    used, and a local master binds the driver to 127.0.0.1 with the web UI off.
    """
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - pyspark is a declared dependency
        raise MissingComponent("the spark engine needs pyspark: pip install pyspark==4.0.5 "
                               "and a Java 17 runtime") from exc
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = SparkConf()
    builder = SparkSession.builder.appName("nextbest-features")
    master = conf.get("spark.master", None) or config.spark_master
    if not conf.contains("spark.master"):
        builder = builder.master(master)
    if master.startswith("local"):
        builder = (builder.config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false"))
    builder = (builder.config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", str(config.spark_shuffle_partitions)))
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # Java missing or the JVM failed to start
        raise MissingComponent(f"cannot start Spark ({exc}); install Java 17 "
                               "(apt-get install openjdk-17-jre-headless)") from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


def _complete(table: ir.Table, name: str, path: Path) -> ir.Table:
    """Check the required columns of ``table`` and add absent optional ones with defaults."""
    missing = [c for c in REQUIRED[name] if c not in table.columns]
    if missing:
        raise DataError(f"{path}: required column {missing[0]!r} of table {name} is missing",
                        field=missing[0])
    extra = {col: ibis.literal(default, type=dtype)
             for col, (dtype, default) in OPTIONAL[name].items() if col not in table.columns}
    keep = list(REQUIRED[name]) + list(OPTIONAL[name])
    return table.mutate(**extra).select(*keep) if extra else table.select(*keep)


def register_tables(con: ibis.BaseBackend, raw_dir: Path) -> RawTables:
    """Register the raw Parquet files under ``raw_dir``; orders are required, others optional."""
    found: dict[str, ir.Table] = {}
    suffix = uuid.uuid4().hex[:8]  # unique view names: a Spark session outlives one build
    for name in TABLES:
        files = raw_files(raw_dir, name)
        if not files:
            if name == "orders":
                raise DataError(f"raw orders file {raw_path(raw_dir, name)} is missing: import "
                                "or synthesize the data first (nextbest data import / data "
                                "synth)", field="orders")
            continue
        parts = [_complete(con.read_parquet(str(path), table_name=f"raw_{name}_{i}_{suffix}"),
                           name, path) for i, path in enumerate(files)]
        table = parts[0]
        for part in parts[1:]:
            table = table.union(part.cast(table.schema()))
        found[name] = table
    return RawTables(**found)


def execute_arrow(con: ibis.BaseBackend, expr: ir.Table) -> pa.Table:
    """Run ``expr`` on its backend and return the result as an Arrow table."""
    return con.to_pyarrow(expr)


def execute(con: ibis.BaseBackend, expr: ir.Table) -> pd.DataFrame:
    """Run ``expr`` on its backend and return the result as a pandas frame (through Arrow,
    which is several times faster than ibis's own pandas conversion)."""
    return execute_arrow(con, expr).to_pandas()


def latest_timestamp(raw_dir: Path, tables: Sequence[str] = ("orders", "events")
                     ) -> datetime | None:
    """The latest ``ts`` of the raw ``tables`` (DuckDB: a cheap metadata-level scan)."""
    con = ibis.duckdb.connect()
    latest: list[datetime] = []
    for name in tables:
        files = raw_files(raw_dir, name)
        if not files and name == "orders":
            raise DataError(f"raw orders file {raw_path(raw_dir, name)} is missing",
                            field="orders")
        for path in files:
            value = con.read_parquet(str(path)).ts.max().execute()
            if value is not None and not pd.isna(value):
                latest.append(pd.Timestamp(value).to_pydatetime())
    con.disconnect()
    return max(latest) if latest else None
