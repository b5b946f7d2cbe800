"""Validation metrics on inputs whose values are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nextbest.errors import DataError
from training.metrics import evaluate, expected_calibration_error, lift_top_decile


def test_perfect_ranking_scores_one() -> None:
    y = np.array([0, 0, 0, 1, 1])
    m = evaluate(y, np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert m.roc_auc == 1.0
    assert m.pr_auc == 1.0


def test_reversed_ranking_scores_zero_auc() -> None:
    assert evaluate(np.array([1, 0]), np.array([0.2, 0.8])).roc_auc == 0.0


def test_log_loss_and_brier_of_a_constant_forecast() -> None:
    y = np.array([1, 0, 0, 0])
    m = evaluate(y, np.full(4, 0.25))
    assert m.log_loss == pytest.approx(-(math.log(0.25) + 3 * math.log(0.75)) / 4)
    assert m.brier == pytest.approx((0.75**2 + 3 * 0.25**2) / 4)


def test_lift_in_top_decile() -> None:
    # 20 rows, 4 events (rate 0.2); the top 2 rows hold 1 event -> rate 0.5 -> lift 2.5.
    y = np.zeros(20)
    y[[0, 5, 6, 7]] = 1
    p = np.linspace(1, 0, 20)
    assert lift_top_decile(y, p) == pytest.approx(2.5)


def test_expected_calibration_error() -> None:
    y = np.array([1, 0, 1, 0])
    assert expected_calibration_error(y, np.full(4, 0.5)) == pytest.approx(0.0)
    # Half the rows at p=0.9 with rate 1 (gap 0.1), half at p=0.3 with rate 0 (gap 0.3).
    y2 = np.array([1, 1, 0, 0])
    p2 = np.array([0.9, 0.9, 0.3, 0.3])
    assert expected_calibration_error(y2, p2) == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)


def test_single_class_labels_are_refused() -> None:
    with pytest.raises(DataError, match="both classes"):
        evaluate(np.ones(3), np.full(3, 0.5))


def test_prefixed_names_match_the_logged_metric_names() -> None:
    m = evaluate(np.array([0, 1]), np.array([0.3, 0.6]))
    assert set(m.prefixed("baseline_rfm_")) == {
        "baseline_rfm_roc_auc", "baseline_rfm_pr_auc", "baseline_rfm_log_loss",
        "baseline_rfm_brier", "baseline_rfm_lift_top_decile", "baseline_rfm_ece"}
