"""The tests themselves: each runs away from the checkout's own data and config."""

from __future__ import annotations

import os
from pathlib import Path

from nextbest.config import load_settings

REPO = Path(__file__).resolve().parents[1]


def test_a_test_never_runs_in_the_checkout() -> None:
    # A developer's demo (nextbest.yaml, data/, mlruns/ in the checkout) must not reach here.
    assert not Path.cwd().resolve().is_relative_to(REPO)
    assert list(Path.cwd().iterdir()) == []
    settings = load_settings()
    assert not Path(settings.paths.store_path).resolve().is_relative_to(REPO)
    assert settings.mlflow_tracking_uri == "sqlite:///mlruns/mlflow.db"


def test_each_test_gets_its_own_working_directory(tmp_path: Path) -> None:
    Path("left_behind").write_text("x")  # the next test must not see it
    assert Path("left_behind").exists()


def test_nothing_was_left_behind_by_another_test() -> None:
    assert not Path("left_behind").exists()


def test_mlflow_addresses_set_by_a_test_do_not_outlive_it() -> None:
    import mlflow

    mlflow.set_tracking_uri("sqlite:////tmp/elsewhere.db")  # writes MLFLOW_TRACKING_URI
    assert os.environ.get("MLFLOW_TRACKING_URI") == "sqlite:////tmp/elsewhere.db"


def test_the_next_test_does_not_inherit_them() -> None:
    assert "MLFLOW_TRACKING_URI" not in os.environ
