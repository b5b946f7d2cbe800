"""Erasure everywhere: raw tables, feature partitions, latent traits, store and decision log,
and rebuilds that do not bring the user back."""

from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from decisions.engine import DecisionEngine
from decisions.policy import RequestContext, UserView
from features.build import build_features
from features.erasure import RAW_RULES, TableRule, erase_from_table, erase_users
from features.store import open_store
from features.synth import synthesize
from nextbest.cli import main as cli_main
from nextbest.config import Settings
from serving.erasure import erase_everywhere

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
