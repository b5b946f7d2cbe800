"""Shared fixtures. Integration tests (real servers, Spark) are marked ``integration``."""

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
def _no_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's own NEXTBEST_* variables out of the tests."""
    for key in list(os.environ):
        if key.startswith("NEXTBEST"):
            monkeypatch.delenv(key, raising=False)
