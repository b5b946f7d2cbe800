"""Importing platform files: delimiters, headers, mappings, rejects and the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.importers import import_table, sniff_delimiter, sniff_header
from nextbest.cli import main
from nextbest.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
CDNOW = FIXTURES / "cdnow_sample.txt"
MESSY_ORDERS = FIXTURES / "messy_orders.csv"
MESSY_EVENTS = FIXTURES / "messy_events.csv"
ORDER_MAP = {"order_id": "txn", "buyer_id": "customer", "ts": "date", "amount": "total",
             "status": "state", "coupon_used": "coupon"}
# Row number -> reason of every bad row in messy_orders.csv (row 10 is a blank line).
MESSY_ORDER_REJECTS = {
    5: "unparsable date '2024-02-30'",
    6: "negative amount '-5.00'",
    7: "missing value",
    8: "unknown status 'lost'",
    9: "duplicate order_id 'A2'",
    11: "not a number 'abc'",
    12: "not a boolean 'maybe'",
    14: "missing value",
}


def _cdnow_lines() -> list[list[str]]:
    return [line.split() for line in CDNOW.read_text().splitlines() if line.strip()]


def test_headerless_whitespace_file_imports_with_only_a_mapping(tmp_path: Path) -> None:
    result = import_table("orders", CDNOW, {"buyer_id": "1", "ts": "2", "amount": "4"}, tmp_path)
    lines = _cdnow_lines()
    assert (result.accepted, result.rejected) == (len(lines), 0)
    orders = pd.read_parquet(tmp_path / "orders.parquet")
    assert list(orders["buyer_id"]) == [f[0] for f in lines]  # leading zeros kept
    assert list(orders["amount"]) == [float(f[3]) for f in lines]
    assert list(orders["ts"]) == [pd.Timestamp(f[1]) for f in lines]
    assert orders["order_id"].tolist()[:2] == ["cdnow_sample-1", "cdnow_sample-2"]
    assert set(orders["status"]) == {"completed"} and not orders["coupon_used"].any()
    assert result.ignored_columns == ["3"]
    assert any("order ids derived" in note for note in result.notes)


def test_names_and_positional_aliases_work_too(tmp_path: Path) -> None:
    by_name = import_table("orders", CDNOW, {"buyer_id": "cust", "ts": "date", "amount": "total"},
                           tmp_path / "a", header=False, names=["cust", "date", "qty", "total"])
    by_col = import_table("orders", CDNOW, {"buyer_id": "col1", "ts": "col2", "amount": "col4"},
                          tmp_path / "b")
    assert by_name.ignored_columns == ["qty"]
    pd.testing.assert_frame_equal(pd.read_parquet(by_name.parquet_path),
                                  pd.read_parquet(by_col.parquet_path))


def test_messy_file_keeps_every_good_row_and_reports_every_bad_one(tmp_path: Path) -> None:
    result = import_table("orders", MESSY_ORDERS, ORDER_MAP, tmp_path)
    orders = pd.read_parquet(result.parquet_path)
    assert list(orders["order_id"]) == ["A1", "A2", "A3", "A4", "A12"]
    assert list(orders["amount"]) == [120.5, 1234.5, 80.0, 15.25, 45.0]
    assert list(orders["ts"]) == [pd.Timestamp(t) for t in [
        "2024-01-05 10:00", "2024-01-06 06:30", "2024-01-07", "2024-01-08 08:00",
        "2024-01-16"]]
    assert list(orders["status"]) == ["completed", "returned", "completed", "cancelled",
                                      "completed"]
    assert list(orders["coupon_used"]) == [True, False, False, True, True]
    rejects = pd.read_csv(result.rejects_path)
    assert dict(zip(rejects["row"], rejects["reason"], strict=True)) == MESSY_ORDER_REJECTS
    assert rejects.loc[rejects["row"] == 7, "column"].item() == "buyer_id"
    assert (result.accepted, result.rejected) == (5, 8)
    assert result.ignored_columns == ["store"]


def test_messy_events_report_unknown_types_and_negative_prices(tmp_path: Path) -> None:
    mapping = {"user_id": "user", "ts": "when", "type": "kind", "item_id": "item",
               "category": "cat"}
    result = import_table("events", MESSY_EVENTS, mapping, tmp_path)
    events = pd.read_parquet(result.parquet_path)
    assert list(events["type"]) == ["view", "add_to_cart", "login"]
    rejects = pd.read_csv(result.rejects_path)
    assert dict(zip(rejects["row"], rejects["reason"], strict=True)) == {
        3: "unknown event type 'purchase'", 4: "unparsable date 'yesterday'",
        6: "missing value", 7: "negative price '-50'"}


def test_parquet_input_is_mapped_and_validated(tmp_path: Path) -> None:
    source = tmp_path / "users.parquet"
    pd.DataFrame({"id": [1, 2, 2], "joined": pd.to_datetime(
        ["2024-01-01 10:00", "2024-01-02 00:00", "2024-01-03 00:00"]).tz_localize("America/New_York")}
    ).to_parquet(source)
    result = import_table("users", source, {"user_id": "id", "signup_ts": "joined"},
                          tmp_path / "out")
    users = pd.read_parquet(result.parquet_path)
    assert list(users["user_id"]) == ["1", "2"]
    assert users["signup_ts"][0] == pd.Timestamp("2024-01-01 15:00")
    assert result.rejected == 1


def test_sniffing() -> None:
    assert sniff_delimiter("a;b;c\n1;2;3\n") == ";"
    assert sniff_delimiter("a\tb\n1\t2\n") == "\t"
    assert sniff_delimiter("00001 19970101  1  11.77\n") == r"\s+"
    assert not sniff_header("00001 19970101  1  11.77\n", r"\s+")
    assert not sniff_header("7,2024-01-01T10:00:00Z,$12.50\n", ",")
    assert sniff_header("cust,date,total\n7,2024-01-01,3\n", ",")


def test_missing_file_unknown_columns_and_missing_required_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        import_table("orders", tmp_path / "nope.csv", {}, tmp_path)
    with pytest.raises(DataError, match="mapped column 'cust' is not in the file"):
        import_table("orders", MESSY_ORDERS, {"buyer_id": "cust"}, tmp_path)
    with pytest.raises(DataError, match="orders has no column 'customer_id'"):
        import_table("orders", MESSY_ORDERS, {"customer_id": "customer"}, tmp_path)
    with pytest.raises(DataError, match="required column 'buyer_id' is missing"):
        import_table("orders", MESSY_ORDERS, {"ts": "date", "amount": "total"}, tmp_path)
    assert not (tmp_path / "orders.parquet").exists()


def test_cli_import_prints_counts_and_fails_cleanly(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw"
    code = main(["data", "import", "orders", str(MESSY_ORDERS), "--out", str(out),
                 "--map", "order_id=txn,buyer_id=customer,ts=date", "amount=total",
                 "--map", "status=state", "coupon_used=coupon"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"orders: 5 accepted, 8 rejected (rejects: {out / 'rejects/orders.csv'})" in printed
    assert "ignored columns: store" in printed
    code = main(["data", "import", "orders", str(CDNOW), "--out", str(out),
                 "--map", "buyer_id=1,ts=2,amount=4"])
    assert code == 0
    assert "28 accepted, 0 rejected" in capsys.readouterr().out

    code = main(["data", "import", "orders", str(MESSY_ORDERS), "--out", str(out),
                 "--map", "ts=date,amount=total"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "required column 'buyer_id' is missing" in err[0]
    code = main(["data", "import", "orders", str(tmp_path / "missing.csv"), "--out", str(out)])
    assert code != 0
    assert "file not found" in capsys.readouterr().err
    code = main(["data", "import", "orders", str(CDNOW), "--map", "buyer_id"])
    assert code != 0
    assert "expected OURS=THEIRS" in capsys.readouterr().err
