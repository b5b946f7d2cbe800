"""Point-in-time feature build (DuckDB): hand-checked values, no leakage, absent tables, CLI."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import (
    available_as_of,
    build_features,
    categorical_columns,
    default_as_of,
    feature_columns,
    load_features,
)
from features.store import Preferences, open_store
from nextbest.cli import main as cli_main
from nextbest.config import Settings, path_overrides
from nextbest.errors import DataError, NotFound, ValidationFailed

AS_OF = date(2025, 3, 1)


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def _frame(rows: list[dict], dtypes: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(dtypes))
    return frame.astype(dtypes)


ORDER_TYPES = {"order_id": "str", "buyer_id": "str", "ts": "datetime64[us]", "amount": "float64",
               "seller_id": "str", "item_id": "str", "category": "str", "commission": "float64",
               "status": "str", "coupon_used": "bool"}
EVENT_TYPES = {"user_id": "str", "ts": "datetime64[us]", "type": "str", "item_id": "str",
               "category": "str", "price": "float64"}
LISTING_TYPES = {"item_id": "str", "seller_id": "str", "listed_ts": "datetime64[us]",
                 "category": "str", "price": "float64", "stock": "int64",
                 "sold_ts": "datetime64[us]"}
USER_TYPES = {"user_id": "str", "signup_ts": "datetime64[us]", "region": "str", "channel": "str",
              "timezone": "str"}


def _order(oid: str, buyer: str, ts: str, amount: float, *, seller: str = "s1",
           category: str = "bags", status: str = "completed", coupon: bool = False) -> dict:
    return {"order_id": oid, "buyer_id": buyer, "ts": _ts(ts), "amount": amount,
            "seller_id": seller, "item_id": f"i{oid}", "category": category,
            "commission": round(amount * 0.2, 2), "status": status, "coupon_used": coupon}


def _event(user: str, ts: str, kind: str, category: str | None = None) -> dict:
    return {"user_id": user, "ts": _ts(ts), "type": kind, "item_id": None, "category": category,
            "price": None}


def write_raw(raw: Path) -> None:
    """A tiny marketplace whose features at 2025-03-01 are worked out by hand below."""
    raw.mkdir(parents=True, exist_ok=True)
    users = [
        {"user_id": "u1", "signup_ts": _ts("2024-03-01"), "region": "west", "channel": "ads"},
        {"user_id": "u2", "signup_ts": _ts("2025-01-30"), "region": "midwest",
         "channel": "organic"},
        {"user_id": "s1", "signup_ts": _ts("2023-01-01"), "region": "west", "channel": "invite"},
        {"user_id": "late", "signup_ts": _ts("2025-03-01"), "region": "west", "channel": "ads"},
    ]
    orders = [
        _order("o1", "u1", "2025-02-27 12:00", 100.0, coupon=True),          # 1.5 days before
        _order("o2", "u1", "2025-01-15", 50.0, category="shoes"),             # 45 days before
        _order("o3", "u1", "2024-12-20", 30.0, category="shoes"),             # 71 days before
        _order("o4", "u1", "2025-02-10", 80.0, status="returned"),
        _order("o5", "u1", "2025-02-11", 10.0, status="cancelled"),
        _order("o6", "u1", "2025-03-01 00:00", 999.0),                       # on as_of: excluded
        _order("o7", "u2", "2025-02-20", 20.0, category="home", seller="u1"),
    ]
    events = [
        _event("u1", "2025-02-28", "view", "bags"),
        _event("u1", "2025-02-25", "add_to_cart", "bags"),
        _event("u1", "2025-02-24", "add_to_cart", "bags"),
        _event("u1", "2025-02-23", "add_to_cart", "bags"),
        _event("u1", "2025-01-01", "search"),
        _event("u2", "2025-02-28 18:00", "view", "art"),
        _event("u2", "2025-02-27", "view", "art"),
        _event("u2", "2025-02-26", "view", "home"),
        _event("u2", "2025-03-02", "view", "home"),                          # after as_of
        _event("s1", "2025-02-01", "view", "shoes"),
        _event("s1", "2025-02-02", "view", "bags"),                          # tie: "bags"
    ]
    listings = [
        {"item_id": "a", "seller_id": "s1", "listed_ts": _ts("2025-01-01"), "category": "bags",
         "price": 10.0, "stock": 1, "sold_ts": _ts("2025-01-11")},          # sold in 10 days
        {"item_id": "b", "seller_id": "s1", "listed_ts": _ts("2025-01-01"), "category": "bags",
         "price": 10.0, "stock": 1, "sold_ts": _ts("2025-01-21")},          # sold in 20 days
        {"item_id": "c", "seller_id": "s1", "listed_ts": _ts("2025-02-01"), "category": "bags",
         "price": 10.0, "stock": 1, "sold_ts": _ts("2025-03-05")},          # sold after as_of
        {"item_id": "d", "seller_id": "s1", "listed_ts": _ts("2025-03-02"), "category": "bags",
         "price": 10.0, "stock": 1, "sold_ts": pd.NaT},                     # listed after as_of
    ]
    _frame(users, USER_TYPES).to_parquet(raw / "users.parquet")
    _frame(orders, ORDER_TYPES).to_parquet(raw / "orders.parquet")
    _frame(events, EVENT_TYPES).to_parquet(raw / "events.parquet")
    _frame(listings, LISTING_TYPES).to_parquet(raw / "listings.parquet")


@pytest.fixture
def raw(settings: Settings) -> Path:
    write_raw(settings.paths.raw_dir)
    return settings.paths.raw_dir


def _row(frame: pd.DataFrame, user: str) -> pd.Series:
    return frame.set_index("user_id").loc[user]


def test_credit_flags_reach_the_features_and_the_store_but_not_the_models(
        settings: Settings, raw: Path) -> None:
    users = pd.read_parquet(raw / "users.parquet")
    users["is_student"] = pd.array([True, None, False, None], dtype="boolean")
    users.to_parquet(raw / "users.parquet")  # no self_excluded_from_credit column at all
    frame = build_features(settings, AS_OF, progress=False)
    flags = frame.set_index("user_id")["is_student"]
    assert (flags["s1"], flags["u1"], pd.isna(flags["u2"])) == (False, True, True)
    assert frame["self_excluded_from_credit"].isna().all()
    assert not {"is_student", "self_excluded_from_credit"} & set(feature_columns())
    with open_store(settings) as store:
        assert store.get("u1")["is_student"] is True and store.get("s1")["is_student"] is False
        assert store.get("u2")["is_student"] is None


def test_features_match_hand_computed_values(settings: Settings, raw: Path) -> None:
    frame = build_features(settings, AS_OF, refresh_store=False, progress=False)
    assert list(frame["user_id"]) == ["s1", "u1", "u2"]  # "late" signed up on as_of
    u1 = _row(frame, "u1")
    assert u1["tenure_days"] == pytest.approx(365.0)
    assert u1["recency_days"] == pytest.approx(1.5)
    assert (u1["frequency_total"], u1["frequency_7d"], u1["frequency_30d"],
            u1["frequency_90d"]) == (3, 1, 1, 3)
    assert u1["monetary_total"] == pytest.approx(180.0)
    assert u1["monetary_30d"] == pytest.approx(100.0)
    assert u1["aov"] == pytest.approx(60.0)
    assert u1["spend_trend"] == pytest.approx(100.0 - 50.0)  # o2 falls in [T-60d, T-30d)
    assert u1["return_rate"] == pytest.approx(1 / 4)        # cancelled orders do not count
    assert u1["coupon_share"] == pytest.approx(1 / 3)
    assert u1["top_category"] == "shoes"                    # 2 shoes vs 1 bag bought
    p = np.array([1 / 3, 2 / 3])
    assert u1["category_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()))
    assert (u1["views_30d"], u1["carts_7d"], u1["carts_30d"], u1["searches_90d"]) == (1, 3, 3, 1)
    assert u1["cart_abandonments_30d"] == 2
    assert u1["browse_to_buy_30d"] == pytest.approx(1 / 2)
    assert u1["days_since_login"] == pytest.approx(1.0)
    assert u1["commission_paid"] == pytest.approx(4.0)      # u1 sold o7 to u2
    assert bool(u1["is_seller"]) and u1["items_listed"] == 0

    u2 = _row(frame, "u2")
    assert u2["top_category"] == "home"                     # bought beats viewed
    assert u2["category_entropy"] == 0.0
    assert u2["views_7d"] == 3                              # the view on 03-02 is later
    assert u2["days_since_login"] == pytest.approx(0.25)

    s1 = _row(frame, "s1")
    assert (s1["items_listed"], s1["items_sold"]) == (3, 2)  # "c" sold after as_of: unsold
    assert s1["sell_through_rate"] == pytest.approx(2 / 3)
    assert s1["days_to_sell"] == pytest.approx(15.0)
    assert np.isnan(s1["recency_days"]) and np.isnan(s1["aov"])
    assert s1["frequency_total"] == 0 and s1["return_rate"] == 0.0
    assert s1["top_category"] == "bags"  # most viewed; ties go to the first alphabetically
    assert (frame["as_of"] == pd.Timestamp(AS_OF)).all()


def test_appending_later_rows_never_changes_the_output(settings: Settings, raw: Path,
                                                       tmp_path: Path) -> None:
    before = build_features(settings, AS_OF, refresh_store=False, progress=False)
    later = {
        "orders": [_order("o9", "u2", "2025-03-01 00:00:01", 500.0, seller="s1"),
                   _order("o10", "s1", "2025-04-01", 70.0, status="returned")],
        "events": [_event("s1", "2025-03-03", "view", "bags"),
                   _event("u1", "2025-03-01", "add_to_cart", "art")],
        "listings": [{"item_id": "e", "seller_id": "u2", "listed_ts": _ts("2025-03-10"),
                      "category": "art", "price": 5.0, "stock": 1, "sold_ts": pd.NaT}],
        "users": [{"user_id": "u9", "signup_ts": _ts("2025-03-02"), "region": "west",
                   "channel": "ads"}],
    }
    types = {"orders": ORDER_TYPES, "events": EVENT_TYPES, "listings": LISTING_TYPES,
             "users": USER_TYPES}
    for table, rows in later.items():
        path = raw / f"{table}.parquet"
        grown = pd.concat([pd.read_parquet(path), _frame(rows, types[table])], ignore_index=True)
        grown.to_parquet(path)
    after = build_features(settings, AS_OF, out_dir=tmp_path / "again", refresh_store=False,
                           progress=False)
    pd.testing.assert_frame_equal(before, after)


def test_orders_only_import_uses_buyers_as_population(settings: Settings, tmp_path: Path) -> None:
    raw = tmp_path / "orders_only"
    raw.mkdir()
    pd.DataFrame({
        "order_id": ["a", "b", "c"], "buyer_id": ["x", "x", "y"],
        "ts": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-03-05"]).astype("datetime64[us]"),
        "amount": [10.0, 20.0, 5.0],
    }).to_parquet(raw / "orders.parquet")
    frame = build_features(settings, AS_OF, raw_dir=raw, refresh_store=False, progress=False)
    assert list(frame["user_id"]) == ["x"]  # y only bought after as_of
    x = frame.iloc[0]
    assert x["frequency_total"] == 2 and x["monetary_total"] == pytest.approx(30.0)
    assert np.isnan(x["tenure_days"]) and np.isnan(x["days_since_login"])
    assert x["views_30d"] == 0 and x["items_listed"] == 0 and not x["is_seller"]
    assert pd.isna(x["region"]) and pd.isna(x["top_category"])
    assert x["tier"] in {"silver", "dormant", "gold", "platinum"} and pd.isna(x["seller_tier"])


def test_written_partition_can_be_listed_and_loaded(settings: Settings, raw: Path) -> None:
    built = build_features(settings, AS_OF, refresh_store=False, progress=False)
    assert available_as_of(settings) == [AS_OF]
    loaded = load_features(settings, AS_OF)
    pd.testing.assert_frame_equal(built, loaded, check_dtype=False)
    assert set(feature_columns()) | {"user_id", "as_of"} <= set(loaded.columns)
    assert set(categorical_columns()) <= set(feature_columns())
    assert (settings.paths.features_dir / "as_of=2025-03-01" / "clusters.json").is_file()
    with pytest.raises(NotFound):
        load_features(settings, date(2020, 1, 1))


def test_default_as_of_is_the_day_after_the_latest_row(settings: Settings, raw: Path) -> None:
    assert default_as_of(settings) == date(2025, 3, 3)  # the latest event is on 2025-03-02


def test_build_refreshes_the_online_store(settings: Settings, raw: Path) -> None:
    frame = build_features(settings, AS_OF, progress=False)
    with open_store(settings) as store:
        record = store.get("u1")
    assert record is not None
    assert record["tier"] == _row(frame, "u1")["tier"]
    assert record["as_of"] == AS_OF.isoformat()


def test_missing_orders_file_is_a_data_error(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="orders"):
        build_features(settings, AS_OF, raw_dir=tmp_path / "empty", refresh_store=False,
                       progress=False)


def test_cli_builds_and_reports_one_line(settings: Settings, raw: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cli_features"
    code = cli_main(["features", "build", "--as-of", "2025-03-01", "--data", str(raw),
                     "--out", str(out), "--no-store", "--no-progress"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("features as_of 2025-03-01: 3 users") and "as_of=2025-03-01" in line
    assert (out / "as_of=2025-03-01" / "features.parquet").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--as-of", "2025-02-30"], "--as-of"),
    (["--data", "/nonexistent/raw"], "orders"),
])
def test_cli_errors_exit_non_zero_with_one_line(argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli_main(["features", "build", "--no-store", "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err


def test_population_excludes_signups_on_or_after_as_of(settings: Settings, raw: Path) -> None:
    early = build_features(settings, datetime(2024, 6, 1).date(), refresh_store=False,
                           progress=False)
    assert list(early["user_id"]) == ["s1", "u1"]  # u2 signed up in 2025


def _write_preferences(raw: Path) -> None:
    pd.DataFrame({
        "user_id": ["u1", "u2", "s1"],
        "personalization": [False, False, True],
        "marketing_email": [False, True, False],
        "marketing_sms": [False, False, False],
        "marketing_push": [True, False, False],
        "updated_ts": pd.to_datetime(["2025-01-10", "2025-01-10", "2025-01-10"]),
    }).to_parquet(raw / "preferences.parquet")


def test_build_loads_preferences_the_newer_of_stored_and_imported(settings: Settings,
                                                                  raw: Path) -> None:
    _write_preferences(raw)
    with open_store(settings) as store:
        # u1 chose before the file's stamp: the file wins. u2 chose after it: u2's choice wins.
        store.set_preferences("u1", Preferences(updated_ts=datetime(2024, 12, 1)))
        store.set_preferences("u2", Preferences(personalization=True,
                                                updated_ts=datetime(2025, 2, 1)))
    build_features(settings, AS_OF, progress=False)
    with open_store(settings) as store:
        u1, u2, s1 = (store.get_preferences(u) for u in ("u1", "u2", "s1"))
        assert (u1.personalization, u1.marketing_email, u1.marketing_push) == (False, False, True)
        assert u1.updated_ts == datetime(2025, 1, 10)
        assert u2.personalization is True and u2.updated_ts == datetime(2025, 2, 1)
        assert (s1.personalization, s1.marketing_email) == (True, False)
        # A choice made through the API now survives the next rebuild.
        store.set_preferences("s1", Preferences(marketing_email=True))
    build_features(settings, AS_OF, progress=False)
    with open_store(settings) as store:
        assert store.get_preferences("s1").marketing_email is True
        assert store.get_preferences("u1").personalization is False


def test_an_as_of_far_past_the_data_is_refused_without_force(settings: Settings,
                                                              raw: Path) -> None:
    # The data ends on 2025-03-02 (default as_of 2025-03-03); 30 days past that is allowed.
    build_features(settings, date(2025, 4, 2), refresh_store=False, progress=False)
    with pytest.raises(ValidationFailed) as err:
        build_features(settings, date(2030, 1, 1), progress=False)
    assert err.value.message.startswith(
        "--as-of 2030-01-01 is 1,765 days after the data ends (last order or event on "
        "2025-03-02, default as_of 2025-03-03), more than features.as_of_max_days_past_data "
        "(30)")
    assert "--force" in err.value.message and err.value.field == "as_of"
    with pytest.raises(ValidationFailed, match="31 days after"):
        build_features(settings, date(2025, 4, 3), refresh_store=False, progress=False)
    assert available_as_of(settings) == [date(2025, 4, 2)]
    with open_store(settings) as store:
        assert store.meta()["users"] == 0


def test_cli_says_when_the_store_kept_newer_records_and_puts_them_back(
        settings: Settings, raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in path_overrides(tmp_path).items():
        monkeypatch.setenv(key, value)
    _write_preferences(raw)
    build = ["features", "build", "--no-progress"]
    assert cli_main([*build, "--as-of", "2030-01-01"]) != 0
    assert "--force" in capsys.readouterr().err
    assert cli_main([*build, "--as-of", "2030-01-01", "--force"]) == 0
    assert "(store refreshed: 4 records, preferences of 3 users)" in capsys.readouterr().out
    # The correct build: the store keeps 2030 and says so instead of "refreshed".
    assert cli_main([*build, "--as-of", "2025-03-01"]) == 0
    out = capsys.readouterr().out
    assert "store refreshed" not in out
    assert ("(store kept 3 newer records (as_of 2030-01-01) and wrote 0, preferences of 3 "
            "users; `nextbest store refresh --as-of 2025-03-01` puts this as_of back)") in out
    assert cli_main(["store", "refresh", "--as-of", "2025-03-01"]) == 0
    assert ("store refreshed to as_of 2025-03-01: 3 records written, 1 later records of "
            "users not in it removed") in capsys.readouterr().out
    with open_store(settings) as store:
        assert store.meta() == {"backend": "sqlite", "as_of": "2025-03-01", "users": 3}
        assert store.get("late") is None  # signed up on 2025-03-01: not in that as_of
    assert cli_main(build) == 0  # the default as_of, 2025-03-03, moves it forward again
    assert "(store refreshed: 4 records" in capsys.readouterr().out

    assert cli_main(["store", "reset"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "removes the records of 4 users" in err[0] and "--yes" in err[0]
    assert cli_main(["store", "reset", "--yes"]) == 0
    assert "store reset: removed 4 records" in capsys.readouterr().out
    with open_store(settings) as store:
        assert store.meta()["users"] == 0 and store.get("u1") is None
        assert store.get_preferences("u1").personalization is False
    assert cli_main(["store", "refresh", "--as-of", "2024-01-01"]) == 3
    assert "no features for as_of 2024-01-01" in capsys.readouterr().err
