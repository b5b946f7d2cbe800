"""Fixtures of the training tests: a small synthetic marketplace and registries built from it.

Test order never matters: ``trained`` is one registry that no test changes (tests that train,
promote or register use ``fresh_home``, a registry of their own).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from trainingkit import FAST, Trained, mlflow_environment_kept, settings_at

from features.synth import synthesize
from training.pipeline import train
from training.registry import configure

SYNTH_USERS = 1500


@pytest.fixture(autouse=True)
def _mlflow_environment_kept() -> Iterator[None]:
    """No training test leaves its registry in the environment of later tests."""
    with mlflow_environment_kept():
        yield


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic marketplace (1,500 users, two years), written once per session."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(SYNTH_USERS, 730, 7, root / "raw", root / "latent", start=date(2024, 1, 1))
    return root / "raw"


@pytest.fixture(scope="session")
def trained(synth_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Churn and propensity trained once (``FAST``, same validation cutoff) on ``synth_raw``.

    Read-only: a test that changes a registry uses ``fresh_home`` instead.
    """
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(synth_raw, root / "data/raw")
    settings = settings_at(root, **FAST)
    with mlflow_environment_kept():
        churn = train(settings, "churn", say=lambda _: None)
        propensity = train(settings, "propensity", as_of=churn.plan.validation,
                           say=lambda _: None)
    return Trained(home=root, settings=settings, churn=churn, propensity=propensity)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema created and nothing in it. Creating the schema
    (alembic migrations) takes seconds; a copy of this file takes milliseconds."""
    root = tmp_path_factory.mktemp("empty_store")
    with mlflow_environment_kept():
        configure(settings_at(root)).search_experiments()
    return root / "mlruns" / "mlflow.db"


@pytest.fixture
def fresh_home(trained: Trained, empty_store: Path, tmp_path: Path) -> Path:
    """A directory with the raw data and built features of ``trained`` and an empty registry."""
    for part in ("raw", "features"):
        shutil.copytree(trained.home / "data" / part, tmp_path / "data" / part)
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store, tmp_path / "mlruns" / "mlflow.db")
    return tmp_path
