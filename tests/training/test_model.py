"""Model encoding (train and serve agree), calibrators and the validation split."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression

from training.model import (
    Calibrator,
    ModelSpec,
    category_lists,
    choose_calibrator,
    fit_isotonic,
    fit_sigmoid,
    split_validation,
)


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east", None], size=n)
    x = rng.normal(size=n)
    logit = 1.5 * x + np.where(region == "north", 1.5, 0.0)
    return pd.DataFrame({"x": x, "region": pd.array(region, dtype="string"),
                         "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)})


def _spec(train: pd.DataFrame) -> ModelSpec:
    return ModelSpec(model_name="churn", feature_names=["x", "region"],
                     categories=category_lists(train, ["region"]),
                     calibrator=Calibrator(kind="sigmoid"), best_iteration=0, event="churn")


def test_numpy_matrix_predicts_like_the_category_frame_lightgbm_trained_on() -> None:
    train = _frame(2000, seed=1)
    spec = _spec(train)
    data = lgb.Dataset(spec.frame(train), label=train["label"], categorical_feature=["region"])
    booster = lgb.train({"objective": "binary", "verbosity": -1, "min_data_per_group": 5,
                         "cat_smooth": 1}, data, num_boost_round=20)
    test = _frame(300, seed=2)
    test.loc[0, "region"] = "unseen-region"
    np.testing.assert_allclose(booster.predict(spec.matrix(test)),
                               booster.predict(spec.frame(test)))
    # The category code is the position in the saved list; unknown values become NaN.
    assert spec.categories["region"] == ["east", "north", "south"]
    matrix = spec.matrix(test)
    assert np.isnan(matrix[0, 1])
    north = (test["region"] == "north").fillna(False).to_numpy()
    assert (matrix[north, 1] == 1.0).all()


def test_isotonic_table_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    raw = rng.random(500)
    y = (rng.random(500) < raw**2).astype(int)
    table = fit_isotonic(raw, y)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(raw, y)
    grid = np.linspace(-0.1, 1.1, 97)
    np.testing.assert_allclose(table.transform(grid), iso.predict(grid))


def test_sigmoid_recovers_a_platt_mapping() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.99, 20000)
    true = 1 / (1 + np.exp(-(0.5 * np.log(raw / (1 - raw)) - 1.0)))
    y = (rng.random(raw.size) < true).astype(int)
    cal = fit_sigmoid(raw, y)
    assert cal.a == pytest.approx(0.5, abs=0.05)
    assert cal.b == pytest.approx(-1.0, abs=0.05)
    assert Calibrator.model_validate_json(cal.model_dump_json()) == cal


def test_choose_calibrator_prefers_isotonic_for_a_step_shaped_truth() -> None:
    rng = np.random.default_rng(3)
    raw = rng.random(6000)
    y = (rng.random(raw.size) < np.where(raw > 0.5, 0.9, 0.1)).astype(int)
    cal, losses = choose_calibrator(raw, y, seed=0)
    assert cal.kind == "isotonic"
    assert losses["isotonic"] < losses["sigmoid"]


def test_validation_split_is_seeded_and_about_half() -> None:
    users = pd.Series([f"u{i}" for i in range(4000)])
    first = split_validation(users, seed=0)
    assert (first == split_validation(users, seed=0)).all()
    assert 0.45 < first.mean() < 0.55
    assert (first != split_validation(users, seed=1)).any()
