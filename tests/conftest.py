"""Shared fixtures. Integration tests (real servers, Spark) are marked ``integration``.

Every test runs in an empty working directory of its own with no ``NEXTBEST*`` or
``MLFLOW_TRACKING_URI`` variable set, so a developer's ``nextbest.yaml``, ``data/`` and
``mlruns/`` in the checkout never leak into a test, and no test sees another's files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextbest.config import Settings, load_settings, path_overrides


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose every path points into a fresh temporary directory."""
    env = path_overrides(tmp_path)
    return load_settings(None, environ=env)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep a developer's own settings and working directory out of the tests."""
    for key in list(os.environ):
        if key.startswith("NEXTBEST"):
            monkeypatch.delenv(key, raising=False)
    # MLflow's set_tracking_uri/set_registry_uri write these into os.environ: set then delete
    # them through monkeypatch so whatever a test leaves behind is undone after it.
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
