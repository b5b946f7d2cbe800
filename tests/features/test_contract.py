"""The data contract: coercion of good values and one reject line per bad row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import SPECS, parse_timestamps, validate
from features.synth import TABLES, synthesize
from nextbest.errors import DataError


def _orders(**columns: list) -> pd.DataFrame:
    """A small orders frame; every column not given is filled with a valid value."""
    n = len(next(iter(columns.values())))
    base = {"order_id": [f"o{i}" for i in range(n)], "buyer_id": ["u1"] * n,
            "ts": ["2024-01-01"] * n, "amount": ["10"] * n}
    base.update(columns)
    return pd.DataFrame(base, dtype=object)


def test_missing_required_column_refuses_the_table_and_names_it() -> None:
    frame = pd.DataFrame({"order_id": ["1"], "buyer_id": ["u"], "amount": ["3"]})
    with pytest.raises(DataError, match="required column 'ts' is missing") as err:
        validate("orders", frame)
    assert "found: order_id, buyer_id, amount" in err.value.message
    assert err.value.field == "ts"
    with pytest.raises(DataError, match="unknown table 'sales'"):
        validate("sales", frame)


def test_timestamps_in_every_accepted_format_become_naive_utc() -> None:
    raw = pd.Series(["19970101", "2024-01-06 08:30:00+02:00", "2024-01-06T08:30:00Z",
                     "1704700800", "2024-01-06", " 2024-01-06T01:02:03.5 ", "2024-02-30",
                     "yesterday", None])
    got = parse_timestamps(raw)
    assert str(got.dtype) == "datetime64[us]"
    expected = ["1997-01-01", "2024-01-06 06:30", "2024-01-06 08:30", "2024-01-08 08:00",
                "2024-01-06", "2024-01-06 01:02:03.5"]
    assert list(got[:6]) == [pd.Timestamp(e) for e in expected]
    assert got[6:].isna().all()
    aware = pd.Series(pd.to_datetime(["2024-01-01 12:00"]).tz_localize("Europe/Paris"))
    assert parse_timestamps(aware)[0] == pd.Timestamp("2024-01-01 11:00")
    numeric = pd.Series([19970101.0, np.nan])
    assert parse_timestamps(numeric)[0] == pd.Timestamp("1997-01-01")


def test_every_kind_of_bad_row_is_rejected_with_row_column_and_reason() -> None:
    frame = _orders(
        order_id=["a", "b", "c", "a", "e", "f", "g", "h", None],
        ts=["2024-01-01", "2024-13-01", "2024-01-01", "2024-01-01", "2024-01-01",
            "2024-01-01", "2024-01-01", "2024-01-01", "2024-01-01"],
        amount=["1", "2", "-3", "4", "x", "6", "7", "8", "9"],
        status=["completed", "completed", "completed", "completed", "completed", "lost",
                "completed", "completed", "completed"],
        coupon_used=["yes", "no", "no", "no", "no", "no", "maybe", "0", "1"],
    )
    result = validate("orders", frame)
    assert list(result.accepted["order_id"]) == ["a", "h"]
    rejects = result.rejects.set_index("row")
    assert list(rejects.index) == [2, 3, 4, 5, 6, 7, 9]
    assert rejects.loc[2, "reason"] == "unparsable date '2024-13-01'"
    assert rejects.loc[3, "reason"] == "negative amount '-3'"
    assert (rejects.loc[4, "column"], rejects.loc[4, "reason"]) == (
        "order_id", "duplicate order_id 'a'")
    assert rejects.loc[5, "reason"] == "not a number 'x'"
    assert rejects.loc[6, "reason"] == "unknown status 'lost'"
    assert rejects.loc[7, "reason"] == "not a boolean 'maybe'"
    assert (rejects.loc[9, "column"], rejects.loc[9, "reason"]) == ("order_id", "missing value")
    assert rejects.loc[3, "amount"] == "-3"  # the original values come along


def test_several_problems_of_one_row_share_its_reject_line() -> None:
    result = validate("orders", _orders(ts=["never"], amount=["-1"]))
    assert len(result.rejects) == 1
    assert result.rejects.loc[0, "column"] == "ts; amount"
    assert result.rejects.loc[0, "reason"] == "unparsable date 'never'; negative amount '-1'"


def test_good_rows_are_coerced_to_contract_types_with_defaults() -> None:
    frame = _orders(amount=["$1,234.50", "3"], status=[" Returned ", None],
                    coupon_used=["TRUE", ""], extra=["x", "y"])
    result = validate("orders", frame)
    accepted = result.accepted
    assert result.rejects.empty
    assert list(accepted.columns) == SPECS["orders"].names
    assert list(accepted["amount"]) == [1234.5, 3.0]
    assert list(accepted["status"]) == ["returned", "completed"]
    assert list(accepted["coupon_used"]) == [True, False]
    assert accepted["coupon_used"].dtype == bool
    assert str(accepted["ts"].dtype) == "datetime64[us]"
    assert accepted["seller_id"].isna().all() and accepted["commission"].isna().all()


def test_a_duplicate_after_a_bad_first_copy_is_kept() -> None:
    result = validate("orders", _orders(order_id=["a", "a"], amount=["-1", "2"]))
    assert list(result.accepted["amount"]) == [2.0]
    assert list(result.rejects["row"]) == [1]


def test_row_numbers_follow_index_labels() -> None:
    frame = _orders(amount=["1", "-2"]).set_axis([4, 9])
    assert list(validate("orders", frame).rejects["row"]) == [10]


def test_events_listings_and_preferences_rules() -> None:
    events = pd.DataFrame({"user_id": ["u", "u", "u"], "ts": ["2024-01-01"] * 3,
                           "type": ["VIEW", "teleport", None]})
    result = validate("events", events)
    assert list(result.accepted["type"]) == ["view"]
    assert list(result.rejects["reason"]) == ["unknown event type 'teleport'", "missing value"]
    listings = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "seller_id": ["s"] * 3,
                             "listed_ts": ["2024-01-01"] * 3, "stock": ["2", "1.5", None]})
    result = validate("listings", listings)
    assert list(result.accepted["stock"]) == [2, 1]
    assert result.accepted["sold_ts"].isna().all()
    assert "stock is not a whole number >= 0 '1.5'" in result.rejects["reason"].tolist()
    prefs = pd.DataFrame({"user_id": ["a", "b"], "marketing_email": ["y", None]})
    accepted = validate("preferences", prefs).accepted
    assert list(accepted["personalization"]) == [True, True]
    assert list(accepted["marketing_email"]) == [True, False]
    assert list(accepted["marketing_sms"]) == [False, False]


def test_synthetic_tables_pass_the_contract_untouched(tmp_path: Path) -> None:
    summary = synthesize(200, 90, 5, tmp_path / "raw", tmp_path / "latent")
    for table in TABLES:
        frame = pd.read_parquet(summary.raw_dir / f"{table}.parquet")
        result = validate(table, frame)
        assert result.rejects.empty, (table, result.rejects.head())
        # Optional columns the generator does not write come back empty.
        added = [c for c in result.accepted.columns if c not in frame.columns]
        assert result.accepted[added].isna().all().all(), (table, added)
        pd.testing.assert_frame_equal(result.accepted[list(frame.columns)], frame,
                                      check_dtype=False)
        for column in frame.columns:
            assert result.accepted[column].dtype.kind == frame[column].dtype.kind, column


def test_credit_flags_of_users_stay_null_when_unknown_and_reject_other_words() -> None:
    frame = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "signup_ts": ["2024-01-01"] * 4,
                          "is_student": ["yes", None, "sometimes", "0"],
                          "self_excluded_from_credit": [None, "true", "n", ""]})
    result = validate("users", frame)
    assert list(result.accepted["user_id"]) == ["a", "b", "d"]
    assert result.accepted["is_student"].tolist() == [True, pd.NA, False]
    assert result.accepted["self_excluded_from_credit"].tolist() == [pd.NA, True, pd.NA]
    assert result.rejects[["row", "column"]].values.tolist() == [[3, "is_student"]]
    assert "not a boolean 'sometimes'" in result.rejects["reason"].iloc[0]
    absent = validate("users", frame[["user_id", "signup_ts"]]).accepted
    assert absent["is_student"].isna().all()  # a platform that does not say: unknown
