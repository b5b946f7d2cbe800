"""Erasure everywhere: raw tables, feature partitions, latent traits, store and decision log,
and rebuilds that do not bring the user back."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from decisions.decision_log import DecisionLog
from decisions.engine import DecisionEngine
from decisions.policy import RequestContext, UserView
from features.build import build_features, load_features
from features.erasure import RAW_RULES, TableRule, erase_from_table, erase_users
from features.store import open_store
from features.synth import SELLER_TRAITS_FILE, synthesize
from nextbest.cli import main as cli_main
from nextbest.config import Settings
from nextbest.errors import ErasureFailed
from serving.erasure import Eraser, erase_everywhere

SEED = 11


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic marketplace (raw and latent), generated once per module."""
    root = tmp_path_factory.mktemp("erasure_world")
    synthesize(n_users=120, days=150, seed=SEED, raw_dir=root / "raw", latent_dir=root / "latent",
               start=date(2024, 1, 1))
    return root


@pytest.fixture
def world(settings: Settings, synthetic: Path) -> Settings:
    """The module's marketplace copied into this test's settings paths, features built."""
    shutil.copytree(synthetic / "raw", settings.paths.raw_dir)
    shutil.copytree(synthetic / "latent", settings.paths.latent_dir)
    build_features(settings, progress=False)
    return settings


def raw(settings: Settings, table: str) -> pd.DataFrame:
    return pd.read_parquet(settings.paths.raw_dir / f"{table}.parquet")


def seller_with_sales(settings: Settings) -> str:
    """A user who bought, listed and sold: present in every raw table."""
    orders = raw(settings, "orders")
    listings = raw(settings, "listings")
    events = raw(settings, "events")
    both = (set(orders["buyer_id"]) & set(orders["seller_id"].dropna())
            & set(listings["seller_id"]) & set(events["user_id"]))
    assert both, "the synthetic world should have users who buy and sell"
    return sorted(both)[0]


def mentions(settings: Settings, user: str) -> dict[str, int]:
    """Rows naming ``user`` in each raw table (any rule column)."""
    counts = {}
    for table, rule in RAW_RULES.items():
        frame = raw(settings, table)
        columns = [c for c in (*rule.drop, *rule.blank) if c in frame.columns]
        counts[table] = int(frame[columns].eq(user).any(axis=1).sum())
    return counts


def features_ids(settings: Settings) -> set[str]:
    paths = sorted(settings.paths.features_dir.glob("as_of=*/features.parquet"))
    assert paths, "features build wrote no partition"
    return set(pd.read_parquet(paths[-1], columns=["user_id"])["user_id"])


def test_erase_everywhere_purges_files_and_rebuilds_skip_the_user(world: Settings) -> None:
    user = seller_with_sales(world)
    assert min(mentions(world, user)[t] for t in ("users", "orders", "listings", "events")) > 0
    orders_before = raw(world, "orders")
    sold = orders_before["seller_id"].eq(user) & orders_before["buyer_id"].ne(user)
    others_before = {t: raw(world, t) for t in ("users", "events", "listings")}
    sellers_before = pd.read_parquet(world.paths.latent_dir / SELLER_TRAITS_FILE)
    assert user in set(sellers_before["user_id"])  # a seller has latent seller traits

    report = erase_everywhere(world, [user], now=datetime(2024, 6, 1))

    assert report.store_records == 1 and report.decisions is None  # no decision log yet
    assert sum(mentions(world, user).values()) == 0
    orders = raw(world, "orders")
    # Orders the user sold stay (the buyers' history) without the seller id.
    kept = orders[orders["order_id"].isin(orders_before.loc[sold, "order_id"])]
    assert len(kept) == int(sold.sum()) > 0 and kept["seller_id"].isna().all()
    assert len(orders) == int((orders_before["buyer_id"] != user).sum())
    # Other users' rows are untouched.
    for table, before in others_before.items():
        column = RAW_RULES[table].drop[0]
        expected = before[before[column] != user].reset_index(drop=True)
        pd.testing.assert_frame_equal(raw(world, table), expected)
    assert user not in features_ids(world)
    traits = pd.read_parquet(world.paths.latent_dir / "user_traits.parquet")
    assert user not in set(traits["user_id"]) and len(traits) == 119
    sellers = pd.read_parquet(world.paths.latent_dir / SELLER_TRAITS_FILE)
    assert user not in set(sellers["user_id"]) and len(sellers) == len(sellers_before) - 1
    assert any(path.endswith("orders.parquet") for path in report.files)

    # A rebuild (from the purged tables) keeps the user out of features and store.
    build_features(world, progress=False)
    assert user not in features_ids(world)
    with open_store(world) as store:
        assert store.get(user) is None
        assert [e.id_hash for e in store.erasures()] == [store.erasure_hash(user)]
        assert store.meta()["users"] == len(features_ids(world))


def test_store_erasure_alone_survives_a_rebuild_then_pending_purges(
        world: Settings, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = seller_with_sales(world)
    with open_store(world) as store:
        users_before = store.meta()["users"]
        # What DELETE /users/{id} does: store (listed) and decision log, files untouched.
        report = erase_users([user], store=store)
        assert report.store_records == 1 and report.files == {}
    # The raw tables still hold the user, but builds (for the store or for training) skip
    # everyone on the erasure list.
    rebuilt = build_features(world, progress=False, refresh_store=False)
    assert user not in set(rebuilt["user_id"]) and user not in features_ids(world)
    build_features(world, progress=False)
    with open_store(world) as store:
        assert store.get(user) is None
        assert store.meta()["users"] == users_before - 1
    assert sum(mentions(world, user).values()) > 0  # purged only by data erase --pending

    for name in ("DATA_DIR", "RAW_DIR", "LATENT_DIR", "FEATURES_DIR", "STORE_PATH", "DECISION_LOG",
                 "BANDIT_DIR"):
        value = getattr(world.paths, name.lower())
        monkeypatch.setenv(f"NEXTBEST__PATHS__{name}", str(value))
    assert cli_main(["data", "erase", "--pending"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("erased 1 user(s): 0 store record(s)"), out
    assert sum(mentions(world, user).values()) == 0
    assert user not in features_ids(world)


def test_cli_erase_without_users_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["data", "erase"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "USER_ID" in err


def test_erase_everywhere_also_clears_the_decision_log(world: Settings) -> None:
    user = seller_with_sales(world)
    with DecisionEngine(world, role="inline") as engine:
        engine.decide(UserView(user_id=user), RequestContext())
        engine.decide(UserView(user_id="someone_else"), RequestContext())
    report = erase_everywhere(world, [user])
    assert report.decisions == 1
    with DecisionEngine(world, role="inline") as engine:
        assert engine.export_user(user) == []
        assert len(engine.export_user("someone_else")) == 1


def test_erase_from_table_drops_blanks_and_ignores_nulls() -> None:
    table = pa.table({
        "buyer_id": ["a", "b", None, "c"],
        "seller_id": pa.array(["b", "a", "a", None]).dictionary_encode(),
        "amount": [1.0, 2.0, 3.0, 4.0],
    })
    rule = TableRule(drop=("buyer_id",), blank=("seller_id", "absent_column"))
    cleaned, counts = erase_from_table(table, rule, ["a"])
    assert (counts.rows_removed, counts.ids_blanked) == (1, 2)
    assert cleaned.to_pydict() == {"buyer_id": ["b", None, "c"], "seller_id": [None, None, None],
                                   "amount": [2.0, 3.0, 4.0]}
    untouched, none = erase_from_table(table, rule, ["zzz"])
    assert (none.rows_removed, none.ids_blanked) == (0, 0)
    assert untouched.num_rows == 4


def _snapshot(settings: Settings) -> dict[str, bytes]:
    """The bytes of every data file (raw tables, feature partitions, latent traits)."""
    roots = (settings.paths.raw_dir, settings.paths.features_dir, settings.paths.latent_dir)
    return {str(p): p.read_bytes() for root in roots for p in Path(root).rglob("*.parquet")}


def test_a_file_that_cannot_be_rewritten_fails_before_anything_changes(
        world: Settings) -> None:
    user = seller_with_sales(world)
    # A partition that holds the user but is not readable Parquet any more.
    broken = world.paths.features_dir / "as_of=2099-01-01" / "features.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PAR1 not really parquet " + user.encode())
    before = _snapshot(world)
    with DecisionEngine(world, role="inline") as engine, open_store(world) as store:
        engine.decide(UserView(user_id=user), RequestContext())
        with pytest.raises(ErasureFailed) as failed:
            Eraser(world, store, decisions=engine).erase([user])
        assert failed.value.field == str(broken)
        assert "nothing was erased" in failed.value.message
        assert store.get(user) is not None and not store.is_erased(user)
        assert len(engine.export_user(user)) == 1
        engine.decide(UserView(user_id=user), RequestContext())  # the log is writable
    assert _snapshot(world) == before
    assert not list(Path(world.paths.data_dir).rglob("*.erasing"))


def test_a_failing_store_rolls_back_and_leaves_the_decision_log_writable(
        world: Settings) -> None:
    user = seller_with_sales(world)
    log_path = Path(world.paths.decision_log)
    with DecisionEngine(world, role="inline") as engine:
        engine.decide(UserView(user_id=user), RequestContext())
    before = _snapshot(world)
    log = DecisionLog(log_path)
    log.conn.execute("PRAGMA busy_timeout=200")
    blocker = sqlite3.connect(log_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the log's write lock
    try:
        with open_store(world) as store, pytest.raises(ErasureFailed) as failed:
            Eraser(world, store, decisions=log).erase([user])
        assert failed.value.field == "decision log"
        assert "already erased (and kept so): online store" in failed.value.message
        assert not log.conn.in_transaction  # rolled back, not left holding a transaction
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _snapshot(world) == before  # staged files discarded
    assert len(log.export_user(user)) == 1
    # The log is writable again, and the same erasure, run again, finishes.
    log.conn.execute("PRAGMA busy_timeout=30000")
    with DecisionEngine(world, role="inline") as engine:
        engine.decide(UserView(user_id="someone_else"), RequestContext())
    with open_store(world) as store:
        report = Eraser(world, store, decisions=log).erase([user])
    assert report.decisions == 1 and report.rows_removed > 0
    assert log.export_user(user) == [] and len(log.export_user("someone_else")) == 1
    assert log_path.with_name(log_path.name + "-wal").stat().st_size == 0
    assert user.encode() not in log_path.read_bytes()
    log.close()


def test_training_reads_no_erased_user_from_partitions_built_before(
        settings: Settings) -> None:
    as_of = date(2024, 5, 1)
    partition = settings.paths.features_dir / f"as_of={as_of}" / "features.parquet"
    partition.parent.mkdir(parents=True)
    pd.DataFrame({"user_id": ["keep_1", "gone_2", "keep_3"], "orders_30d": [1, 2, 3]}
                 ).to_parquet(partition)
    with open_store(settings) as store:
        store.erase("gone_2")  # the store only: the partition built before still holds them
    assert "gone_2" in set(pd.read_parquet(partition)["user_id"])
    assert list(load_features(settings, as_of)["user_id"]) == ["keep_1", "keep_3"]


def test_a_json_report_is_rewritten_without_the_user(tmp_path: Path) -> None:
    from features.erasure import stage_json

    report = tmp_path / "report.json"
    report.write_text(json.dumps({
        "alerts": [{"kind": "platinum_churn_risk", "user_ids": ["u000007", "u000008"]}],
        "by_user": {"u000007": 0.9, "u000070": 0.1},
        "rows": [{"user_id": "u000007", "tier": "gold"}, {"user_id": "u000009"}]}))
    staged = stage_json(report, ["u000007"])
    assert staged is not None and staged.counts.rows_removed == 3
    staged.commit()
    assert json.loads(report.read_text()) == {
        "alerts": [{"kind": "platinum_churn_risk", "user_ids": ["u000008"]}],
        "by_user": {"u000070": 0.1}, "rows": [{"user_id": "u000009"}]}
    assert stage_json(report, ["u000007"]) is None  # nothing left to erase
    report.write_text(json.dumps({"message": "u000008 churned"}))  # inside free text
    with pytest.raises(ValueError, match="inside a text value"):
        stage_json(report, ["u000008"])


def test_erasing_an_id_spelled_like_a_model_key_leaves_logged_models_whole(
        tmp_path: Path, settings: Settings) -> None:
    """An id equal to a spec key or a category (the fuzz test erased one) must not rewrite a
    logged model: its MLflow directory holds no user, and a rewrite broke every reload."""
    model = Path(settings.paths.mlruns_dir) / "artifacts" / "churn" / "models" / "m-1"
    (model / "artifacts").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    spec = {"calibrator": {"kind": "isotonic"}, "categories": {"top_category": ["art"]}}
    (model / "artifacts" / "model_spec.json").write_text(json.dumps(spec))
    run = Path(settings.paths.mlruns_dir) / "1" / "run" / "artifacts"
    run.mkdir(parents=True)
    (run / "scores.json").write_text(json.dumps({"by_user": {"art": 0.3, "u2": 0.1}}))
    report = erase_everywhere(settings, ["calibrator", "art"])
    assert json.loads((model / "artifacts" / "model_spec.json").read_text()) == spec
    assert json.loads((run / "scores.json").read_text()) == {"by_user": {"u2": 0.1}}
    assert report.rows_removed == 1


def test_erasure_never_opens_a_database_file_it_recognises_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing any descriptor of a SQLite file drops the process's POSIX locks on it, so the
    service's own connections would lose theirs (and another process could delete the WAL
    under them): known names are judged without opening them."""
    from serving import erasure

    opened: list[str] = []
    real_open = Path.open

    def spying_open(self: Path, *args, **kwargs):
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    names = ["online_store.sqlite", "decisions.sqlite-wal", "audit.sqlite-shm", "mlflow.db"]
    for name in names:
        (tmp_path / name).write_bytes(b"SQLite format 3\x00")
    (tmp_path / "renamed").write_bytes(b"SQLite format 3\x00")
    (tmp_path / "notes.bin").write_bytes(b"not a database")
    monkeypatch.setattr(Path, "open", spying_open)
    assert all(erasure._is_sqlite(tmp_path / name) for name in names)
    assert opened == []
    assert erasure._is_sqlite(tmp_path / "renamed")  # an unknown name: by its first bytes
    assert not erasure._is_sqlite(tmp_path / "notes.bin")
    assert opened == ["renamed", "notes.bin"]
