"""Shared fixtures. Integration tests (real servers, Spark) are marked ``integration``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextbest.config import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose every path points into a fresh temporary directory."""
    env = {
        "NEXTBEST__PATHS__DATA_DIR": str(tmp_path / "data"),
        "NEXTBEST__PATHS__RAW_DIR": str(tmp_path / "data/raw"),
        "NEXTBEST__PATHS__LATENT_DIR": str(tmp_path / "data/latent"),
        "NEXTBEST__PATHS__FEATURES_DIR": str(tmp_path / "data/features"),
        "NEXTBEST__PATHS__STORE_PATH": str(tmp_path / "data/online_store.sqlite"),
        "NEXTBEST__PATHS__DECISION_LOG": str(tmp_path / "data/decisions.sqlite"),
        "NEXTBEST__PATHS__BANDIT_DIR": str(tmp_path / "data/bandit"),
        "NEXTBEST__PATHS__REPORTS_DIR": str(tmp_path / "reports"),
        "NEXTBEST__PATHS__MLRUNS_DIR": str(tmp_path / "mlruns"),
        "NEXTBEST__MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
    }
    return load_settings(None, environ=env)


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's own NEXTBEST_* variables out of the tests."""
    for key in list(os.environ):
        if key.startswith("NEXTBEST"):
            monkeypatch.delenv(key, raising=False)
