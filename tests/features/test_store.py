"""The online store: one suite, run against SQLite and a real redis-server."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from redis_server import free_port

from features.store import (
    REVIEW_FIELDS,
    OnlineStore,
    Preferences,
    RecordsLoaded,
    encode_records,
    open_store,
    preference_rows,
)
from nextbest.config import Settings
from nextbest.errors import DataError, Gone, MissingComponent, NotFound, ValidationFailed

JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)


def feature_frame(as_of: date, tier: str = "gold", tags: tuple[str, ...] = ("high_value",),
                  tmp: Path | None = None) -> pd.DataFrame:
    """Three users shaped like features.parquet; read back from Parquet when ``tmp`` is set."""
    frame = pd.DataFrame({
        "user_id": ["u1", "u2", "u3"],
        "as_of": pd.Timestamp(as_of),
        "recency_days": [3.0, np.nan, 40.0],
        "monetary_365d": [1250.5, 0.0, 99.99],
        "frequency_total": [7, 0, 2],
        "top_category": ["bags", None, "shoes"],
        "is_seller": [True, False, False],
        "tier": [tier, "new", "silver"],
        "segment": ["champions", "no_purchase", "promising"],
        "cluster": [1, 0, 2],
        "tags": [list(tags), [], ["at_risk"]],
    })
    if tmp is None:
        return frame
    path = tmp / f"features_{as_of}.parquet"
    frame.to_parquet(path)
    return pd.read_parquet(path)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[OnlineStore]:
    """An empty store of each backend; Redis tests get their own key prefix."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"test:{request.node.name}:"
        settings = settings.model_copy(update={"store": settings.store.model_copy(
            update={"backend": "redis", "redis_url": url, "redis_prefix": prefix})})
    opened = open_store(settings)
    assert opened.backend == request.param
    yield opened
    opened.close()


def test_write_then_get_returns_every_column(store: OnlineStore, tmp_path: Path) -> None:
    frame = feature_frame(JAN, tmp=tmp_path)
    assert store.write(frame, JAN) == 3
    got = store.get("u1")
    assert got is not None
    assert set(got) == set(frame.columns) | set(REVIEW_FIELDS)
    assert got["under_review"] is False and got["review_reasons"] == []
    assert got["as_of"] == "2024-01-01"
    assert got["monetary_365d"] == pytest.approx(1250.5)
    assert got["frequency_total"] == 7
    assert got["is_seller"] is True
    assert got["tags"] == ["high_value"]
    empty = store.get("u2")
    assert empty is not None
    assert empty["recency_days"] is None
    assert empty["top_category"] is None
    assert empty["tags"] == []


def test_get_with_preferences_is_get_and_get_preferences_in_one_read(
        store: OnlineStore) -> None:
    store.write(feature_frame(JAN), JAN)
    store.set_preferences("u1", Preferences(personalization=False))
    store.set_preferences("only-prefs", Preferences(marketing_sms=False))
    for user in ("u1", "u2", "only-prefs", "nobody"):
        assert store.get_with_preferences(user) == (store.get(user),
                                                    store.get_preferences(user))
    record, prefs = store.get_with_preferences("u1")
    assert record is not None and prefs.personalization is False
    assert store.get_with_preferences("nobody") == (None, Preferences())


def test_unknown_users(store: OnlineStore) -> None:
    store.write(feature_frame(JAN), JAN)
    assert store.get("nobody") is None
    many = store.get_many(["u3", "nobody", "u1", "u3"])
    assert set(many) == {"u1", "u3"}
    assert many["u3"]["tier"] == "silver"
    assert store.get_many([]) == {}


def test_older_frame_does_not_overwrite_newer(store: OnlineStore) -> None:
    store.write(feature_frame(FEB, tier="platinum"), FEB)
    older = feature_frame(JAN, tier="gold")
    assert store.write(older, JAN) == 0
    assert store.get("u1")["tier"] == "platinum"
    assert store.get("u1")["as_of"] == "2024-02-01"
    # Only u1 is in the newer frame; the others keep February.
    newer = feature_frame(MAR, tier="silver").iloc[:1]
    assert store.write(newer, MAR) == 1
    assert store.get("u1")["tier"] == "silver"
    assert store.get("u2")["as_of"] == "2024-02-01"
    assert store.meta() == {"backend": store.backend, "as_of": "2024-03-01", "users": 3}


def test_a_write_says_how_many_newer_records_it_kept(store: OnlineStore) -> None:
    store.write(feature_frame(MAR, tier="platinum").iloc[:2], MAR)
    assert store.load_records(feature_frame(JAN), JAN) == RecordsLoaded(
        written=1, kept_newer=2, cleared=0)
    assert store.get("u1")["as_of"] == "2024-03-01" and store.get("u3")["as_of"] == "2024-01-01"
    assert store.load_records(feature_frame(MAR), MAR) == RecordsLoaded(3, 0, 0)


def test_replacing_newer_records_puts_the_store_back_to_an_older_as_of(
        store: OnlineStore) -> None:
    store.write(feature_frame(JAN, tags=("high_value", "price_sensitive")), JAN)
    store.remove_tag("u1", "price_sensitive")
    store.set_preferences("u1", Preferences(personalization=False))
    store.erase("u3")
    # A build with a mistaken as_of, holding a user the older partition does not have.
    mistaken = pd.concat([feature_frame(MAR, tier="platinum", tags=("price_sensitive",)),
                          feature_frame(MAR).iloc[:1].assign(user_id="u9")])
    store.write(mistaken, MAR)
    assert store.meta() == {"backend": store.backend, "as_of": "2024-03-01", "users": 3}
    loaded = store.load_records(feature_frame(FEB, tags=("high_value", "price_sensitive")),
                                FEB, replace_newer=True)
    assert loaded == RecordsLoaded(written=2, kept_newer=0, cleared=1)  # u3 stays erased
    assert store.get("u1")["as_of"] == "2024-02-01" and store.get("u1")["tier"] == "gold"
    assert store.get("u1")["tags"] == ["high_value"]          # the removal survives
    assert store.get_preferences("u1").personalization is False
    assert store.get("u9") is None and store.get("u3") is None
    assert store.meta() == {"backend": store.backend, "as_of": "2024-02-01", "users": 2}
    # From then on the store moves forward as usual.
    assert store.load_records(feature_frame(MAR), MAR) == RecordsLoaded(2, 0, 0)


def test_reset_empties_records_and_keeps_choices_and_erasures(store: OnlineStore) -> None:
    store.write(feature_frame(MAR, tags=("high_value", "price_sensitive")), MAR)
    store.remove_tag("u1", "price_sensitive")
    store.set_preferences("u2", Preferences(marketing_email=False))
    store.erase("u3", now=datetime(2024, 3, 2))
    assert store.reset() == 2
    assert store.get_many(["u1", "u2", "u3"]) == {}
    assert store.meta() == {"backend": store.backend, "as_of": None, "users": 0}
    assert store.get_preferences("u2").marketing_email is False
    assert [e.id_hash for e in store.erasures()] == [store.erasure_hash("u3")]
    assert store.reset() == 0
    # An older build now lands, without the removed tag and without the erased user.
    assert store.write(feature_frame(JAN, tags=("high_value", "price_sensitive")), JAN) == 2
    assert store.get("u1")["tags"] == ["high_value"] and store.get("u3") is None
    assert store.meta() == {"backend": store.backend, "as_of": "2024-01-01", "users": 2}


def test_loaded_preferences_replace_older_stored_ones_only(store: OnlineStore) -> None:
    store.set_preferences("u1", Preferences(personalization=True,
                                            updated_ts=datetime(2024, 1, 1)))
    store.set_preferences("u2", Preferences(personalization=True,
                                            updated_ts=datetime(2024, 6, 1)))
    raw = pd.DataFrame({"user_id": ["u1", "u2"], "personalization": [False, False],
                        "updated_ts": pd.to_datetime(["2024-03-01", "2024-03-01"])})
    assert store.load_preferences(raw) == 1
    assert store.get_preferences("u1").personalization is False
    assert store.get_preferences("u1").updated_ts == datetime(2024, 3, 1)
    assert store.get_preferences("u2").personalization is True


def test_removed_tag_stays_removed_after_later_writes(store: OnlineStore) -> None:
    store.write(feature_frame(JAN, tags=("high_value", "price_sensitive")), JAN)
    assert store.remove_tag("u1", "price_sensitive") is True
    assert store.remove_tag("u1", "price_sensitive") is True
    assert store.get("u1")["tags"] == ["high_value"]
    store.write(feature_frame(FEB, tags=("price_sensitive", "cart_abandoner")), FEB)
    assert store.get("u1")["tags"] == ["cart_abandoner"]
    assert store.get_many(["u1"])["u1"]["tags"] == ["cart_abandoner"]
    exported = store.export("u1")
    assert exported["removed_tags"] == ["price_sensitive"]
    assert exported["record"]["tags"] == ["price_sensitive", "cart_abandoner"]
    assert store.remove_tag("nobody", "high_value") is False
    assert store.get("nobody") is None


def test_preferences_default_set_and_load(store: OnlineStore) -> None:
    assert store.get_preferences("u1") == Preferences()
    raw = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u3"],
        "personalization": [False, True, None, True],
        "marketing_email": [True, False, False, True],
        "updated_ts": pd.to_datetime(["2024-01-05", "2024-01-02", "2024-01-03", None]),
    })
    assert store.load_preferences(raw) == 3
    u1 = store.get_preferences("u1")
    assert (u1.personalization, u1.marketing_email) == (False, True)
    assert u1.marketing_sms is True and u1.marketing_push is True
    assert u1.updated_ts == datetime(2024, 1, 5)
    assert store.get_preferences("u2").personalization is True
    assert store.get_preferences("u2").marketing_email is False
    store.set_preferences("u2", Preferences(marketing_push=False))
    assert store.get_preferences("u2").marketing_push is False
    assert store.get_preferences("u2").updated_ts is not None
    # A bulk load older than what the user set keeps the user's choice.
    assert store.load_preferences(raw.iloc[2:3]) == 0
    assert store.get_preferences("u2").marketing_push is False
    # Preferences alone do not make a user known to get().
    assert store.get("u2") is None
    assert store.meta()["users"] == 0


def test_delete_erases_everything(store: OnlineStore) -> None:
    store.write(feature_frame(JAN), JAN)
    store.remove_tag("u1", "high_value")
    store.set_preferences("u1", Preferences(personalization=False))
    assert store.export("u1")["preferences"]["personalization"] is False
    assert store.delete("u1") is True
    assert store.get("u1") is None
    assert store.get_preferences("u1") == Preferences()
    assert store.export("u1") == {"user_id": "u1", "record": None, "removed_tags": [],
                                  "preferences": None, "review": None}
    assert store.delete("u1") is False
    assert store.meta()["users"] == 2
    # A later build brings the record back without the old removal.
    store.write(feature_frame(FEB), FEB)
    assert store.get("u1")["tags"] == ["high_value"]
    assert store.meta()["users"] == 3


def test_erasure_sticks_through_later_writes(store: OnlineStore) -> None:
    store.write(feature_frame(JAN), JAN)
    store.set_preferences("u1", Preferences(personalization=False))
    erased_at = datetime(2024, 1, 20, 12, 30)
    assert store.erase("u1", now=erased_at) is True
    assert store.get("u1") is None
    assert store.export("u1")["preferences"] is None
    assert store.is_erased("u1") and not store.is_erased("u2")
    assert store.meta()["users"] == 2
    # A rebuild from tables that still hold u1 writes the others, never u1.
    assert store.write(feature_frame(FEB), FEB) == 2
    assert store.get("u1") is None
    assert store.get("u2")["as_of"] == "2024-02-01"
    assert store.meta()["users"] == 2
    raw = pd.DataFrame({"user_id": ["u1", "u2"], "personalization": [False, False]})
    assert store.load_preferences(raw) == 1
    assert store.export("u1")["preferences"] is None
    # Erasing again (or an unknown user) lists them, keeping the first erasure time.
    assert store.erase("u1", now=datetime(2024, 3, 1)) is False
    assert store.erase_many(["ghost", "u3", "ghost"], now=datetime(2024, 2, 2)) == 1
    listed = {store.erasure_hash(u): u for u in ("u1", "ghost", "u3")}
    assert sorted((listed[e.id_hash], e.erased_ts) for e in store.erasures()) == [
        ("ghost", datetime(2024, 2, 2)), ("u1", erased_at), ("u3", datetime(2024, 2, 2))]
    assert store.erased_among(["u1", "u2", "u3", "nobody"]) == {"u1", "u3"}
    assert store.meta()["users"] == 1
    # Nothing about an erased user is stored again: a consent change is refused (410).
    store.set_preferences("u1", Preferences(marketing_email=False))
    assert store.export("u1")["preferences"] is None
    with pytest.raises(Gone, match="erased"):
        store.update_preferences("u1", {"marketing_email": False})
    assert store.export("u1")["preferences"] is None
    with pytest.raises(DataError, match="empty user id"):
        store.erase("")


def test_delete_without_erasure_is_not_listed(store: OnlineStore) -> None:
    store.write(feature_frame(JAN), JAN)
    assert store.delete("u1") is True
    assert store.erasures() == []
    assert store.write(feature_frame(FEB), FEB) == 3


def test_bad_frames_are_refused(store: OnlineStore) -> None:
    frame = feature_frame(JAN)
    with pytest.raises(DataError, match="user_id 'u1' more than once"):
        store.write(pd.concat([frame, frame.iloc[:1]]), JAN)
    with pytest.raises(DataError, match="no user_id column"):
        store.write(frame.drop(columns="user_id"), JAN)
    assert store.write(frame.iloc[:0], JAN) == 0
    assert store.meta() == {"backend": store.backend, "as_of": None, "users": 0}


def test_reads_from_many_threads(store: OnlineStore) -> None:
    store.write(feature_frame(JAN), JAN)
    results: list[str] = []

    def read() -> None:
        for _ in range(50):
            results.append(store.get("u3")["tier"])

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["silver"] * 200


def many_users(n: int, as_of: date) -> pd.DataFrame:
    """``n`` users shaped like :func:`feature_frame` (ids u0000, u0001, ...)."""
    rows = feature_frame(as_of)
    frame = pd.concat([rows] * (n // 3 + 1), ignore_index=True).iloc[:n]
    return frame.assign(user_id=[f"u{i:04d}" for i in range(n)])


def frame_records(frame: pd.DataFrame) -> dict[str, dict]:
    """The rows of a records frame as plain dicts (arrays as lists, missing as None)."""
    out = {}
    for row in frame.to_dict("records"):
        out[row["user_id"]] = {k: (list(v) if isinstance(v, np.ndarray | list) else
                                   None if pd.isna(v) else v) for k, v in row.items()}
    return out


def test_iter_frames_gives_every_record_once_as_get_does(store: OnlineStore) -> None:
    store.write(many_users(25, JAN), JAN)
    store.set_preferences("only-prefs", Preferences(marketing_sms=False))  # no record
    store.remove_tag("u0000", "high_value")
    store.erase("u0004")
    chunks = list(store.iter_frames(chunk_rows=7))
    assert all(0 < len(chunk) <= 7 for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) == 24
    scanned = frame_records(pd.concat(chunks, ignore_index=True))
    assert len(scanned) == 24 and "only-prefs" not in scanned and "u0004" not in scanned
    for user_id, record in scanned.items():
        expected = store.get(user_id)
        assert {k: record.get(k) for k in expected} == expected, user_id
    assert scanned["u0000"]["tags"] == []  # removed by the user
    assert scanned["u0003"]["tags"] == ["high_value"]
    assert scanned["u0001"]["recency_days"] is None and scanned["u0001"]["top_category"] is None


def test_get_frame_holds_the_known_users_in_the_order_asked(store: OnlineStore) -> None:
    store.write(feature_frame(JAN), JAN)
    frame = store.get_frame(["u3", "nobody", "u1", "u3"])
    assert frame["user_id"].tolist() == ["u3", "u1"]
    assert frame["as_of"].tolist() == ["2024-01-01"] * 2
    assert frame_records(frame)["u1"]["tags"] == ["high_value"]
    assert store.get_frame(["nobody"]).empty
    assert [len(chunk) for chunk in store.iter_frames()] == [3]


def test_a_column_that_changed_type_between_builds_is_still_read(store: OnlineStore) -> None:
    store.write(feature_frame(JAN).iloc[:2], JAN)
    later = feature_frame(FEB).iloc[2:].assign(cluster="c7")  # a number became text
    store.write(later, FEB)
    scanned = frame_records(pd.concat(store.iter_frames(), ignore_index=True))
    assert scanned["u1"]["cluster"] == 1 and scanned["u3"]["cluster"] == "c7"
    assert scanned["u3"]["as_of"] == "2024-02-01"


def test_sqlite_file_is_shared_between_connections(settings: Settings) -> None:
    with open_store(settings) as writer, open_store(settings) as reader:
        writer.write(feature_frame(JAN), JAN)
        assert reader.get("u1")["tier"] == "gold"
        mode = reader._conn().execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_unreachable_redis_names_the_url(settings: Settings) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = settings.model_copy(update={"store": settings.store.model_copy(
        update={"backend": "redis", "redis_url": url, "redis_timeout_seconds": 1.0})})
    with pytest.raises(MissingComponent, match="redis-server") as err:
        open_store(settings)
    assert url in err.value.message


def test_records_are_the_same_in_any_chunking() -> None:
    frame = feature_frame(JAN)
    whole = list(encode_records(frame, JAN, chunk_rows=100))
    pieces = list(encode_records(frame, JAN, chunk_rows=2))
    assert [len(c.ids) for c in pieces] == [2, 1]
    assert [r for c in pieces for r in c.records] == whole[0].records
    assert whole[0].ids == ["u1", "u2", "u3"]


def test_preference_rows_are_the_models_own_json() -> None:
    raw = pd.DataFrame({
        "user_id": ["a", "b", "c", "a", "d"],
        "personalization": pd.array([False, None, True, True, False], dtype="boolean"),
        "marketing_sms": [True, False, True, False, True],
        "updated_ts": pd.to_datetime(["2024-01-05 10:00:00.000250", None, "2024-02-01",
                                      "2024-01-01", "2024-03-01 12:00"], format="ISO8601"),
    })
    rows = preference_rows(raw)
    expected = {
        "a": Preferences(personalization=False, marketing_sms=True,
                         updated_ts=datetime(2024, 1, 5, 10, 0, 0, 250)),
        "b": Preferences(marketing_sms=False),
        "c": Preferences(updated_ts=datetime(2024, 2, 1)),
        "d": Preferences(personalization=False, updated_ts=datetime(2024, 3, 1, 12)),
    }
    assert sorted(rows) == sorted(
        (user, "" if p.updated_ts is None else p.updated_ts.strftime("%Y-%m-%dT%H:%M:%S.%f"),
         p.model_dump_json()) for user, p in expected.items())
    aware = raw.assign(updated_ts=raw["updated_ts"].dt.tz_localize("Europe/Paris"))
    assert dict((u, s) for u, s, _ in preference_rows(aware))["d"] == "2024-03-01T11:00:00.000000"


# ---------------------------------------------------------------- the review queue
CARDS = "card_switching: paid with 4 different payment fingerprints in 30 days"
IPS = "ip_jumping: came from 3 countries in 24 hours, 3 countries and 5 IP prefixes in 30 days"


def flagged_frame(as_of: date, u1_reasons: list[str]) -> pd.DataFrame:
    """The three users of feature_frame, u1 with ``u1_reasons`` (risk reasons)."""
    return feature_frame(as_of).assign(risk_reasons=[u1_reasons, [], []])


def test_a_risk_tag_puts_the_user_in_the_review_queue_until_cleared(store: OnlineStore) -> None:
    loaded = store.load_records(flagged_frame(JAN, [CARDS]), JAN)
    assert loaded.reviews_opened == 1
    got = store.get("u1")
    assert got["under_review"] is True and got["review_status"] == "pending"
    assert got["review_reasons"] == [CARDS]
    assert store.get("u2")["under_review"] is False and store.get("u2")["review_status"] is None
    [pending] = store.reviews()
    assert (pending.user_id, pending.status, pending.tags) == ("u1", "pending", ["card_switching"])
    assert pending.as_of == "2024-01-01"

    when = datetime(2024, 1, 2, 9, 30)
    cleared = store.decide_review("u1", "cleared", "same person, new bank", "ana", now=when)
    assert (cleared.status, cleared.decided_by, cleared.decided_ts, cleared.note) == \
        ("cleared", "ana", when, "same person, new bank")
    assert store.get("u1")["under_review"] is False and store.get("u1")["review_reasons"] == []
    assert store.reviews() == [] and [r.user_id for r in store.reviews("cleared")] == ["u1"]

    # The next daily build sees the same evidence: a cleared user stays cleared ...
    assert store.load_records(flagged_frame(FEB, [CARDS]), FEB).reviews_opened == 0
    assert store.get("u1")["under_review"] is False
    # ... but a risk the clearance did not cover reopens the review.
    assert store.load_records(flagged_frame(MAR, [CARDS, IPS]), MAR).reviews_opened == 1
    reopened = store.review("u1")
    assert reopened.status == "pending" and reopened.reasons == [CARDS, IPS]
    assert reopened.tags == ["card_switching", "ip_jumping"] and reopened.as_of == "2024-03-01"
    confirmed = store.decide_review("u1", "confirmed", "card testing ring", "bo")
    assert confirmed.status == "confirmed" and store.get("u1")["under_review"] is True
    assert [(d.status, d.by) for d in confirmed.history] == [("cleared", "ana"),
                                                             ("confirmed", "bo")]
    assert store.export("u1")["review"]["status"] == "confirmed"


def test_review_decisions_are_checked(store: OnlineStore) -> None:
    store.load_records(flagged_frame(JAN, [CARDS]), JAN)
    with pytest.raises(NotFound, match="'u2' is not in the review queue"):
        store.decide_review("u2", "cleared", "fine", "ana")
    with pytest.raises(ValidationFailed, match="needs a note") as err:
        store.decide_review("u1", "cleared", "  ", "ana")
    assert err.value.field == "note"
    with pytest.raises(ValidationFailed, match="one of cleared, confirmed"):
        store.decide_review("u1", "ignored", "fine", "ana")
    with pytest.raises(ValidationFailed, match="status 'open'"):
        store.reviews("open")
    assert store.review("u1").status == "pending" and store.review("u1").history == []


def test_the_queue_survives_resets_and_leaves_with_erasure(store: OnlineStore) -> None:
    store.load_records(flagged_frame(JAN, [CARDS]), JAN)
    store.reset()
    assert [r.user_id for r in store.reviews()] == ["u1"]
    store.write(feature_frame(FEB), FEB)  # a build without risk reasons keeps the review
    assert store.get("u1")["under_review"] is True
    store.erase("u1")
    assert store.reviews(None) == [] and store.review("u1") is None
    # An erased user is never queued again.
    store.load_records(flagged_frame(MAR, [CARDS]), MAR)
    assert store.reviews(None) == []


def test_erasure_leaves_no_byte_of_the_user_in_the_sqlite_files(settings: Settings) -> None:
    """secure_delete and a TRUNCATE checkpoint: neither the database nor its WAL keeps the
    id, and the erasure list holds only its salted hash."""
    frame = feature_frame(JAN)
    frame["user_id"] = ["erase_me_7f3a", "u2", "u3"]
    with open_store(settings) as store:
        store.write(frame, JAN)
        store.set_preferences("erase_me_7f3a", Preferences(marketing_sms=False))
        store.erase("erase_me_7f3a")
        assert store.is_erased("erase_me_7f3a")
        path = Path(settings.paths.store_path)
        for file in path.parent.glob(path.name + "*"):
            assert b"erase_me_7f3a" not in file.read_bytes(), file
        assert Path(f"{path}-wal").stat().st_size == 0


def test_an_old_plain_erasure_list_is_hashed_on_open(settings: Settings) -> None:
    path = Path(settings.paths.store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE erased (user_id TEXT PRIMARY KEY, erased_ts TEXT NOT NULL)")
        conn.execute("INSERT INTO erased VALUES ('old_erased_9c1', '2024-01-01T00:00:00')")
    with open_store(settings) as store:
        assert store.is_erased("old_erased_9c1")
        assert [e.id_hash for e in store.erasures()] == [store.erasure_hash("old_erased_9c1")]
    for file in path.parent.glob(path.name + "*"):
        assert b"old_erased_9c1" not in file.read_bytes(), file


def _flip(settings: Settings, flag: str, rounds: int) -> None:
    """A replica (its own process and store connection) changing one flag again and again."""
    with open_store(settings) as store:
        for i in range(rounds):
            store.update_preferences("racer", {flag: i % 2 == 1})


def test_preference_updates_from_replicas_never_lose_a_flag(store: OnlineStore,
                                                            settings: Settings) -> None:
    """Two processes change different flags of one user at once; each merge is atomic, so
    the last value each one wrote survives (a read-merge-write race would lose some)."""
    if store.backend == "redis":
        settings = settings.model_copy(update={"store": settings.store.model_copy(update={
            "backend": "redis", "redis_url": store.url, "redis_prefix": store.prefix})})
    rounds = 200  # each writer's last write (i = 199) sets its flag True
    context = multiprocessing.get_context("fork")
    racers = [context.Process(target=_flip, args=(settings, flag, rounds))
              for flag in ("marketing_sms", "marketing_push")]
    for racer in racers:
        racer.start()
    for flag in ("marketing_email",):
        for i in range(rounds):
            store.update_preferences("racer", {flag: i % 2 == 1})
    for racer in racers:
        racer.join(timeout=120)
        assert racer.exitcode == 0
    prefs = store.get_preferences("racer")
    assert (prefs.marketing_email, prefs.marketing_sms, prefs.marketing_push) == (
        True, True, True)
    assert prefs.personalization is True and prefs.updated_ts is not None
