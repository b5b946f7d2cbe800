"""The registered model through MLflow's own tools: the pyfunc predicts what serving scores.

``mlflow.pyfunc.load_model("models:/churn@champion").predict(frame)`` must return the
calibrated probabilities that ``training.loader`` (the raw-Booster path behind ``/score``)
returns for the same rows, for a ``features.parquet`` frame, for online-store records and for
the input example logged with the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from trainingkit import FAST, Trained, settings_at

from features.build import load_features
from features.store import SqliteStore
from nextbest.errors import NotFound
from training.loader import load_champions
from training.model import raw_scores
from training.pyfunc import REQUIREMENTS
from training.registry import configure, experiment_id, load_version, register_version

COLUMNS = {"churn": "churn_probability", "propensity": "purchase_propensity"}


@pytest.mark.parametrize("name", ["churn", "propensity"])
def test_the_pyfunc_predicts_the_calibrated_probabilities_serving_scores(
        trained: Trained, name: str, tmp_path: Path) -> None:
    configure(trained.settings)
    as_of = trained.churn.plan.validation
    features = load_features(trained.settings, as_of)
    champions = load_champions(trained.settings)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")

    served = champions.score_frame(features)[COLUMNS[name]].to_numpy()
    predicted = model.predict(features)  # every features.parquet column; extras are ignored
    assert predicted.shape == (len(features),)
    assert np.allclose(predicted, served)
    loaded = getattr(champions, name)
    assert not np.allclose(predicted, raw_scores(loaded.booster, loaded.spec, features)), \
        "the pyfunc must apply the calibrator"

    with SqliteStore(tmp_path / "store.sqlite") as store:
        store.write(features, as_of)
        records = list(store.get_many(features["user_id"].head(50).tolist()).values())
    column = list(COLUMNS).index(name)
    one_by_one = [champions.score(record)[column] for record in records]
    assert np.allclose(model.predict(pd.DataFrame(records)), one_by_one)


def test_the_logged_input_example_and_signature_describe_the_feature_frame(
        trained: Trained) -> None:
    configure(trained.settings)
    model = mlflow.pyfunc.load_model("models:/churn@champion")
    spec = load_champions(trained.settings).churn.spec
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == spec.feature_names
    types = {col.name: col.type.name for col in schema.inputs}
    assert (types["frequency_30d"], types["recency_days"], types["is_seller"],
            types["region"]) == ("long", "double", "boolean", "string")
    example = model.input_example
    assert list(example.columns) == spec.feature_names and len(example) == 5
    assert np.allclose(model.predict(example),
                       load_champions(trained.settings).score_frame(example)["churn_probability"])


def test_the_pyfunc_loads_and_predicts_in_a_fresh_python(trained: Trained, tmp_path: Path) -> None:
    """What a data scientist runs: nothing of nextbest imported beforehand."""
    code = ("import json, mlflow\n"
            "model = mlflow.pyfunc.load_model('models:/churn@champion')\n"
            "print(json.dumps(model.predict(model.input_example).tolist()))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = trained.settings.mlflow_tracking_uri
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = json.loads(proc.stdout.strip().splitlines()[-1])
    configure(trained.settings)
    example = mlflow.pyfunc.load_model("models:/churn@champion").input_example
    expected = load_champions(trained.settings).score_frame(example)["churn_probability"]
    assert np.allclose(predicted, expected)


def test_a_version_without_the_calibrated_pyfunc_is_not_found(fresh_home: Path) -> None:
    """A bare LightGBM flavour (as registered before the pyfunc) cannot be served: the loader
    says to retrain instead of failing deep inside MLflow."""
    settings = settings_at(fresh_home, **FAST)
    client = configure(settings)
    rng = np.random.default_rng(0)
    booster = lgb.train({"objective": "binary", "verbosity": -1},
                        lgb.Dataset(rng.normal(size=(50, 3)), label=rng.integers(0, 2, 50)),
                        num_boost_round=2)
    with mlflow.start_run(experiment_id=experiment_id(settings, client, "churn")) as run:
        info = mlflow.lightgbm.log_model(booster, name="model", pip_requirements=REQUIREMENTS)
    version = register_version(client, "churn", info.model_uri, run.info.run_id, info.model_id)
    client.set_registered_model_alias("churn", "champion", version)
    with pytest.raises(NotFound, match="older nextbest.*nextbest train"):
        load_version(client, "churn", "champion")
