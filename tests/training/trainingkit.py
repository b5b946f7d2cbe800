"""Helpers of the training tests: settings rooted in a directory, hand-made raw tables.

A plain module (not conftest) so tests can import it; the name is unique across tests/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from nextbest.config import Settings, load_settings
from training.pipeline import TrainResult

# Few boosting rounds and two cutoffs keep a training run at a few seconds.
FAST = {"num_boost_round": 40, "early_stopping_rounds": 10, "cutoffs": 2}
# One stump: below the FAST model and below both baselines on the synthetic data.
WORSE = {**FAST, "num_boost_round": 1, "num_leaves": 2}

MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def mlflow_environment_kept() -> Iterator[None]:
    """Put ``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI`` back as they were on exit.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` (called by ``training.registry.configure``)
    also export the URI to ``os.environ``, where every later test and child process would
    inherit one test's registry.
    """
    saved = {key: os.environ.get(key) for key in MLFLOW_URI_VARIABLES}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Trained:
    """A home whose registry holds version 1 of churn and of propensity, both champions."""

    home: Path
    settings: Settings
    churn: TrainResult
    propensity: TrainResult


def config_file(root: Path, name: str = "nextbest.yaml", **training: object) -> Path:
    """A YAML config whose every path lives under ``root``; ``training`` overrides that section."""
    data = {
        "paths": {"data_dir": str(root / "data"), "raw_dir": str(root / "data/raw"),
                  "latent_dir": str(root / "data/latent"),
                  "features_dir": str(root / "data/features"),
                  "store_path": str(root / "data/online_store.sqlite"),
                  "mlruns_dir": str(root / "mlruns")},
        "mlflow_tracking_uri": f"sqlite:///{root}/mlruns/mlflow.db",
        "training": training,
    }
    path = root / name
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def settings_at(root: Path, **training: object) -> Settings:
    """Settings loaded from :func:`config_file` (ignoring the environment)."""
    return load_settings(config_file(root, **training), environ={})


def write_orders(raw_dir: Path, rows: list[tuple[str, str, str]]) -> None:
    """Write ``(buyer_id, ts, status)`` rows as a contract-shaped orders table."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["buyer_id", "ts", "status"])
    frame.insert(0, "order_id", [f"o{i}" for i in range(len(frame))])
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    frame["amount"] = 10.0
    frame.to_parquet(raw_dir / "orders.parquet", index=False)


def write_events(raw_dir: Path, rows: list[tuple[str, str]]) -> None:
    """Write ``(user_id, ts)`` rows as a contract-shaped events table of views."""
    frame = pd.DataFrame(rows, columns=["user_id", "ts"])
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    frame["type"] = "view"
    frame.to_parquet(raw_dir / "events.parquet", index=False)
