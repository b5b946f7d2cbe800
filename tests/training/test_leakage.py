"""No leakage: rows at or after the cutoff T change no feature at T, yet they do change labels.

The second half matters: it shows the perturbation touches data the labels depend on, so
the test would fail if a feature read any of those rows.
"""

from __future__ import annotations

import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from trainingkit import settings_at

from features.build import build_features
from nextbest.config import LabelConfig
from training.labels import build_labels

T = date(2025, 6, 1)
T_TS = pd.Timestamp(datetime(2025, 6, 1))


def _append(frame: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    extra = pd.DataFrame(rows).astype({c: frame[c].dtype for c in rows[0]})
    return pd.concat([frame, extra], ignore_index=True)


def _perturb_orders(orders: pd.DataFrame, buyer: str, seller: str) -> pd.DataFrame:
    late = orders["ts"] >= T_TS
    orders.loc[late, "amount"] *= 3
    orders.loc[late, "commission"] *= 3
    orders.loc[late, "category"] = "toys"
    orders.loc[late, "status"] = orders.loc[late, "status"].map(
        {"completed": "cancelled", "returned": "completed", "cancelled": "completed"})
    row = {"order_id": "o-late", "buyer_id": buyer, "ts": T_TS, "amount": 999.0,
           "seller_id": seller, "item_id": "i-late", "category": "luxury", "commission": 99.0,
           "status": "completed", "coupon_used": True}
    return _append(orders, [row, {**row, "order_id": "o-later", "ts": T_TS + timedelta(days=1)}])


def _perturb_events(events: pd.DataFrame, user: str) -> pd.DataFrame:
    late = events["ts"] >= T_TS
    events.loc[late, "type"] = "add_to_cart"
    return _append(events, [{"user_id": user, "ts": T_TS, "type": kind, "item_id": "i-late",
                             "category": "luxury", "price": 500.0}
                            for kind in ("view", "favorite", "add_to_cart", "search", "login")])


def _perturb_listings(listings: pd.DataFrame, seller: str) -> pd.DataFrame:
    listings.loc[listings["listed_ts"] >= T_TS, "price"] *= 2
    sold_late = listings["sold_ts"] >= T_TS
    listings.loc[sold_late, "sold_ts"] = T_TS
    return _append(listings, [{"item_id": "i-late", "seller_id": seller, "listed_ts": T_TS,
                               "category": "luxury", "price": 500.0, "stock": 1,
                               "sold_ts": T_TS + timedelta(hours=1)}])


def _perturb_users(users: pd.DataFrame) -> pd.DataFrame:
    users.loc[users["signup_ts"] >= T_TS, "region"] = "elsewhere"
    return _append(users, [{"user_id": "u-late", "signup_ts": T_TS, "region": "elsewhere",
                            "channel": "ads", "timezone": "UTC"}])


def _perturbed_copy(raw: Path, out: Path) -> Path:
    """A copy of ``raw`` where every row at or after T is changed and new rows are appended."""
    shutil.copytree(raw, out)
    orders = pd.read_parquet(raw / "orders.parquet")
    active = orders.loc[orders["ts"] < T_TS, "buyer_id"].iloc[-1]
    seller = orders.loc[orders["ts"] < T_TS, "seller_id"].iloc[-1]
    _perturb_orders(orders, active, seller).to_parquet(out / "orders.parquet", index=False)
    for name, change in (("events", lambda f: _perturb_events(f, active)),
                         ("listings", lambda f: _perturb_listings(f, seller)),
                         ("users", _perturb_users)):
        change(pd.read_parquet(raw / f"{name}.parquet")).to_parquet(out / f"{name}.parquet",
                                                                    index=False)
    return out


@pytest.fixture(scope="module")
def perturbed(synth_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _perturbed_copy(synth_raw, tmp_path_factory.mktemp("leak") / "raw")


def test_rows_at_or_after_the_cutoff_change_no_feature(synth_raw: Path, perturbed: Path,
                                                        tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    before = build_features(settings, T, raw_dir=synth_raw, out_dir=tmp_path / "a",
                            refresh_store=False, progress=False)
    after = build_features(settings, T, raw_dir=perturbed, out_dir=tmp_path / "b",
                           refresh_store=False, progress=False)
    key = ["user_id"]
    pd.testing.assert_frame_equal(before.sort_values(key).reset_index(drop=True),
                                  after.sort_values(key).reset_index(drop=True))


def test_the_same_rows_do_change_the_labels(synth_raw: Path, perturbed: Path) -> None:
    before = build_labels(synth_raw, T, LabelConfig()).set_index("user_id")
    after = build_labels(perturbed, T, LabelConfig()).set_index("user_id")
    assert before.index.equals(after.index)
    assert (before["churn"] != after["churn"]).sum() > 10
    assert (before["propensity"] != after["propensity"]).sum() > 10
