"""The sentiment model: trained on the platform's rated review texts, it rates unrated ones,
and the features read those ratings."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from trainingkit import settings_at

from features.build import build_features
from nextbest.cli import main
from training.registry import configure
from training.sentiment import SCORES_FILE, review_texts

AS_OF = date(2025, 12, 1)


def test_unrated_review_texts_get_a_rating_that_reaches_the_features(
        synth_raw: Path, empty_store: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(synth_raw, tmp_path / "data/raw")
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store, tmp_path / "mlruns/mlflow.db")
    settings = settings_at(tmp_path)
    raw = tmp_path / "data/raw"

    assert main(["--config", str(tmp_path / "nextbest.yaml"), "train", "sentiment"]) == 0
    out = capsys.readouterr().out
    assert "registered sentiment version 1" in out
    client = configure(settings)
    [run] = client.search_runs([client.get_experiment_by_name("sentiment").experiment_id])
    # Far better than always saying the mean rating, on reviews it did not see.
    assert run.data.metrics["mae"] < run.data.metrics["baseline_mean_mae"] / 2
    assert run.data.metrics["accuracy"] > 0.5

    reviews = review_texts(raw)
    scores = pd.read_parquet(raw / SCORES_FILE)
    unrated = reviews[reviews["rating"].isna()].reset_index(drop=True)
    assert len(scores) == len(unrated) > 10
    assert scores["rating"].between(1, 5).all()
    # Negative texts are rated low, positive ones high.
    negative = unrated["text"].str.contains("disappointed|damaged|fake|not as described")
    assert scores["rating"][negative].mean() < 2.5 < scores["rating"][~negative].mean()

    # The features' mean rating of the year takes the given stars and the estimated ones.
    features = build_features(settings, AS_OF, refresh_store=False,
                              progress=False).set_index("user_id")
    since = pd.Timestamp(AS_OF) - pd.Timedelta(days=365)
    events = pd.read_parquet(raw / "events.parquet", columns=["user_id", "ts", "type", "rating"])
    given = events[(events["type"] == "review") & events["rating"].notna()]
    both = pd.concat([given[["user_id", "ts", "rating"]], scores])
    both = both[(both["ts"] >= since) & (both["ts"] < pd.Timestamp(AS_OF))]
    expected = both.groupby("user_id")["rating"].mean()
    got = features["rating_mean_365d"].dropna()
    assert set(got.index) == set(expected.index)
    assert np.allclose(got.loc[expected.index], expected, atol=1e-9)
    assert set(scores["user_id"]) - set(given["user_id"]) & set(expected.index)
