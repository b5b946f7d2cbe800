"""Labels at a cutoff, the cutoff plan and the validation cutoff rule."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from trainingkit import settings_at, write_events, write_orders

from nextbest.config import LabelConfig
from nextbest.errors import DataError
from training.dataset import plan_cutoffs, resolve_validation_cutoff
from training.labels import build_labels

T = date(2025, 1, 1)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw_dir = tmp_path / "raw"
    write_orders(raw_dir, [
        ("a", "2024-12-01 10:00", "completed"), ("a", "2025-01-01 00:00", "completed"),
        ("c", "2023-12-01 10:00", "completed"), ("c", "2025-01-05 10:00", "completed"),
        ("d", "2024-11-01 10:00", "completed"), ("d", "2025-02-15 10:00", "completed"),
        ("e", "2024-10-01 10:00", "completed"), ("e", "2025-01-05 10:00", "returned"),
        ("f", "2024-09-01 10:00", "cancelled"), ("f", "2025-04-01 00:00", "completed"),
        ("h", "2025-01-01 00:00", "completed"),
    ])
    write_events(raw_dir, [("b", "2024-06-01 12:00"), ("g", "2024-01-02 00:00"),
                           ("i", "2024-01-01 23:59")])
    return raw_dir


def test_population_is_users_active_in_the_year_before_the_cutoff(raw: Path) -> None:
    labels = build_labels(raw, T, LabelConfig())
    # c and i were last active before T - 365d; h is only active at T itself.
    assert labels["user_id"].tolist() == ["a", "b", "d", "e", "f", "g"]


def test_labels_use_completed_orders_in_the_horizon_only(raw: Path) -> None:
    labels = build_labels(raw, T, LabelConfig()).set_index("user_id")
    # a buys at exactly T; d at T+45d; e only returns; f buys at exactly T+90d (outside).
    assert labels["churn"].to_dict() == {"a": 0, "b": 1, "d": 0, "e": 1, "f": 1, "g": 1}
    assert labels["propensity"].to_dict() == {"a": 1, "b": 0, "d": 0, "e": 0, "f": 0, "g": 0}


def test_horizons_come_from_config(raw: Path) -> None:
    labels = build_labels(raw, T, LabelConfig(churn_horizon_days=30,
                                              propensity_horizon_days=60)).set_index("user_id")
    assert labels.loc["d", "churn"] == 1
    assert labels.loc["d", "propensity"] == 1


@pytest.mark.parametrize(("horizon", "expected_gap"), [(90, 90), (30, 30), (45, 60)])
def test_training_cutoffs_close_their_label_window_by_the_validation_cutoff(
        horizon: int, expected_gap: int) -> None:
    plan = plan_cutoffs(date(2025, 12, 1), horizon, n=3, step_days=30)
    assert plan.training == [date(2025, 12, 1) - timedelta(days=expected_gap + k * 30)
                             for k in (2, 1, 0)]
    assert all(t + timedelta(days=horizon) <= plan.validation for t in plan.training)
    assert plan.all()[-1] == plan.validation


def test_default_validation_cutoff_is_the_latest_with_a_complete_window(
        raw: Path, tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    # The latest row is 2025-04-01 00:00, so the data end (exclusive) is 2025-04-02.
    assert resolve_validation_cutoff(settings, "churn", raw, None) == date(2025, 1, 2)
    assert resolve_validation_cutoff(settings, "propensity", raw, None) == date(2025, 3, 3)
    assert resolve_validation_cutoff(settings, "churn", raw, date(2024, 12, 1)) == date(2024, 12, 1)
    with pytest.raises(DataError, match="label window ends after the data"):
        resolve_validation_cutoff(settings, "churn", raw, date(2025, 2, 1))


def test_label_windows_are_judged_on_the_orders_not_on_newer_events(tmp_path) -> None:
    # Events keep streaming in (the service exports them) while orders arrive in batches:
    # a window after the last orders is not complete, however recent the events are.
    import pandas as pd

    from nextbest.config import load_settings, path_overrides
    from training.dataset import resolve_validation_cutoff

    settings = load_settings(environ=path_overrides(tmp_path))
    raw = settings.paths.raw_dir
    (raw / "events").mkdir(parents=True)
    pd.DataFrame({"order_id": ["o1"], "buyer_id": ["u1"], "amount": [10.0],
                  "ts": pd.to_datetime(["2025-06-30 12:00"])}).to_parquet(raw / "orders.parquet")
    pd.DataFrame({"user_id": ["u1"], "type": ["view"],
                  "ts": pd.to_datetime(["2026-03-01 08:00"])}).to_parquet(
        raw / "events" / "part-1.parquet")
    cutoff = resolve_validation_cutoff(settings, "churn", raw, None)
    assert cutoff == date(2025, 7, 1) - timedelta(days=settings.training.labels.churn_horizon_days)
