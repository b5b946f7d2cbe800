"""The synthetic marketplace: contract shapes, reproducibility and marketplace behaviour."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import EVENT_TYPES
from features.synth import TABLES, SynthSummary, synthesize
from nextbest.cli import main
from nextbest.errors import ValidationFailed

START = date(2024, 1, 1)
DAYS = 730


def _read(summary: SynthSummary) -> dict[str, pd.DataFrame]:
    frames = {t: pd.read_parquet(summary.raw_dir / f"{t}.parquet") for t in TABLES}
    frames["traits"] = pd.read_parquet(summary.latent_dir / "user_traits.parquet")
    return frames


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthSummary, dict[str, pd.DataFrame]]:
    root = tmp_path_factory.mktemp("synth")
    summary = synthesize(3000, DAYS, 7, root / "raw", root / "latent", START)
    return summary, _read(summary)


def test_tables_follow_the_contract(synth: tuple[SynthSummary, dict[str, pd.DataFrame]]) -> None:
    summary, f = synth
    assert summary.rows == {t: len(f[t]) for t in TABLES}
    assert len(f["users"]) == 3000 and len(f["preferences"]) == 3000
    assert f["users"]["user_id"].iloc[0] == "u000000"
    for table, col in [("users", "signup_ts"), ("orders", "ts"), ("listings", "listed_ts"),
                       ("events", "ts"), ("preferences", "updated_ts")]:
        ts = f[table][col]
        assert str(ts.dtype) == "datetime64[us]", (table, col)
        assert ts.min() >= pd.Timestamp(START), (table, col)
        assert ts.max() < pd.Timestamp(START) + pd.Timedelta(days=DAYS), (table, col)
    orders = f["orders"]
    assert orders["amount"].dtype == np.float64 and (orders["amount"] > 0).all()
    assert orders["coupon_used"].dtype == bool
    assert set(orders["status"]) == {"completed", "returned", "cancelled"}
    assert orders["order_id"].is_unique
    assert set(f["events"]["type"]) == set(EVENT_TYPES)
    traits = f["traits"]
    for col in ["price_sensitivity", "brand_focus", "installment_affinity"]:
        assert traits[col].between(0, 1).all(), col
    assert (traits["spend_level"] > 0).all() and 0.8 < traits["spend_level"].mean() < 1.2
    assert traits["is_seller"].dtype == bool


def test_rows_are_consistent_across_tables(
        synth: tuple[SynthSummary, dict[str, pd.DataFrame]]) -> None:
    _, f = synth
    users = f["users"].set_index("user_id")["signup_ts"]
    orders = f["orders"]
    assert orders["buyer_id"].isin(users.index).all()
    assert (orders["ts"] >= users.loc[orders["buyer_id"]].to_numpy()).all()
    assert (orders["buyer_id"] != orders["seller_id"]).mean() > 0.99
    listings = f["listings"].set_index("item_id")
    assert orders["item_id"].isin(listings.index).all()
    sold = listings.loc[orders["item_id"]]
    assert (sold["listed_ts"].to_numpy() <= orders["ts"].to_numpy()).all()
    assert (sold["seller_id"].to_numpy() == orders["seller_id"].to_numpy()).all()
    sellers = f["traits"].loc[f["traits"]["is_seller"], "user_id"]
    assert set(f["listings"]["seller_id"]) == set(sellers)


def test_marketplace_behaves_like_one(synth: tuple[SynthSummary, dict[str, pd.DataFrame]]) -> None:
    _, f = synth
    orders, events, traits = f["orders"], f["events"], f["traits"]
    completed = orders[orders["status"] == "completed"]
    by_seller = completed.groupby("seller_id")["amount"].sum().sort_values(ascending=False)
    top = by_seller.iloc[: int(0.2 * traits["is_seller"].sum())].sum() / by_seller.sum()
    assert 0.6 < top < 0.95
    assert 0.10 < traits["is_seller"].mean() < 0.20
    assert 0.04 < (orders["status"] == "returned").mean() < 0.12
    buyers = orders["buyer_id"].nunique() / len(f["users"])
    assert 0.2 < buyers < 0.8  # many users never buy
    carts = (events["type"] == "add_to_cart").sum()
    assert carts - len(orders) > 0.2 * len(orders)  # each order has one cart; others are left
    sessions = (events["type"] == "login").sum()
    assert sessions > 2 * len(orders)  # most browsing ends without a purchase
    # Price-sensitive users use more coupons.
    sens = traits.set_index("user_id")["price_sensitivity"].loc[orders["buyer_id"]].to_numpy()
    assert orders["coupon_used"][sens > 0.6].mean() > 2 * orders["coupon_used"][sens < 0.3].mean()
    # Weekends and the end of the year are busier.
    weekday = orders["ts"].dt.day_of_week
    assert (weekday >= 5).mean() / 2 > (weekday < 5).mean() / 5
    assert 0.85 < f["preferences"]["personalization"].mean() < 0.97
    assert completed["amount"].groupby(completed["category"]).median().idxmax() == "watches"


def test_engaged_users_churn_later(synth: tuple[SynthSummary, dict[str, pd.DataFrame]]) -> None:
    _, f = synth
    traits = f["traits"].merge(f["users"], on="user_id")
    life = (traits["churn_ts"].fillna(pd.Timestamp(datetime(2030, 1, 1)))
            - traits["signup_ts"]).dt.days
    engaged = traits["engagement"] > traits["engagement"].median()
    assert life[engaged].median() > life[~engaged].median()


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    a = _read(synthesize(300, 60, 11, tmp_path / "a/raw", tmp_path / "a/latent"))
    b = _read(synthesize(300, 60, 11, tmp_path / "b/raw", tmp_path / "b/latent"))
    c = _read(synthesize(300, 60, 12, tmp_path / "c/raw", tmp_path / "c/latent"))
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["orders"].equals(c["orders"])
    assert (tmp_path / "a/raw/orders.parquet").read_bytes() == \
        (tmp_path / "b/raw/orders.parquet").read_bytes()


def test_cli_writes_tables_and_refuses_bad_sizes(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out, latent = tmp_path / "raw", tmp_path / "latent"
    code = main(["data", "synth", "--users", "50", "--days", "30", "--seed", "3",
                 "--start", "2025-03-01", "--out", str(out), "--latent-out", str(latent)])
    assert code == 0
    assert "users 50" in capsys.readouterr().out
    assert all((out / f"{t}.parquet").exists() for t in TABLES)
    assert pd.read_parquet(out / "users.parquet")["signup_ts"].min() >= pd.Timestamp(2025, 3, 1)
    assert (latent / "user_traits.parquet").exists()
    assert main(["data", "synth", "--users", "0", "--out", str(out)]) == 2
    assert "users must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValidationFailed):
        synthesize(10, 0, 1, out, latent)
