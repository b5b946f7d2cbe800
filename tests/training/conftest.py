"""Fixtures of the training tests: a small synthetic marketplace written once per session."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from features.synth import synthesize

SYNTH_USERS = 1500


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic marketplace (1,500 users, two years), written once per session."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(SYNTH_USERS, 730, 7, root / "raw", root / "latent", start=date(2024, 1, 1))
    return root / "raw"
