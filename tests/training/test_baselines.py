"""Baselines: BG/NBD reproduces the published CDNOW fit; RFM and summaries on hand-made data."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifetimes.datasets import load_cdnow_summary
from trainingkit import write_events, write_orders

from nextbest.config import TrainingConfig
from training.baselines import (
    bgnbd_gg_forecast,
    bgnbd_scores,
    fit_bgnbd,
    purchase_summary,
    rfm_scores,
)


def test_bgnbd_reproduces_the_published_cdnow_parameters() -> None:
    """Fader, Hardie and Lee (2005): r=0.243, alpha=4.414, a=0.793, b=2.426."""
    cdnow = load_cdnow_summary()
    model = fit_bgnbd(cdnow.assign(user_id=cdnow.index.astype(str)),
                      TrainingConfig(bgnbd_penalizer=0.0, bgnbd_sample=10_000))
    p = model.params_
    assert p["r"] == pytest.approx(0.243, abs=0.005)
    assert p["alpha"] == pytest.approx(4.414, abs=0.05)
    assert p["a"] == pytest.approx(0.793, abs=0.01)
    assert p["b"] == pytest.approx(2.426, abs=0.05)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw_dir = tmp_path / "raw"
    write_orders(raw_dir, [
        ("a", "2024-10-01 10:00", "completed"), ("a", "2024-10-01 18:00", "completed"),
        ("a", "2024-11-01 10:00", "completed"), ("a", "2024-12-21 10:00", "completed"),
        ("a", "2024-12-25 10:00", "returned"), ("b", "2024-12-01 10:00", "completed"),
        ("a", "2025-01-03 10:00", "completed"),
    ])
    write_events(raw_dir, [("c", "2024-12-11 09:00")])
    return raw_dir


def test_purchase_summary_counts_repeat_days_before_the_cutoff(raw: Path) -> None:
    s = purchase_summary(raw, date(2025, 1, 1)).set_index("user_id")
    # a: purchase days 10-01, 11-01, 12-21 (two orders on 10-01 are one day; the return
    # and the order after the cutoff do not count).
    # Gamma-Gamma's input: the mean spend of the repeat days (the first day left out).
    assert s.loc["a"].to_dict() == {"frequency": 2.0, "recency": 81.0, "T": 92.0,
                                    "monetary_value": 10.0}
    assert s.loc["b"].to_dict() == {"frequency": 0.0, "recency": 0.0, "T": 31.0,
                                    "monetary_value": 0.0}
    # c never bought: observed since its first event.
    assert s.loc["c"].to_dict() == {"frequency": 0.0, "recency": 0.0, "T": 21.0,
                                    "monetary_value": 0.0}


def test_bgnbd_gamma_gamma_forecast_is_purchases_times_spend_per_purchase(raw: Path) -> None:
    users = pd.Series(["a", "b", "unknown"])
    config = TrainingConfig(bgnbd_sample=1000)
    forecast = bgnbd_gg_forecast(raw, date(2025, 1, 1), users, 30, config)
    churn = bgnbd_scores(raw, date(2025, 1, 1), users, 30, "churn", config)
    # The purchases are the BG/NBD expectation the churn baseline turns into exp(-E).
    np.testing.assert_allclose(np.exp(-forecast["purchases"]), churn)
    per_purchase = forecast["spend"] / forecast["purchases"]
    assert (per_purchase > 0).all()
    # Users without a repeat purchase get the population's mean spend per purchase.
    assert per_purchase[1] == pytest.approx(per_purchase[2])


def test_bgnbd_churn_and_propensity_are_complements(raw: Path) -> None:
    users = pd.Series(["a", "b", "c", "unknown"])
    config = TrainingConfig(bgnbd_sample=1000)
    churn = bgnbd_scores(raw, date(2025, 1, 1), users, 30, "churn", config)
    prop = bgnbd_scores(raw, date(2025, 1, 1), users, 30, "propensity", config)
    np.testing.assert_allclose(churn + prop, 1.0)
    assert ((churn > 0) & (churn < 1)).all()
    # The frequent, recent buyer is the least likely to churn.
    assert churn[0] == churn.min()


def test_rfm_heuristic_looks_up_the_training_rate_of_each_cell() -> None:
    train = pd.DataFrame({
        "recency_days": [3.0] * 40 + [200.0] * 40,
        "frequency_total": [8.0] * 40 + [1.0] * 40,
        "label": [0] * 36 + [1] * 4 + [1] * 36 + [0] * 4,
    })
    valid = pd.DataFrame({"recency_days": [2.0, 250.0, np.nan],
                          "frequency_total": [9.0, 1.0, 0.0]})
    scores = rfm_scores(train, valid)
    prior = 0.5
    assert scores[0] == pytest.approx((4 + 10 * prior) / 50)
    assert scores[1] == pytest.approx((36 + 10 * prior) / 50)
    assert scores[2] == pytest.approx(prior)  # a cell never seen in training
