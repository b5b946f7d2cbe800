"""Sold comparables: what items of each category sold for, the evidence of a price suggestion.

``features build`` writes ``comparables.json`` beside each partition's features: per
category, the completed orders of the ``COMPARABLE_DAYS`` before ``as_of`` (their count and
the 25th, 50th and 75th percentile of the amount). A category with fewer than
``MIN_SALES`` sales gets no entry, so no suggestion ever rests on (or reveals) one or two
buyers' prices. The seller decision point's ``price_suggestion`` arm answers with the
median of the listing's category and this evidence (decisions/engine.py).
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from features.definitions import COMPLETED

COMPARABLES_FILE = "comparables.json"
COMPARABLE_DAYS = 180
MIN_SALES = 5


class Comparable(BaseModel):
    """The sold prices of one category."""

    category: str
    sales: int
    p25: float
    median: float
    p75: float
    days: int = COMPARABLE_DAYS


def comparable_prices(orders: pd.DataFrame, as_of: date,
                      days: int = COMPARABLE_DAYS) -> dict[str, Comparable]:
    """Per category, the completed orders' amounts in the ``days`` before ``as_of``."""
    needed = {"ts", "amount", "category"}
    if orders.empty or not needed <= set(orders.columns):
        return {}
    end = pd.Timestamp(datetime.combine(as_of, time.min))
    ts = pd.to_datetime(orders["ts"], utc=True).dt.tz_localize(None)
    done = orders["status"] == COMPLETED if "status" in orders.columns else True
    recent = orders[done & (ts < end) & (ts >= end - timedelta(days=days))
                    & orders["category"].notna()]
    out: dict[str, Comparable] = {}
    for category, amounts in recent.groupby("category")["amount"]:
        amounts = amounts.dropna()
        if len(amounts) < MIN_SALES:
            continue
        q25, q50, q75 = amounts.quantile([0.25, 0.5, 0.75]).tolist()
        out[str(category)] = Comparable(category=str(category), sales=len(amounts),
                                        p25=round(q25, 2), median=round(q50, 2),
                                        p75=round(q75, 2), days=days)
    return out


def write_comparables(raw_dir: Path, as_of: date, directory: Path) -> int:
    """Write ``directory/comparables.json`` from ``raw_dir/orders.parquet``; categories
    written."""
    path = raw_dir / "orders.parquet"
    if not path.exists():
        return 0
    columns = ["ts", "amount", "category", "status"]
    try:
        orders = pd.read_parquet(path, columns=columns)
    except (KeyError, ValueError):  # a table without category or status
        orders = pd.read_parquet(path)
    found = comparable_prices(orders, as_of)
    tmp = directory / f".{COMPARABLES_FILE}.tmp"
    tmp.write_text(json.dumps({name: c.model_dump() for name, c in found.items()}, indent=1))
    os.replace(tmp, directory / COMPARABLES_FILE)
    return len(found)


def read_comparables(directory: Path) -> dict[str, Comparable]:
    """The comparables written in a partition ``directory`` ({} when there are none)."""
    path = directory / COMPARABLES_FILE
    if not path.is_file():
        return {}
    return {name: Comparable.model_validate(value)
            for name, value in json.loads(path.read_text()).items()}
