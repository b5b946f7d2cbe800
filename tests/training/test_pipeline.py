"""End to end on a small synthetic marketplace: train, log, register, gate, list, load, score.

Real MLflow (a temporary SQLite store), real LightGBM, real feature builds; few boosting
rounds and two cutoffs keep it small. Tests that only read use the shared ``trained``
registry; every test that trains, promotes or registers has a registry of its own
(``fresh_home``), so the tests pass in any order and alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from trainingkit import FAST, WORSE, Trained, config_file, settings_at

from features.build import available_as_of, load_features
from nextbest.cli import main
from nextbest.errors import NotFound
from training.loader import load_champions
from training.pipeline import train
from training.registry import configure

METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile", "ece")


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def _quiet(_: str) -> None:
    pass


def test_first_run_registers_a_champion_with_every_metric(trained: Trained) -> None:
    first, client = trained.churn, configure(trained.settings)
    assert first.version == "1"
    assert _aliases(client, "churn") == {"champion": "1", "challenger": "1"}
    run = client.get_run(first.run_id)
    for prefix in ("", "baseline_rfm_", "baseline_bgnbd_"):
        for name in METRICS:
            assert np.isfinite(run.data.metrics[f"{prefix}{name}"]), f"{prefix}{name}"
    assert run.data.metrics["roc_auc"] == pytest.approx(first.metrics.roc_auc)
    assert len(run.data.params["data_fingerprint"]) == 64
    assert run.data.params["training_cutoffs"].count(",") == 1
    assert run.data.params["tune_trials"] == "0"
    assert run.info.run_name == f"churn-{first.plan.validation}"
    assert client.get_experiment(first.experiment_id).name == "churn"


def test_first_run_logs_plots_predictions_and_the_model(trained: Trained, tmp_path: Path) -> None:
    first, client = trained.churn, configure(trained.settings)
    names = {a.path for a in client.list_artifacts(first.run_id)}
    plots = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert {"validation_predictions.csv", "features.json", "cutoffs.json"} <= names
    assert plots == {f"plots/{n}.png" for n in ("roc", "calibration", "lift",
                                                "feature_importance")}
    local = client.download_artifacts(first.run_id, "validation_predictions.csv", str(tmp_path))
    predictions = pd.read_csv(local)
    assert list(predictions.columns[:3]) == ["user_id", "label", "probability"]
    assert len(predictions) == first.n_valid
    assert client.get_model_version("churn", "1").run_id == first.run_id


def test_a_worse_challenger_leaves_the_champion(fresh_home: Path) -> None:
    settings = settings_at(fresh_home, **FAST)
    first = train(settings, "churn", say=_quiet)
    worse = train(settings_at(fresh_home, **WORSE), "churn", say=_quiet)
    assert worse.version == "2"
    assert not worse.decision.promoted
    # The champion was re-scored on the same evaluation rows: it reproduces its own number.
    assert worse.decision.champion_roc_auc == pytest.approx(first.metrics.roc_auc)
    assert worse.decision.challenger_roc_auc < worse.decision.champion_roc_auc
    client = configure(settings)
    assert _aliases(client, "churn") == {"champion": "1", "challenger": "2"}
    assert client.get_run(worse.run_id).data.tags["gate_decision"] == "kept_champion"


def test_cli_tie_force_list_and_promote(fresh_home: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    same = config_file(fresh_home, **FAST)
    client = configure(settings_at(fresh_home, **FAST))
    assert main(["--config", str(same), "train", "churn"]) == 0
    assert main(["--config", str(same), "train", "churn"]) == 0  # the same model again
    assert "(not better)" in capsys.readouterr().out
    assert _aliases(client, "churn") == {"champion": "1", "challenger": "2"}
    worse = config_file(fresh_home, "worse.yaml", **WORSE)
    assert main(["--config", str(worse), "train", "churn", "--force"]) == 0
    out = capsys.readouterr().out
    assert "--force" in out and "[6/6]" in out
    assert _aliases(client, "churn") == {"champion": "3", "challenger": "3"}
    assert main(["--config", str(worse), "models", "promote", "churn", "1"]) == 0
    assert _aliases(client, "churn")["champion"] == "1"
    assert main(["--config", str(worse), "models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "champion" in listing and "challenger" in listing


def test_a_challenger_below_its_baselines_is_refused_without_force(
        fresh_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A first version that does not beat the RFM and BG/NBD baselines of its own run is
    registered but not made champion; the CLI says why, and --force overrides it."""
    worse = config_file(fresh_home, **WORSE)
    settings = settings_at(fresh_home, **WORSE)
    assert main(["--config", str(worse), "train", "churn"]) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip().endswith("challenger")
    warning = captured.err.strip()
    assert warning.startswith("warning: churn version 1 ROC AUC")
    assert "does not beat its baselines rfm" in warning and "bgnbd" in warning
    assert "not promoted" in warning and "--force" in warning
    client = configure(settings)
    assert _aliases(client, "churn") == {"challenger": "1"}
    run_id = client.get_model_version("churn", "1").run_id
    assert client.get_run(run_id).data.tags["gate_decision"] == "no_champion"
    with pytest.raises(NotFound, match="no version with alias 'champion'; its versions are 1"):
        load_champions(settings)

    assert main(["--config", str(worse), "train", "churn", "--force"]) == 0
    assert "promoted anyway (--force)" in capsys.readouterr().err
    assert _aliases(client, "churn") == {"champion": "2", "challenger": "2"}
    # Promoting by hand is allowed, and warned about.
    assert main(["--config", str(worse), "models", "promote", "churn", "1"]) == 0
    assert "churn version 1 ROC AUC" in capsys.readouterr().err


def test_models_list_shows_run_date_and_tuning_and_json(trained: Trained,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(trained.home, "list.yaml", **FAST)
    assert main(["--config", str(cfg), "models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "run_id" in lines[0] and "tuning" in lines[0] and "created" in lines[0]
    churn_line = next(line for line in lines if line.startswith("churn "))
    assert trained.churn.run_id in churn_line and "none" in churn_line
    assert main(["--config", str(cfg), "models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"churn", "propensity"}
    churn = by_name["churn"]
    assert churn["run_id"] == trained.churn.run_id
    assert churn["run_name"] == f"churn-{trained.churn.plan.validation}"
    assert churn["tune_trials"] == 0
    assert churn["aliases"] == ["challenger", "champion"]
    assert churn["created"][:4].isdigit() and "T" in churn["created"]
    assert churn["metrics"]["roc_auc"] == pytest.approx(trained.churn.metrics.roc_auc)
    assert churn["metrics"]["baseline_bgnbd_roc_auc"] == pytest.approx(
        trained.churn.baselines["bgnbd"].roc_auc)


def test_promoting_a_missing_version_lists_the_versions(trained: Trained,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(trained.home, "promote.yaml", **FAST)
    assert main(["--config", str(cfg), "models", "promote", "churn", "9"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model 'churn' has no version 9; its versions are 1 ")
    assert "champion 1" in err
    assert configure(trained.settings).get_registered_model("churn").aliases["champion"] == 1


def test_promoting_with_no_model_registered_says_to_train(fresh_home: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(fresh_home, **FAST)
    assert main(["--config", str(cfg), "models", "promote", "propensity", "1"]) == 3
    assert "no model 'propensity' is registered yet" in capsys.readouterr().err


def test_a_tuned_run_is_named_and_records_its_trials(fresh_home: Path, trained: Trained) -> None:
    """Optuna trials are nested runs; the run's name and params say how many."""
    settings = settings_at(fresh_home, **FAST)
    tuned = train(settings, "propensity", as_of=trained.churn.plan.validation, cutoffs=1, tune=2,
                  say=_quiet)
    client = configure(settings)
    run = client.get_run(tuned.run_id)
    assert run.info.run_name == f"propensity-tuned-2trials-{tuned.plan.validation}"
    assert run.data.params["tune_trials"] == "2"
    trials = client.search_runs([tuned.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{tuned.run_id}'")
    assert len(trials) == 2
    assert all("calibration_half_roc_auc" in t.data.metrics for t in trials)


def test_the_loader_scores_a_store_record_like_the_batch_path(trained: Trained) -> None:
    models = load_champions(trained.settings)
    assert models.versions == {"churn": "1", "propensity": "1"}
    features = load_features(trained.settings, trained.churn.plan.validation).head(20)
    record = features.iloc[3].to_dict() | {"as_of": str(trained.churn.plan.validation),
                                           "tags": []}
    churn, propensity = models.score(record)
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
    err = capsys.readouterr().err
    settings = settings_at(tmp_path, **{**FAST, "cutoffs": 1})
    client = configure(settings)
    metrics = client.get_run(client.get_model_version("churn", "1").run_id).data.metrics
    beats = metrics["roc_auc"] > max(metrics["baseline_rfm_roc_auc"],
                                     metrics["baseline_bgnbd_roc_auc"])
    # Orders alone barely beat BG/NBD, which models exactly them: the gate decides either way.
    assert _aliases(client, "churn") == ({"champion": "1", "challenger": "1"} if beats
                                         else {"challenger": "1"})
    assert ("does not beat its baseline" in err) == (not beats)
    validation = load_features(settings, max(available_as_of(settings)))
    assert validation["tenure_days"].isna().all() and validation["days_since_login"].isna().all()



def test_training_refuses_a_forbidden_feature_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform that forbids region: no model may learn from it (no data needed to say so)."""
    from nextbest.config import Settings
    from nextbest.errors import ConfigError

    settings = Settings(policy={"forbidden_features": ["region", "ip"]})
    with pytest.raises(ConfigError, match="training: the model's feature list reads region"):
        train(settings, "churn")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXTBEST__POLICY__FORBIDDEN_FEATURES", "[device_model, channel]")
    assert main(["train", "churn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channel" in err[0] and "policy.forbidden_features" in err[0]
