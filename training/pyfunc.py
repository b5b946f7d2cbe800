"""The registered model as an MLflow pyfunc: a feature frame in, calibrated probabilities out.

Every version of ``churn`` and ``propensity`` is an MLflow ``python_function`` model whose
python model is :class:`CalibratedBooster` and whose two artifacts are the raw LightGBM
booster (``model.lgb``) and its :class:`~training.model.ModelSpec` (feature order, category
lists, calibrator). MLflow's own tools therefore work on it::

    mlflow.pyfunc.load_model("models:/churn@champion").predict(features)

returns the calibrated probability of the event for each row of ``features``: a frame with
the columns of ``features.parquet`` or of online-store records (docs/CONTRACT.md); columns
the model does not use are ignored. The signature types each input column as
``features.parquet`` stores it (counts ``long``, amounts and days ``double``, ``is_seller``
``boolean``, categories ``string``) and the input example is five rows of that file.

Serving reads the same artifacts through :func:`load` and keeps only the booster and the spec,
which it calls on numpy rows (see ``training.loader``); MLflow's pandas schema check costs
milliseconds per call. The python model is pickled by reference to this module, so loading
needs nextbest installed (as it is wherever the model is trained or served).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema, TensorSpec

from nextbest.errors import NotFound
from training.model import ModelSpec, predict

BOOSTER_FILE = "model.lgb"
SPEC_FILE = "model_spec.json"
EXAMPLE_ROWS = 5
# Given explicitly: inferring them starts a child Python that reloads the model (~15 s).
REQUIREMENTS = [f"lightgbm=={lgb.__version__}", f"mlflow=={mlflow.__version__}",
                f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


class CalibratedBooster(mlflow.pyfunc.PythonModel):
    """A LightGBM booster and its spec: ``predict(frame)`` -> calibrated probabilities."""

    booster: lgb.Booster
    spec: ModelSpec

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Read the booster and the spec from the model's artifacts."""
        self.booster = lgb.Booster(model_file=context.artifacts["booster"])
        self.spec = ModelSpec.model_validate_json(Path(context.artifacts["spec"]).read_text())

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Calibrated probability of the event for every row, shape ``(len(model_input),)``."""
        return predict(self.booster, self.spec, model_input)


def _column_type(dtype: Any) -> str:
    """The MLflow type of a ``features.parquet`` column of pandas dtype ``dtype``."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "long"
    if pd.api.types.is_numeric_dtype(dtype):
        return "double"
    return "string"


def signature(spec: ModelSpec, features: pd.DataFrame) -> ModelSignature:
    """Every model input, required and typed as in ``features``; a float vector out."""
    inputs = [ColSpec("string" if name in spec.categories else _column_type(features[name].dtype),
                      name) for name in spec.feature_names]
    return ModelSignature(inputs=Schema(inputs),
                          outputs=Schema([TensorSpec(np.dtype(np.float64), (-1,))]))


def log_model(booster: lgb.Booster, spec: ModelSpec, features: pd.DataFrame,
              workdir: Path) -> ModelInfo:
    """Log the pyfunc into the active run; ``features`` are ``features.parquet`` rows whose
    dtypes type the signature and whose first rows are the input example."""
    booster_path, spec_path = workdir / BOOSTER_FILE, workdir / SPEC_FILE
    booster.save_model(str(booster_path))
    spec_path.write_text(spec.model_dump_json(indent=1))
    return mlflow.pyfunc.log_model(
        name="model", python_model=CalibratedBooster(),
        artifacts={"booster": str(booster_path), "spec": str(spec_path)},
        signature=signature(spec, features),
        input_example=features[spec.feature_names].head(EXAMPLE_ROWS),
        pip_requirements=REQUIREMENTS)


def load(model_uri: str) -> CalibratedBooster:
    """The python model behind ``model_uri`` (booster and spec loaded).

    :class:`~nextbest.errors.NotFound` when the version holds no such model (it was
    registered by a nextbest that logged the bare LightGBM flavour): retraining fixes it.
    """
    try:
        model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except MlflowException:
        model = None
    if not isinstance(model, CalibratedBooster):
        raise NotFound(f"{model_uri} is not a nextbest calibrated model (registered by an "
                       "older nextbest?); train a new version with `nextbest train`",
                       field="model")
    return model
