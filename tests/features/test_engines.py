"""The engines: raw table registration, and DuckDB and Spark giving the same features."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from features.build import build_features
from features.engines import connect, execute, register_tables, spark_session
from features.synth import synthesize
from nextbest.config import FeaturesConfig, Settings, load_settings
from nextbest.errors import ConfigError, DataError

AS_OF = date(2025, 9, 1)


def _orders(path: Path, **drop: bool) -> None:
    frame = pd.DataFrame({"order_id": ["a", "b"], "buyer_id": ["x", "y"],
                          "ts": pd.to_datetime(["2025-01-01", "2025-01-02"]).astype(
                              "datetime64[us]"),
                          "amount": [1.0, 2.0], "status": ["completed", "returned"]})
    frame.drop(columns=[c for c in drop if c in frame]).to_parquet(path / "orders.parquet")


def test_optional_columns_get_their_defaults(tmp_path: Path) -> None:
    _orders(tmp_path)
    con = connect("duckdb", FeaturesConfig())
    raw = register_tables(con, tmp_path)
    assert raw.users is None and raw.events is None and raw.listings is None
    orders = execute(con, raw.orders.order_by("order_id"))
    assert list(orders["status"]) == ["completed", "returned"]  # present: kept
    assert list(orders["coupon_used"]) == [False, False]        # absent: default
    assert orders["seller_id"].isna().all() and (orders["commission"] == 0).all()


def test_missing_required_column_is_refused_with_its_name(tmp_path: Path) -> None:
    _orders(tmp_path, amount=True)
    with pytest.raises(DataError, match="'amount'"):
        register_tables(connect("duckdb", FeaturesConfig()), tmp_path)


def test_unknown_engine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="polars"):
        connect("polars", FeaturesConfig())


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    synthesize(n_users=400, days=730, seed=11, raw_dir=root / "raw", latent_dir=root / "latent")
    return root / "raw"


@pytest.fixture(scope="module")
def spark_settings() -> Iterator[Settings]:
    """Settings for a small local Spark; the session lives for this module, then stops."""
    settings = load_settings(None, environ={"NEXTBEST__FEATURES__SPARK_MASTER": "local[2]",
                                            "NEXTBEST__FEATURES__SPARK_SHUFFLE_PARTITIONS": "2"})
    session = spark_session(settings.features)
    yield settings
    session.stop()


@pytest.mark.integration
def test_duckdb_and_spark_build_the_same_features(raw_dir: Path, tmp_path: Path,
                                                  spark_settings: Settings) -> None:
    """One Spark build (local[2]); the DuckDB build of the same data must match it."""
    settings = spark_settings
    duck = build_features(settings, AS_OF, engine="duckdb", raw_dir=raw_dir,
                          out_dir=tmp_path / "duckdb", refresh_store=False, progress=False)
    spark = build_features(settings, AS_OF, engine="spark", raw_dir=raw_dir,
                           out_dir=tmp_path / "spark", refresh_store=False, progress=False)
    assert len(duck) > 300 and duck["frequency_total"].sum() > 0 and duck["views_30d"].sum() > 0
    # The group features see real data here: joins, distinct counts and medians per user.
    assert duck["minutes_to_buy_median"].notna().sum() > 50
    assert duck["compare_items_per_purchase"].max() >= 4
    assert duck["payment_fingerprints_30d"].max() >= 3 and duck["fingerprint_accounts"].max() >= 3
    assert duck["ip_prefixes_30d"].max() >= 3 and duck["countries_30d"].max() >= 2
    assert duck["rating_mean_365d"].notna().sum() > 20 and duck["carted_not_bought_90d"].max() > 5
    assert duck["lifecycle_stage"].nunique() >= 4
    assert duck["is_student"].dtype == "boolean" and duck["is_student"].sum() > 10
    pd.testing.assert_frame_equal(duck.sort_values("user_id").reset_index(drop=True),
                                  spark.sort_values("user_id").reset_index(drop=True),
                                  check_exact=False, rtol=1e-9, atol=1e-9)
