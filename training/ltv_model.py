"""The LTV model as scoring uses it: two LightGBM boosters and their spec, and the
registered MLflow pyfunc (``ltv``) that holds them. Training is :mod:`training.ltv`.

Light on purpose: serving loads it at start-up (:func:`training.loader.load_ltv_champion`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from nextbest.errors import NotFound
from training.labels import LTV_MODEL
from training.model import InputSpec
from training.pyfunc import REQUIREMENTS
from training.pyfunc import signature as probability_signature
from training.registry import CHAMPION, resolve_version

TARGETS = ("spend", "purchases")
# The boosters: purchase days in the window, and spend per purchase day where there was one.
PARTS = ("purchases", "value")


class LtvSpec(InputSpec):
    """What scoring needs besides the two boosters: inputs, horizon, iterations."""

    model_name: str = LTV_MODEL
    horizon_days: int
    iterations: dict[str, int]


class LtvModel:
    """The spend and purchase boosters with their spec: ``forecast(frame)``."""

    def __init__(self, boosters: dict[str, lgb.Booster], spec: LtvSpec):
        self.boosters, self.spec = boosters, spec

    def forecast(self, data: pd.DataFrame) -> pd.DataFrame:
        """Forecast ``spend`` and ``purchases`` over the horizon for every row of ``data``
        (columns of ``features.parquet`` or of online-store records)."""
        spend, purchases = self.forecast_matrix(self.spec.matrix(data))
        return pd.DataFrame({"spend": spend, "purchases": purchases}, index=data.index)

    def forecast_matrix(self, matrix: np.ndarray, *, num_threads: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
        """``(spend, purchases)`` for the rows of an input matrix (``spec.matrix``'s shape);
        serving calls it on one encoded row with one thread."""
        parts = {part: np.clip(self.boosters[part].predict(
            matrix, num_iteration=self.spec.iterations[part], num_threads=num_threads),
            0.0, None) for part in PARTS}
        return parts["purchases"] * parts["value"], parts["purchases"]


class LtvForecaster(mlflow.pyfunc.PythonModel):
    """The registered ``ltv`` pyfunc: ``predict(frame)`` -> frame of spend and purchases."""

    model: LtvModel

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        spec = LtvSpec.model_validate_json(Path(context.artifacts["spec"]).read_text())
        boosters = {p: lgb.Booster(model_file=context.artifacts[p]) for p in PARTS}
        self.model = LtvModel(boosters, spec)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.model.forecast(model_input)


def _signature(spec: LtvSpec, features: pd.DataFrame) -> ModelSignature:
    inputs = probability_signature(spec, features).inputs  # type: ignore[arg-type]
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", t) for t in TARGETS]))


def log_ltv_model(model: LtvModel, features: pd.DataFrame, workdir: Path) -> Any:
    """Log the ``ltv`` pyfunc into the active run (signature and input example from
    ``features``, rows of ``features.parquet``)."""
    artifacts = {}
    for part, booster in model.boosters.items():
        path = workdir / f"{part}.lgb"
        booster.save_model(str(path))
        artifacts[part] = str(path)
    spec_path = workdir / "ltv_spec.json"
    spec_path.write_text(model.spec.model_dump_json(indent=1))
    artifacts["spec"] = str(spec_path)
    return mlflow.pyfunc.log_model(
        name="model", python_model=LtvForecaster(), artifacts=artifacts,
        signature=_signature(model.spec, features),
        input_example=features[model.spec.feature_names].head(5),
        pip_requirements=REQUIREMENTS)


def load_ltv(client: MlflowClient, ref: str = CHAMPION,
             unless: str | None = None) -> tuple[str, LtvModel | None]:
    """Version ``ref`` (alias or number) of ``ltv`` and its model; NotFound if none. The
    model is None when the version is ``unless`` (the one already served: nothing to load)."""
    version = resolve_version(client, LTV_MODEL, ref)
    if unless is not None and str(version) == str(unless):
        return version, None
    try:
        python_model = mlflow.pyfunc.load_model(
            f"models:/{LTV_MODEL}/{version}").unwrap_python_model()
    except (MlflowException, KeyError, OSError) as exc:  # KeyError: another model's layout
        raise NotFound(f"ltv version {version} cannot be loaded ({exc})", field="model") from exc
    if not isinstance(python_model, LtvForecaster):
        raise NotFound(f"ltv version {version} is not a nextbest LTV model", field="model")
    return version, python_model.model
