"""``train(settings, model_name)``: one MLflow-tracked run from raw data to a gated registry version.

Stages (each prints one progress line): cutoffs -> labels + features per cutoff -> LightGBM
(optionally Optuna-tuned) -> calibration -> metrics, baselines, plots -> MLflow run and
registered version -> champion gate.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel

from features.build import load_features
from nextbest.config import Settings
from training import baselines, plots, pyfunc
from training.dataset import (
    CutoffPlan,
    TrainingData,
    assemble,
    model_columns,
    plan_cutoffs,
    resolve_validation_cutoff,
)
from training.labels import SELLER_CHURN, ModelName, horizon_days, orders_path
from training.metrics import Metrics, evaluate
from training.model import (
    ModelSpec,
    base_params,
    category_lists,
    choose_calibrator,
    fit_booster,
    predict,
    raw_scores,
    split_validation,
)
from training.registry import (
    TUNE_TRIALS_PARAM,
    GateDecision,
    apply_decision,
    champion,
    configure,
    decide,
    experiment_id,
    register_version,
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class BaselineContext:
    """What a baseline may read: the training rows, the evaluation rows, the raw data."""

    data: TrainingData
    evaluation: pd.DataFrame
    raw_dir: Path
    model_name: ModelName
    settings: Settings


Baseline = Callable[[BaselineContext], np.ndarray]


def _rfm(ctx: BaselineContext) -> np.ndarray:
    return baselines.rfm_scores(ctx.data.train, ctx.evaluation)


def _bgnbd(ctx: BaselineContext) -> np.ndarray:
    return baselines.bgnbd_scores(ctx.raw_dir, ctx.data.plan.validation,
                                  ctx.evaluation["user_id"], ctx.data.plan.horizon_days,
                                  ctx.model_name, ctx.settings.training)


def _seller_recency(ctx: BaselineContext) -> np.ndarray:
    return baselines.seller_recency_scores(ctx.data.train, ctx.evaluation)


# The baselines each model is scored against (and must beat to become champion): the buyer
# models against RFM recency and BG/NBD, seller churn against the recency of the last listing.
BUYER_BASELINES: dict[str, Baseline] = {"rfm": _rfm, "bgnbd": _bgnbd}
MODEL_BASELINES: dict[str, dict[str, Baseline]] = {
    "churn": BUYER_BASELINES, "propensity": BUYER_BASELINES,
    SELLER_CHURN: {"recency": _seller_recency},
}


class TrainResult(BaseModel):
    """What one ``train`` run produced."""

    model_name: str
    version: str
    run_id: str
    experiment_id: str
    plan: CutoffPlan
    n_train: int
    n_valid: int
    best_iteration: int
    calibrator: str
    metrics: Metrics
    baselines: dict[str, Metrics]
    decision: GateDecision
    seconds: dict[str, float]


def data_fingerprint(raw_dir: Path) -> dict[str, Any]:
    """SHA-256 over the raw Parquet files' bytes plus each table's row count."""
    digest = hashlib.sha256()
    rows: dict[str, int] = {}
    for path in sorted(Path(raw_dir).glob("*.parquet")):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(chunk)
        rows[path.stem] = pq.ParquetFile(path).metadata.num_rows
    return {"sha256": digest.hexdigest(), "rows": rows}


def _tune(spec: ModelSpec, data: TrainingData, stop: pd.DataFrame, params: dict[str, Any],
          settings: Settings, trials: int, say: Say) -> dict[str, Any]:
    """``trials`` seeded Optuna trials, each a nested MLflow run; returns the best parameters.

    The objective is the ROC AUC of the raw scores on the calibration half, so the evaluation
    half stays untouched by tuning.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    y_stop = stop["label"].to_numpy()
    parent = mlflow.active_run()

    def objective(trial: optuna.Trial) -> float:
        trial_params = {**params,
                        "num_leaves": trial.suggest_int("num_leaves", 15, 127, log=True),
                        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
                        "min_child_samples": trial.suggest_int("min_child_samples", 10, 200,
                                                               log=True),
                        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
                        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True)}
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True,
                              experiment_id=parent.info.experiment_id):
            booster = fit_booster(spec, data.train, stop, trial_params, settings.training)
            trial_spec = spec.model_copy(update={"best_iteration": booster.best_iteration})
            auc = evaluate(y_stop, raw_scores(booster, trial_spec, stop)).roc_auc
            mlflow.log_params(trial.params)
            mlflow.log_metrics({"calibration_half_roc_auc": auc,
                                "best_iteration": booster.best_iteration})
        say(f"  trial {trial.number}: ROC AUC {auc:.4f} on the calibration half")
        return auc

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=settings.training.seed))
    study.optimize(objective, n_trials=trials)
    return {**params, **study.best_params}


def _baseline_scores(data: TrainingData, evaluation: pd.DataFrame, raw_dir: Path,
                     model_name: ModelName, settings: Settings) -> dict[str, np.ndarray]:
    """Each of ``model_name``'s baselines' probability of the event on the evaluation rows."""
    ctx = BaselineContext(data=data, evaluation=evaluation, raw_dir=raw_dir,
                          model_name=model_name, settings=settings)
    return {name: baseline(ctx) for name, baseline in MODEL_BASELINES[model_name].items()}


def _log_artifacts(out: Path, y: np.ndarray, scores: dict[str, np.ndarray], booster: lgb.Booster,
                   spec: ModelSpec, predictions: pd.DataFrame, data: TrainingData,
                   fingerprint: dict) -> None:
    """Write plots, predictions, feature list and cutoffs into ``out`` and log them."""
    plots.roc_plot(y, scores, out / "roc.png")
    plots.calibration_plot(y, scores, out / "calibration.png")
    plots.lift_plot(y, scores, out / "lift.png")
    plots.importance_plot(spec.feature_names, booster.feature_importance("gain"),
                          out / "feature_importance.png")
    predictions.to_csv(out / "validation_predictions.csv", index=False)
    (out / "features.json").write_text(json.dumps(spec.feature_names, indent=1))
    (out / "cutoffs.json").write_text(data.plan.model_dump_json(indent=1))
    (out / "data_fingerprint.json").write_text(json.dumps(fingerprint, indent=1))
    for name in ("roc.png", "calibration.png", "lift.png", "feature_importance.png"):
        mlflow.log_artifact(str(out / name), artifact_path="plots")
    for name in ("validation_predictions.csv", "features.json", "cutoffs.json",
                 "data_fingerprint.json"):
        mlflow.log_artifact(str(out / name))


def _log_model(client: mlflow.MlflowClient, out: Path, booster: lgb.Booster, spec: ModelSpec,
               features: pd.DataFrame, run_id: str) -> str:
    """Log the calibrated pyfunc (signature and input example from ``features``) and register
    it as a new version."""
    info = pyfunc.log_model(booster, spec, features, out)
    return register_version(client, spec.model_name, info.model_uri, run_id, info.model_id)


def _stored_features(settings: Settings, as_of: date, rows: pd.DataFrame) -> pd.DataFrame:
    """The ``features.parquet`` rows of ``as_of`` for the users of ``rows``, as stored (the
    training frames hold float32 copies; the logged model takes the stored form)."""
    features = load_features(settings, as_of)
    return features[features["user_id"].isin(rows["user_id"])].reset_index(drop=True)


def _gate(client: mlflow.MlflowClient, model_name: str, version: str, auc: float,
          baselines: dict[str, float], evaluation: pd.DataFrame, force: bool) -> GateDecision:
    """Re-score the current champion on the same evaluation rows and decide."""
    current = champion(client, model_name)
    if current is None or current.version == version:
        return decide(version, auc, None, None, baselines=baselines, force=force)
    frame = evaluation.reindex(columns=sorted(set(evaluation.columns)
                                              | set(current.spec.feature_names)))
    p = predict(current.booster, current.spec, frame)
    return decide(version, auc, current.version,
                  evaluate(evaluation["label"].to_numpy(), p).roc_auc, baselines=baselines,
                  force=force)


def run_name(model_name: str, validation: date, tune: int) -> str:
    """``churn-2025-10-02``, or ``churn-tuned-20trials-2025-10-02`` for a tuned run."""
    return f"{model_name}-{f'tuned-{tune}trials-' if tune else ''}{validation}"


def _stage(seconds: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    seconds[name] = round(now - start, 3)
    return now


@dataclass
class _Fitted:
    """The booster, its final spec (best iteration, calibrator) and how it was chosen."""

    booster: lgb.Booster
    spec: ModelSpec
    params: dict[str, Any]
    calibrator_losses: dict[str, float]


def _fit(data: TrainingData, calib: pd.DataFrame, settings: Settings, model_name: str,
         tune: int, say: Say) -> _Fitted:
    """Tune (optionally), fit with early stopping on ``calib``, then calibrate on ``calib``."""
    cfg = settings.training
    spec = ModelSpec(model_name=model_name, feature_names=data.feature_names,
                     categories=category_lists(data.train, data.categorical),
                     calibrator={"kind": "sigmoid"}, best_iteration=0, event=model_name)
    params = base_params(cfg, data.train["label"].to_numpy())
    if tune:
        say(f"[3/6] tuning: {tune} Optuna trials")
        params = _tune(spec, data, calib, params, settings, tune, say)
    booster = fit_booster(spec, data.train, calib, params, cfg)
    spec = spec.model_copy(update={"best_iteration": booster.best_iteration})
    say(f"[3/6] LightGBM: {booster.best_iteration} rounds (early stopping on the "
        "calibration half)")
    calibrator, losses = choose_calibrator(raw_scores(booster, spec, calib),
                                           calib["label"].to_numpy(), cfg.seed)
    say(f"[4/6] calibration: {calibrator.kind} (cross-fitted log loss "
        + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + ")")
    return _Fitted(booster=booster, spec=spec.model_copy(update={"calibrator": calibrator}),
                   params=params, calibrator_losses=losses)


def _log_run_record(data: TrainingData, fitted: _Fitted, metrics: Metrics,
                    base_metrics: dict[str, Metrics], n_calibration: int,
                    fingerprint: dict) -> None:
    """Log the run's params (cutoffs, sizes, fingerprint, LightGBM params) and metrics."""
    plan = data.plan
    mlflow.log_params({
        "model_name": fitted.spec.model_name, "as_of": str(plan.validation),
        "training_cutoffs": ",".join(map(str, plan.training)),
        "horizon_days": plan.horizon_days, "n_train": len(data.train),
        "n_calibration": n_calibration, "n_evaluation": len(data.valid) - n_calibration,
        "n_features": len(fitted.spec.feature_names),
        "calibrator": fitted.spec.calibrator.kind, "best_iteration": fitted.spec.best_iteration,
        "data_fingerprint": fingerprint["sha256"],
        **{f"rows_{k}": v for k, v in fingerprint["rows"].items()},
        **{f"lgb_{k}": v for k, v in fitted.params.items()}})
    mlflow.log_metrics({**metrics.prefixed(""),
                        **{f"calibrator_logloss_{k}": v
                           for k, v in fitted.calibrator_losses.items()},
                        **{k: v for name, m in base_metrics.items()
                           for k, v in m.prefixed(f"baseline_{name}_").items()}})


def _log_decision(decision: GateDecision) -> None:
    """Record the gate's verdict and both ROC AUCs on the run."""
    outcome = ("promoted" if decision.promoted else
               "kept_champion" if decision.champion_version else "no_champion")
    mlflow.set_tags({"gate_decision": outcome,
                     "gate_reason": decision.reason})
    mlflow.log_metrics({"gate_challenger_roc_auc": decision.challenger_roc_auc,
                        **({"gate_champion_roc_auc": decision.champion_roc_auc}
                           if decision.champion_roc_auc is not None else {})})


def train(settings: Settings, model_name: ModelName, as_of: date | None = None,
          cutoffs: int | None = None, tune: int = 0, force: bool = False, *,
          rebuild_features: bool = False, say: Say = print) -> TrainResult:
    """Train, evaluate, log, register and gate one model; see the module docstring."""
    cfg = settings.training
    model_columns(settings, model_name)  # refuses a forbidden feature before any work
    raw_dir = Path(settings.paths.raw_dir)
    orders_path(raw_dir)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    validation = resolve_validation_cutoff(settings, model_name, raw_dir, as_of)
    plan = plan_cutoffs(validation, horizon_days(model_name, cfg.labels),
                        cutoffs or cfg.cutoffs, cfg.cutoff_step_days)
    say(f"[1/6] {model_name}: validation cutoff {plan.validation}, training cutoffs "
        f"{', '.join(map(str, plan.training))}")
    data = assemble(settings, model_name, plan, raw_dir, rebuild=rebuild_features, say=say)
    is_calibration = split_validation(data.valid["user_id"], cfg.seed)
    calib, evaluation = data.valid[is_calibration], data.valid[~is_calibration]
    t = _stage(seconds, "data", t)
    say(f"[2/6] data: {len(data.train):,} training rows (event rate "
        f"{data.train['label'].mean():.3f}), {len(data.valid):,} validation rows split "
        f"{len(calib):,} calibration / {len(evaluation):,} evaluation")

    client = configure(settings)
    exp_id = experiment_id(settings, client, model_name)
    fingerprint = data_fingerprint(raw_dir)
    t = _stage(seconds, "mlflow_setup", t)
    with mlflow.start_run(experiment_id=exp_id,
                          run_name=run_name(model_name, plan.validation, tune)) as run:
        mlflow.log_param(TUNE_TRIALS_PARAM, tune)
        fitted = _fit(data, calib, settings, model_name, tune, say)
        t = _stage(seconds, "fit", t)

        y = evaluation["label"].to_numpy()
        scores = {"lightgbm": predict(fitted.booster, fitted.spec, evaluation),
                  **_baseline_scores(data, evaluation, raw_dir, model_name, settings)}
        metrics = evaluate(y, scores["lightgbm"])
        base_metrics = {name: evaluate(y, scores[name]) for name in MODEL_BASELINES[model_name]}
        t = _stage(seconds, "evaluate", t)
        say(f"[5/6] ROC AUC on evaluation half: LightGBM {metrics.roc_auc:.4f}, "
            + ", ".join(f"{n} {m.roc_auc:.4f}" for n, m in base_metrics.items()))

        _log_run_record(data, fitted, metrics, base_metrics, len(calib), fingerprint)
        predictions = pd.DataFrame({
            "user_id": data.valid["user_id"].to_numpy(), "label": data.valid["label"].to_numpy(),
            "probability": predict(fitted.booster, fitted.spec, data.valid),
            "half": np.where(is_calibration, "calibration", "evaluation")})
        with tempfile.TemporaryDirectory() as tmp:
            _log_artifacts(Path(tmp), y, scores, fitted.booster, fitted.spec, predictions, data,
                           fingerprint)
            version = _log_model(client, Path(tmp), fitted.booster, fitted.spec,
                                 _stored_features(settings, plan.validation, evaluation),
                                 run.info.run_id)
        say(f"[6/6] registered {model_name} version {version} (run {run.info.run_id})")

        decision = _gate(client, model_name, version, metrics.roc_auc,
                         {name: m.roc_auc for name, m in base_metrics.items()}, evaluation, force)
        apply_decision(client, model_name, decision)
        _log_decision(decision)
        say(f"gate: {decision.message()}")
    _stage(seconds, "log_and_gate", t)
    return TrainResult(model_name=model_name, version=version, run_id=run.info.run_id,
                       experiment_id=exp_id, plan=plan, n_train=len(data.train),
                       n_valid=len(data.valid), best_iteration=fitted.spec.best_iteration,
                       calibrator=fitted.spec.calibrator.kind, metrics=metrics,
                       baselines=base_metrics, decision=decision, seconds=seconds)
