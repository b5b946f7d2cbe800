"""Seller churn: its own population and label, the recency-of-last-listing baseline, and
the same pipeline (MLflow run, registry, champion gate) as the buyer models."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from trainingkit import FAST, WORSE, settings_at

from nextbest.config import LabelConfig
from nextbest.errors import DataError
from training.labels import build_seller_labels
from training.pipeline import train
from training.registry import CHAMPION, configure


def _quiet(_: str) -> None:
    pass


def test_seller_labels_follow_listings_after_the_cutoff(synth_raw: Path) -> None:
    cutoff = date(2025, 6, 1)
    labels = build_seller_labels(synth_raw, cutoff, LabelConfig()).set_index("user_id")
    listings = pd.read_parquet(synth_raw / "listings.parquet")
    start, end = pd.Timestamp(cutoff), pd.Timestamp(cutoff + timedelta(days=90))
    listed_after = set(listings.loc[(listings["listed_ts"] >= start)
                                    & (listings["listed_ts"] < end), "seller_id"])
    assert len(labels) > 50 and 0.1 < labels["seller_churn"].mean() < 0.9
    for user, row in labels.iterrows():
        assert row["seller_churn"] == (user not in listed_after), user
    # The population consigned in the year before the cutoff; buyers are not in it.
    year = listings[(listings["listed_ts"] < start)
                    & (listings["listed_ts"] >= start - pd.Timedelta(days=365))]
    assert set(year["seller_id"]) <= set(labels.index)


def test_seller_labels_need_listings(tmp_path: Path, synth_raw: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "orders.parquet").write_bytes((synth_raw / "orders.parquet").read_bytes())
    with pytest.raises(DataError, match="listings"):
        build_seller_labels(raw, date(2025, 6, 1), LabelConfig())


def test_seller_churn_trains_registers_and_gates(fresh_home: Path) -> None:
    first = train(settings_at(fresh_home, **FAST), "seller_churn", say=_quiet)
    assert first.model_name == "seller_churn" and first.version == "1"
    assert set(first.baselines) == {"recency"}
    assert first.metrics.roc_auc > first.baselines["recency"].roc_auc
    assert first.decision.promoted  # beats its baseline, no champion before it
    client = configure(settings_at(fresh_home, **FAST))
    assert str(client.get_model_version_by_alias("seller_churn", CHAMPION).version) == "1"
    run = mlflow.get_run(first.run_id)
    assert run.data.params["horizon_days"] == "90"
    assert "baseline_recency_roc_auc" in run.data.metrics
    assert "baseline_rfm_roc_auc" not in run.data.metrics

    worse = train(settings_at(fresh_home, **WORSE), "seller_churn", as_of=first.plan.validation,
                  say=_quiet)
    assert worse.version == "2" and not worse.decision.promoted
    assert worse.decision.champion_version == "1"
    assert str(client.get_model_version_by_alias("seller_churn", CHAMPION).version) == "1"
