"""Importing platform files: delimiters, headers, mappings, rejects and the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.importers import import_table, sniff_delimiter, sniff_header
from nextbest.cli import main
from nextbest.errors import Conflict, DataError

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
    result = import_table("orders", MESSY_ORDERS, ORDER_MAP, tmp_path, max_reject_share=1.0)
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
    result = import_table("events", MESSY_EVENTS, mapping, tmp_path, max_reject_share=1.0)
    events = pd.read_parquet(result.parquet_path)
    assert list(events["type"]) == ["view", "add_to_cart", "login"]
    rejects = pd.read_csv(result.rejects_path)
    assert dict(zip(rejects["row"], rejects["reason"], strict=True)) == {
        3: "unknown event type 'checkout'", 4: "unparsable date 'yesterday'",
        6: "missing value", 7: "negative price '-50'"}


def test_parquet_input_is_mapped_and_validated(tmp_path: Path) -> None:
    source = tmp_path / "users.parquet"
    pd.DataFrame({"id": [1, 2, 2], "joined": pd.to_datetime(
        ["2024-01-01 10:00", "2024-01-02 00:00", "2024-01-03 00:00"]).tz_localize("America/New_York")}
    ).to_parquet(source)
    result = import_table("users", source, {"user_id": "id", "signup_ts": "joined"},
                          tmp_path / "out", max_reject_share=0.5)
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
    config = tmp_path / "nextbest.yaml"
    config.write_text("features:\n  import_max_reject_share: 0.7\n")
    code = main(["--config", str(config), "data", "import", "orders", str(MESSY_ORDERS),
                 "--out", str(out),
                 "--map", "order_id=txn,buyer_id=customer,ts=date", "amount=total",
                 "--map", "status=state", "coupon_used=coupon"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"orders: 5 accepted, 8 rejected (rejects: {out / 'rejects/orders.csv'})" in printed
    assert f"created {out / 'orders.parquet'} (5 rows)" in printed
    assert "ignored columns: store" in printed
    code = main(["data", "import", "orders", str(CDNOW), "--out", str(out), "--replace",
                 "--map", "buyer_id=1,ts=2,amount=4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "28 accepted, 0 rejected" in printed
    assert f"replaced {out / 'orders.parquet'} (it had 5 rows, now 28)" in printed

    code = main(["data", "import", "orders", str(MESSY_ORDERS), "--out", str(out),
                 "--map", "ts=date,amount=total", "--append"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "required column 'buyer_id' is missing" in err[0]
    code = main(["data", "import", "orders", str(tmp_path / "missing.csv"), "--out", str(out),
                 "--append"])
    assert code != 0
    assert "file not found" in capsys.readouterr().err
    code = main(["data", "import", "orders", str(CDNOW), "--map", "buyer_id"])
    assert code != 0
    assert "expected OURS=THEIRS" in capsys.readouterr().err


def _write_orders_csv(path: Path, dates: list[str], encoding: str = "utf-8",
                      category: str = "bags") -> Path:
    lines = ["order,cust,date,total,category"]
    lines += [f"o{i},c{i % 7},{d},{10 + i}.5,{category}" for i, d in enumerate(dates)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


US_MAP = {"order_id": "order", "buyer_id": "cust", "ts": "date", "amount": "total"}


def test_us_dates_are_read_in_the_order_the_file_shows(tmp_path: Path) -> None:
    dates = ["07/09/2024", "07/29/2024 18:30", "12/01/2024", "01/02/2025"]
    source = _write_orders_csv(tmp_path / "us.csv", dates)
    result = import_table("orders", source, US_MAP, tmp_path / "raw")
    assert (result.accepted, result.rejected) == (4, 0)
    orders = pd.read_parquet(result.parquet_path)
    assert list(orders["ts"]) == [pd.Timestamp(t) for t in [
        "2024-07-09", "2024-07-29 18:30", "2024-12-01", "2025-01-02"]]
    assert "ts: dates read as month/day/year ('07/29/2024 18:30' shows the order)" in result.notes
    european = _write_orders_csv(tmp_path / "eu.csv", ["09.07.2024", "29.07.2024"])
    orders = pd.read_parquet(import_table("orders", european, US_MAP, tmp_path / "eu").parquet_path)
    assert list(orders["ts"]) == [pd.Timestamp("2024-07-09"), pd.Timestamp("2024-07-29")]


def test_ambiguous_day_and_month_refuse_the_file_and_ask_for_a_format(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    source = _write_orders_csv(tmp_path / "us.csv", ["07/09/2024", "01/02/2024", "12/11/2024"])
    with pytest.raises(DataError, match="could be month/day/year or day/month/year") as err:
        import_table("orders", source, US_MAP, raw)
    assert "--date-format %m/%d/%Y (month first) or %d/%m/%Y (day first)" in err.value.message
    assert err.value.field == "ts"
    assert not (raw / "orders.parquet").exists()
    mixed = _write_orders_csv(tmp_path / "mixed.csv", ["13/01/2024", "01/13/2024"])
    with pytest.raises(DataError, match="disagree on the order"):
        import_table("orders", mixed, US_MAP, raw)
    day_first = import_table("orders", source, US_MAP, raw, date_format="%d/%m/%Y")
    assert list(pd.read_parquet(day_first.parquet_path)["ts"]) == [
        pd.Timestamp("2024-09-07"), pd.Timestamp("2024-02-01"), pd.Timestamp("2024-11-12")]


def test_a_date_format_reads_only_that_format(tmp_path: Path) -> None:
    source = _write_orders_csv(tmp_path / "f.csv", ["2024.07.09 10:30", "2024-07-10",
                                                    "2024.07.11 08:00", "2024.07.12 09:15"])
    result = import_table("orders", source, US_MAP, tmp_path / "raw",
                          date_format="%Y.%m.%d %H:%M", max_reject_share=0.25)
    assert (result.accepted, result.rejected) == (3, 1)
    rejects = pd.read_csv(result.rejects_path)
    assert rejects["reason"].tolist() == ["unparsable date (expected %Y.%m.%d %H:%M) '2024-07-10'"]
    with pytest.raises(DataError, match="has no % directive"):
        import_table("orders", source, US_MAP, tmp_path / "raw", date_format="YYYY-MM-DD",
                     mode="replace")


def test_encoding_is_a_flag_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    source = _write_orders_csv(tmp_path / "latin.csv", ["2024-07-09", "2024-07-10"],
                               encoding="latin-1", category="maroquinerie élégante")
    with pytest.raises(DataError, match="--encoding latin-1") as err:
        import_table("orders", source, US_MAP, tmp_path / "raw")
    assert err.value.field == "encoding"
    result = import_table("orders", source, US_MAP, tmp_path / "raw", encoding="latin-1")
    assert set(pd.read_parquet(result.parquet_path)["category"]) == {"maroquinerie élégante"}
    with pytest.raises(DataError, match="'klingon' is not a known encoding"):
        import_table("orders", source, US_MAP, tmp_path / "raw", encoding="klingon",
                     mode="replace")


def test_too_many_rejects_leave_the_table_as_it_was(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    good = _write_orders_csv(tmp_path / "good.csv", [f"2024-07-{d:02d}" for d in range(1, 21)])
    import_table("orders", good, US_MAP, raw)
    before = pd.read_parquet(raw / "orders.parquet")
    # 3 of 20 rows (15%) have an unknown date format: over the default limit of 10%.
    dates = [f"2024-08-{d:02d}" for d in range(1, 18)] + ["yesterday", "soon", "later"]
    bad = _write_orders_csv(tmp_path / "bad.csv", dates)
    with pytest.raises(DataError) as err:
        import_table("orders", bad, US_MAP, raw, mode="replace")
    assert err.value.message.startswith(
        "orders: 3 of 20 rows rejected (15.0%, more than features.import_max_reject_share 10%)"
        f", so {raw / 'orders.parquet'} was left unchanged; reasons: ts: unparsable date (3)")
    assert "--date-format" in err.value.message
    pd.testing.assert_frame_equal(pd.read_parquet(raw / "orders.parquet"), before)
    assert len(pd.read_csv(raw / "rejects" / "orders.csv")) == 3  # the rejects are written
    # At the limit (2 of 20) the table is replaced.
    ok = _write_orders_csv(tmp_path / "ok.csv", dates[:17] + ["2024-08-18", "x", "y"])
    result = import_table("orders", ok, US_MAP, raw, mode="replace")
    assert (result.action, result.accepted, result.rejected) == ("replaced", 18, 2)
    assert len(pd.read_parquet(raw / "orders.parquet")) == 18


def test_an_existing_table_is_replaced_or_appended_to_only_when_asked(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    first = _write_orders_csv(tmp_path / "first.csv", ["2024-07-01", "2024-07-02", "2024-07-03"])
    assert import_table("orders", first, US_MAP, raw).action == "created"
    with pytest.raises(Conflict, match="already exists: pass --append .* or --replace"):
        import_table("orders", first, US_MAP, raw)
    # o1 and o2 again with later dates (a later export), and o3..o4 from another file.
    later = tmp_path / "later.csv"
    later.write_text("order,cust,date,total\no1,c1,2024-08-01,99\no4,c4,2024-08-02,5\n")
    appended = import_table("orders", later, US_MAP, raw, mode="append")
    assert (appended.action, appended.rows_before, appended.rows_after,
            appended.replaced_keys) == ("appended", 3, 4, 1)
    assert appended.outcome() == (f"appended 2 rows to {raw / 'orders.parquet'}, 1 of them "
                                  "replacing rows with the same key (3 rows before, now 4)")
    orders = pd.read_parquet(raw / "orders.parquet").set_index("order_id")
    assert sorted(orders.index) == ["o0", "o1", "o2", "o4"]
    assert orders.loc["o1", "amount"] == 99.0
    replaced = import_table("orders", later, US_MAP, raw, mode="replace")
    assert (replaced.action, replaced.rows_before, replaced.rows_after) == ("replaced", 4, 2)
    events = tmp_path / "events.csv"
    events.write_text("user_id,ts,type\nu1,2024-07-01,view\n")
    import_table("events", events, {}, raw)
    twice = import_table("events", events, {}, raw, mode="append")  # no key: rows add up
    assert (twice.rows_before, twice.rows_after) == (1, 2)


def test_cli_refuses_a_silent_replace_and_a_mostly_rejected_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw"
    good = _write_orders_csv(tmp_path / "good.csv", ["2024-07-01", "2024-07-02"])
    argv = ["data", "import", "orders", "--out", str(out), "--map",
            "order_id=order,buyer_id=cust,ts=date,amount=total"]
    assert main([*argv[:3], str(good), *argv[3:]]) == 0
    capsys.readouterr()
    code = main([*argv[:3], str(good), *argv[3:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "already exists: pass --append to add these rows to it or --replace" in err[0]
    # The reproducer: a file whose dates nothing reads, imported over a good table.
    bad = tmp_path / "bad.csv"
    bad.write_text("order,cust,date,total\n" + "".join(
        f"o{i},c1,July {i + 1} 2024,10\n" for i in range(9)) + "o9,c1,2024-07-10,10\n")
    code = main([*argv[:3], str(bad), *argv[3:], "--replace"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "9 of 10 rows rejected" in err[0] and "was left unchanged" in err[0]
    assert len(pd.read_parquet(out / "orders.parquet")) == 2
    assert len(pd.read_csv(out / "rejects" / "orders.csv")) == 9
    code = main([*argv[:3], str(bad), *argv[3:], "--replace", "--date-format", "%B %d %Y"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "orders: 9 accepted, 1 rejected" in printed
    assert f"replaced {out / 'orders.parquet'} (it had 2 rows, now 9)" in printed


def test_card_numbers_are_refused_and_ip_addresses_truncated(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,buyer_id,ts,amount,card,perk\n"
                      "1,u1,2024-01-01,10,tok_8f3a9c,yes\n"
                      "2,u1,2024-01-02,10,4111 1111 1111 1111,no\n"
                      "3,u2,2024-01-03,10,5500-0000-0000-0004,no\n")
    result = import_table("orders", orders, {"payment_fingerprint": "card",
                                             "new_user_perk": "perk"}, tmp_path / "raw",
                          max_reject_share=1.0)
    stored = pd.read_parquet(result.parquet_path)
    assert list(stored["payment_fingerprint"]) == ["tok_8f3a9c"]
    assert list(stored["new_user_perk"]) == [True]
    rejects = result.rejects_path.read_text()
    assert "4111 1111" not in rejects and "5500-0000" not in rejects
    lines = pd.read_csv(result.rejects_path, dtype=str)
    assert list(lines["row"]) == ["2", "3"]
    assert lines["reason"].str.startswith("looks like a payment card number").all()
    assert list(lines["payment_fingerprint"]) == ["**** **** **** 1111", "****-****-****-0004"]

    events = tmp_path / "events.csv"
    events.write_text("user_id,ts,type,ip,rating,text\n"
                      "u1,2024-01-01,review,203.0.113.77,5,love it\n"
                      "u1,2024-01-01,login,2001:db8:1:2::5,,\n"
                      "u1,2024-01-01,review,10.1.0.0/16,6,\n"
                      "u1,2024-01-01,login,not-an-ip,,\n")
    result = import_table("events", events, {"ip_prefix": "ip"}, tmp_path / "raw",
                          max_reject_share=1.0)
    stored = pd.read_parquet(result.parquet_path)
    assert list(stored["ip_prefix"]) == ["203.0.113.0/24", "2001:db8:1::/48"]
    assert list(stored["rating"].fillna(0)) == [5.0, 0.0] and stored["text"][0] == "love it"
    assert any("2 full addresses (or longer prefixes) truncated" in n for n in result.notes)
    lines = pd.read_csv(result.rejects_path, dtype=str)
    assert list(lines["reason"]) == ["rating is not a whole number from 1 to 5 '6'",
                                     "not an IP address or prefix 'not-an-ip'"]
    assert "203.0.113.77" not in result.rejects_path.read_text()
