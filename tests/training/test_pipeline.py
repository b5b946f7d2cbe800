"""End to end on a small synthetic marketplace: train, log, register, gate, list, load, score.

Real MLflow (a temporary SQLite store), real LightGBM, real feature builds; few boosting
rounds and two cutoffs keep it small.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from trainingkit import config_file, settings_at

from features.build import available_as_of, load_features
from nextbest.cli import main
from nextbest.config import Settings
from training.loader import load_champions
from training.pipeline import TrainResult, train
from training.registry import configure

FAST = {"num_boost_round": 40, "early_stopping_rounds": 10, "cutoffs": 2}
WORSE = {**FAST, "num_boost_round": 1, "num_leaves": 2}
METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile", "ece")


@pytest.fixture(scope="module")
def home(synth_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("home")
    shutil.copytree(synth_raw, root / "data/raw")
    return root


@pytest.fixture(scope="module")
def settings(home: Path) -> Settings:
    return settings_at(home, **FAST)


@pytest.fixture(scope="module")
def first(settings: Settings) -> TrainResult:
    return train(settings, "churn", say=lambda _: None)


@pytest.fixture(scope="module")
def client(settings: Settings, first: TrainResult) -> MlflowClient:
    return configure(settings)


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_first_run_registers_a_champion_with_every_metric(first: TrainResult,
                                                          client: MlflowClient) -> None:
    assert first.version == "1"
    assert _aliases(client, "churn") == {"champion": "1", "challenger": "1"}
    run = client.get_run(first.run_id)
    for prefix in ("", "baseline_rfm_", "baseline_bgnbd_"):
        for name in METRICS:
            assert np.isfinite(run.data.metrics[f"{prefix}{name}"]), f"{prefix}{name}"
    assert run.data.metrics["roc_auc"] == pytest.approx(first.metrics.roc_auc)
    assert len(run.data.params["data_fingerprint"]) == 64
    assert run.data.params["training_cutoffs"].count(",") == 1
    assert client.get_experiment(first.experiment_id).name == "churn"


def test_first_run_logs_plots_predictions_and_the_model(first: TrainResult,
                                                        client: MlflowClient,
                                                        tmp_path: Path) -> None:
    names = {a.path for a in client.list_artifacts(first.run_id)}
    plots = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert {"validation_predictions.csv", "features.json", "cutoffs.json"} <= names
    assert plots == {f"plots/{n}.png" for n in ("roc", "calibration", "lift",
                                                "feature_importance")}
    local = client.download_artifacts(first.run_id, "validation_predictions.csv", str(tmp_path))
    predictions = pd.read_csv(local)
    assert list(predictions.columns[:3]) == ["user_id", "label", "probability"]
    assert len(predictions) == first.n_valid
    assert predictions["probability"].between(0, 1).all()
    assert client.get_model_version("churn", "1").run_id == first.run_id
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/churn/1",
                                                         dst_path=str(tmp_path / "m")))
    assert {"model.lgb", "MLmodel", "input_example.json"} <= {p.name for p in model_dir.iterdir()}
    assert (model_dir / "extra_files" / "model_spec.json").is_file()
    assert "signature" in (model_dir / "MLmodel").read_text()


def test_a_worse_challenger_leaves_the_champion(settings: Settings, first: TrainResult,
                                                client: MlflowClient, home: Path) -> None:
    worse_training = settings.training.model_copy(update=WORSE)
    worse = train(settings.model_copy(update={"training": worse_training}), "churn",
                  say=lambda _: None)
    assert worse.version == "2"
    assert not worse.decision.promoted
    # The champion was re-scored on the same evaluation rows: it reproduces its own number.
    assert worse.decision.champion_roc_auc == pytest.approx(first.metrics.roc_auc)
    assert worse.decision.challenger_roc_auc < worse.decision.champion_roc_auc
    assert _aliases(client, "churn") == {"champion": "1", "challenger": "2"}
    assert client.get_run(worse.run_id).data.tags["gate_decision"] == "kept_champion"


def test_cli_tie_force_list_and_promote(home: Path, first: TrainResult, client: MlflowClient,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    same = home / "nextbest.yaml"  # the settings of the first run: the same model again
    assert main(["--config", str(same), "train", "churn"]) == 0
    assert "(not better)" in capsys.readouterr().out
    assert _aliases(client, "churn")["champion"] == "1"
    cfg = config_file(home, "worse.yaml", **WORSE)
    assert main(["--config", str(cfg), "train", "churn", "--force"]) == 0
    out = capsys.readouterr().out
    assert "--force" in out and "[6/6]" in out
    aliases = _aliases(client, "churn")
    assert aliases["champion"] == aliases["challenger"] != "1"
    assert main(["--config", str(cfg), "models", "promote", "churn", "1"]) == 0
    assert _aliases(client, "churn")["champion"] == "1"
    assert main(["--config", str(cfg), "models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "champion" in listing and "challenger" in listing
    assert main(["--config", str(cfg), "models", "promote", "churn", "99"]) == 3


def test_tuned_propensity_and_the_loader(settings: Settings, first: TrainResult,
                                         client: MlflowClient) -> None:
    """Optuna trials are nested runs; the loader scores a store record like the batch path."""
    tuned = train(settings, "propensity", as_of=first.plan.validation, cutoffs=1, tune=2,
                  say=lambda _: None)
    trials = client.search_runs([tuned.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{tuned.run_id}'")
    assert len(trials) == 2
    assert all("calibration_half_roc_auc" in t.data.metrics for t in trials)
    models = load_champions(settings)
    assert models.versions == {"churn": "1", "propensity": "1"}
    features = load_features(settings, first.plan.validation).head(20)
    record = features.iloc[3].to_dict() | {"as_of": str(first.plan.validation), "tags": []}
    churn, propensity = models.score(record)
    assert 0 < churn < 1 and 0 < propensity < 1
    batch = models.score_frame(features)
    assert batch.loc[3, "churn_probability"] == pytest.approx(churn)
    assert batch.loc[3, "purchase_propensity"] == pytest.approx(propensity)
    # Missing fields are missing values, not errors.
    assert all(0 < p < 1 for p in models.score({"recency_days": 5.0}))


def test_an_orders_only_log_trains_end_to_end(synth_raw: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A platform's own order export (four columns, its own names) through `data import`."""
    orders = pd.read_parquet(synth_raw / "orders.parquet")
    export = orders[orders["status"] == "completed"].rename(columns={
        "order_id": "oid", "buyer_id": "customer", "ts": "order_date", "amount": "total"})
    export[["oid", "customer", "order_date", "total"]].to_csv(tmp_path / "export.csv",
                                                              index=False)
    cfg = config_file(tmp_path, **{**FAST, "cutoffs": 1})
    assert main(["--config", str(cfg), "data", "import", "orders", str(tmp_path / "export.csv"),
                 "--map", "order_id=oid,buyer_id=customer,ts=order_date,amount=total"]) == 0
    assert sorted(p.name for p in (tmp_path / "data/raw").glob("*.parquet")) == ["orders.parquet"]
    assert main(["--config", str(cfg), "train", "churn"]) == 0
    assert "champion" in capsys.readouterr().out
    settings = settings_at(tmp_path, **{**FAST, "cutoffs": 1})
    models = configure(settings).get_registered_model("churn")
    assert str(models.aliases["champion"]) == "1"
    validation = load_features(settings, max(available_as_of(settings)))
    assert validation["tenure_days"].isna().all() and validation["days_since_login"].isna().all()
