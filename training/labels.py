"""Leakage-free labels at a cutoff T (docs/ARCHITECTURE.md, training/).

Population: users with any activity (an order as buyer, of any status, or a behaviour event)
in ``[T - population_days, T)``. Labels look only at completed orders in ``[T, T + horizon)``:

- churn = 1 when the user has no completed order in ``[T, T + churn_horizon_days)``;
- propensity = 1 when the user has a completed order in ``[T, T + propensity_horizon_days)``.

Seller churn (:func:`build_seller_labels`) has its own population, the sellers who listed an
item or sold one (a completed order as seller) in ``[T - population_days, T)``, and is 1 when
the seller lists nothing in ``[T, T + seller_churn_horizon_days)``.

Features are computed as of T from rows with ``ts < T``; labels from rows with ``ts >= T``.
The two never share a row, which is what makes the out-of-time set honest.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd

from nextbest.config import LabelConfig
from nextbest.errors import DataError

ModelName = Literal["churn", "propensity", "seller_churn"]
SELLER_CHURN = "seller_churn"
BUYER_MODELS: tuple[ModelName, ...] = ("churn", "propensity")
MODEL_NAMES: tuple[ModelName, ...] = (*BUYER_MODELS, SELLER_CHURN)
LTV_MODEL = "ltv"  # the lifetime-value model (training/ltv.py), a regression
SENTIMENT_MODEL = "sentiment"  # ratings of review texts (training/sentiment.py)


def horizon_days(model_name: ModelName, config: LabelConfig) -> int:
    """The label window length of ``model_name`` in days."""
    if model_name == "churn":
        return config.churn_horizon_days
    if model_name == "propensity":
        return config.propensity_horizon_days
    if model_name == SELLER_CHURN:
        return config.seller_churn_horizon_days
    raise DataError(f"unknown model {model_name!r}; expected one of {list(MODEL_NAMES)}",
                    field="model_name")


def raw_table(raw_dir: Path, name: str) -> Path | None:
    """The Parquet file of raw table ``name``, or None when the data set has no such table."""
    path = Path(raw_dir) / f"{name}.parquet"
    return path if path.is_file() else None


def orders_path(raw_dir: Path) -> Path:
    """The raw orders file, which every training run needs."""
    path = raw_table(raw_dir, "orders")
    if path is None:
        raise DataError(f"{Path(raw_dir) / 'orders.parquet'} is missing: run `nextbest data synth` "
                        "or `nextbest data import orders` first", field="raw_dir")
    return path


def midnight(day: date) -> datetime:
    """The naive UTC timestamp at the start of ``day`` (raw timestamps are naive UTC)."""
    return datetime.combine(day, time())


def activity_sql(raw_dir: Path) -> str:
    """SQL selecting ``user_id, ts`` of every order (as buyer) and, if present, every event."""
    parts = [f"SELECT buyer_id AS user_id, ts FROM read_parquet('{orders_path(raw_dir)}')"]
    events = raw_table(raw_dir, "events")
    if events is not None:
        parts.append(f"SELECT user_id, ts FROM read_parquet('{events}')")
    return " UNION ALL ".join(parts)


def build_labels(raw_dir: Path, cutoff: date, config: LabelConfig) -> pd.DataFrame:
    """Population and both labels at ``cutoff``: columns ``user_id, churn, propensity`` (int8).

    Rows are sorted by ``user_id`` so that the same data always give the same frame.
    """
    start = midnight(cutoff - timedelta(days=config.population_days))
    end = midnight(cutoff)
    churn_end = midnight(cutoff + timedelta(days=config.churn_horizon_days))
    prop_end = midnight(cutoff + timedelta(days=config.propensity_horizon_days))
    window_end = max(churn_end, prop_end)
    sql = f"""
        WITH population AS (
            SELECT DISTINCT user_id FROM ({activity_sql(raw_dir)})
            WHERE ts >= $start AND ts < $end
        ), future AS (
            SELECT buyer_id AS user_id, min(ts) AS first_ts
            FROM read_parquet('{orders_path(raw_dir)}')
            WHERE status = 'completed' AND ts >= $end AND ts < $window_end
            GROUP BY buyer_id
        )
        SELECT p.user_id,
               CAST(f.first_ts IS NULL OR f.first_ts >= $churn_end AS TINYINT) AS churn,
               CAST(f.first_ts IS NOT NULL AND f.first_ts < $prop_end AS TINYINT) AS propensity
        FROM population p LEFT JOIN future f USING (user_id)
        ORDER BY p.user_id
    """
    params = {"start": start, "end": end, "churn_end": churn_end, "prop_end": prop_end,
              "window_end": window_end}
    with duckdb.connect() as con:
        frame = con.execute(sql, params).df()
    frame["user_id"] = frame["user_id"].astype(str)
    return frame.astype({"churn": "int8", "propensity": "int8"})



def build_seller_labels(raw_dir: Path, cutoff: date, config: LabelConfig) -> pd.DataFrame:
    """Seller population and label at ``cutoff``: columns ``user_id, seller_churn`` (int8).

    The population are the sellers with a listing or a completed sale (as seller) in the
    ``population_days`` before the cutoff; ``seller_churn`` is 1 when they list nothing in
    the ``seller_churn_horizon_days`` after it. Sorted by ``user_id``.
    """
    listings = raw_table(raw_dir, "listings")
    if listings is None:
        raise DataError(f"{Path(raw_dir) / 'listings.parquet'} is missing: seller churn is "
                        "learned from listings (`nextbest data import listings`)",
                        field="raw_dir")
    orders = orders_path(raw_dir)
    sold = ("SELECT seller_id, ts FROM read_parquet('" + str(orders) + "') WHERE status = "
            "'completed' AND seller_id IS NOT NULL" if _has_column(orders, "seller_id")
            and _has_column(orders, "status") else "SELECT NULL AS seller_id, NULL AS ts "
            "WHERE false")
    sql = f"""
        WITH activity AS (
            SELECT seller_id, listed_ts AS ts FROM read_parquet('{listings}')
            UNION ALL {sold}
        ), population AS (
            SELECT DISTINCT seller_id AS user_id FROM activity
            WHERE ts >= $start AND ts < $end AND seller_id IS NOT NULL
        ), future AS (
            SELECT DISTINCT seller_id AS user_id FROM read_parquet('{listings}')
            WHERE listed_ts >= $end AND listed_ts < $horizon_end
        )
        SELECT p.user_id, CAST(f.user_id IS NULL AS TINYINT) AS seller_churn
        FROM population p LEFT JOIN future f USING (user_id)
        ORDER BY p.user_id
    """
    params = {"start": midnight(cutoff - timedelta(days=config.population_days)),
              "end": midnight(cutoff),
              "horizon_end": midnight(cutoff + timedelta(days=config.seller_churn_horizon_days))}
    with duckdb.connect() as con:
        frame = con.execute(sql, params).df()
    frame["user_id"] = frame["user_id"].astype(str)
    return frame.astype({SELLER_CHURN: "int8"})


def _has_column(path: Path, name: str) -> bool:
    """Whether the Parquet file at ``path`` has a column ``name``."""
    import pyarrow.parquet as pq

    return name in pq.read_schema(path).names


def labels_at(raw_dir: Path, cutoff: date, model_name: ModelName, config: LabelConfig
              ) -> pd.DataFrame:
    """``user_id, label`` of ``model_name``'s population at ``cutoff``."""
    if model_name == SELLER_CHURN:
        frame = build_seller_labels(raw_dir, cutoff, config)
    else:
        horizon_days(model_name, config)  # refuses an unknown model
        frame = build_labels(raw_dir, cutoff, config)
    return frame[["user_id", model_name]].rename(columns={model_name: "label"})


def build_ltv_labels(raw_dir: Path, cutoff: date, horizon: int, config: LabelConfig
                     ) -> pd.DataFrame:
    """Lifetime-value labels at ``cutoff``: ``user_id, spend, purchases`` over
    ``[cutoff, cutoff + horizon)`` for the population of :func:`build_labels`.

    ``spend`` sums completed orders; ``purchases`` counts the days with a completed order
    (the unit BG/NBD forecasts). Sorted by ``user_id``.
    """
    sql = f"""
        WITH population AS (
            SELECT DISTINCT user_id FROM ({activity_sql(raw_dir)})
            WHERE ts >= $start AND ts < $end
        ), future AS (
            SELECT buyer_id AS user_id, sum(amount) AS spend,
                   count(DISTINCT CAST(ts AS DATE)) AS purchases
            FROM read_parquet('{orders_path(raw_dir)}')
            WHERE status = 'completed' AND ts >= $end AND ts < $window_end
            GROUP BY buyer_id
        )
        SELECT p.user_id, coalesce(f.spend, 0) AS spend, coalesce(f.purchases, 0) AS purchases
        FROM population p LEFT JOIN future f USING (user_id)
        ORDER BY p.user_id
    """
    params = {"start": midnight(cutoff - timedelta(days=config.population_days)),
              "end": midnight(cutoff), "window_end": midnight(cutoff + timedelta(days=horizon))}
    with duckdb.connect() as con:
        frame = con.execute(sql, params).df()
    frame["user_id"] = frame["user_id"].astype(str)
    return frame.astype({"spend": "float64", "purchases": "float64"})
