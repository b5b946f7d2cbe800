"""``nextbest train ltv``: lifetime value, LightGBM against BG/NBD + Gamma-Gamma.

What it predicts: each user's spend (completed orders) and purchase days over the next
``horizon`` days (``training.labels.ltv_horizon_days``, default 365; ``ltv_12m`` is the
365-day spend). A two-part model of LightGBM regressors on the point-in-time features of
the churn and propensity models, the same split as BG/NBD + Gamma-Gamma: purchase days with
a Poisson objective, and spend per purchase day with a Gamma one (fit on the windows with a
purchase); spend = purchases x spend per purchase. (A single Tweedie regressor of spend was
tried first: on CDNOW it under-forecast the holiday quarter's spend by 12-15%, the
two-part model by 1-5%.)

How it is validated, out of time: labels at the validation cutoff T over the churn
model's population (users active in the year before T); training cutoffs ``step`` days
apart whose label windows close by T, the latest exactly at T (the behaviour nearest to
what is forecast). Early stopping watches a seeded fifth of the training users, so nothing
of the validation window reaches the fit. The whole validation population is scored and
compared with BG/NBD + Gamma-Gamma (``lifetimes``) fit on the orders before T, in the same
MLflow run: total spend and purchase forecast errors, MAE, Spearman rank correlation,
top-decile capture, normalised Gini and a Lorenz plot.

Why LightGBM can do better than the classic model under non-stationarity: BG/NBD assumes a
constant purchase rate per living customer; the features carry cohort age
(``first_purchase_days``), the trend of recent against earlier buying
(``frequency_prev_90d``, ``spend_trend``) and recency windows, so the boosters learn how a
cohort's buying changes as it ages, from the most recent windows before T.

The model is registered as ``ltv`` (an MLflow pyfunc: features in, a frame of ``spend``
and ``purchases`` out). Alias ``challenger`` always moves to the new version; ``champion``
only when it beats the baseline of its own run (Spearman higher, total spend and purchase
errors no larger) and the current champion's Spearman on the same rows, or with
``--force``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from pydantic import BaseModel

from nextbest.config import Settings, TrainingConfig
from nextbest.errors import DataError, NotFound
from training import baselines, plots
from training.dataset import (
    CutoffPlan,
    latest_cutoff,
    model_columns,
    plan_cutoffs,
    with_inputs,
)
from training.labels import LTV_MODEL, build_ltv_labels, orders_path
from training.ltv_model import PARTS, TARGETS, LtvModel, LtvSpec, load_ltv, log_ltv_model
from training.metrics import LtvMetrics, evaluate_ltv
from training.model import category_lists
from training.registry import (
    CHALLENGER,
    CHAMPION,
    configure,
    experiment_id,
    register_version,
)

Say = Callable[[str], None]
BASELINE = "bgnbd_gg"
OBJECTIVES = {"purchases": "poisson", "value": "gamma"}
STOP_SHARE = 0.2  # training users (by seeded hash) that early stopping watches


class LtvGate(BaseModel):
    """The champion decision of one run, with the numbers it used."""

    promoted: bool
    forced: bool
    version: str
    champion_version: str | None = None
    champion_spearman: float | None = None
    reason: str


class LtvResult(BaseModel):
    """What one ``train ltv`` run produced."""

    version: str
    run_id: str
    plan: CutoffPlan
    n_train: int
    n_valid: int
    iterations: dict[str, int]
    metrics: LtvMetrics
    baseline: LtvMetrics
    gate: LtvGate
    seconds: dict[str, float]


# ---------------------------------------------------------------- data
def ltv_examples(settings: Settings, cutoff: date, horizon: int, raw_dir: Path, *,
                 rebuild: bool, say: Say) -> pd.DataFrame:
    """The population at ``cutoff`` with ``spend`` and ``purchases`` and the model inputs."""
    labels = build_ltv_labels(raw_dir, cutoff, horizon, settings.training.labels)
    frame = with_inputs(settings, labels, cutoff, raw_dir, rebuild=rebuild, say=say)
    names, _ = model_columns(settings)
    return frame[["user_id", "cutoff", *TARGETS, *names]]


def _stop_rows(user_ids: pd.Series, seed: int) -> np.ndarray:
    """The seeded ``STOP_SHARE`` of users early stopping watches (a user is wholly in or out)."""
    def bucket(user_id: str) -> bool:
        digest = hashlib.blake2b(f"ltv:{seed}:{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < STOP_SHARE
    return np.fromiter((bucket(u) for u in user_ids.astype(str)), dtype=bool,
                       count=len(user_ids))


def _params(config: TrainingConfig, target: str) -> dict[str, Any]:
    objective = OBJECTIVES[target]
    params = {"objective": objective, "metric": objective,
              "learning_rate": config.learning_rate, "num_leaves": config.num_leaves,
              "min_child_samples": config.min_child_samples,
              "feature_fraction": config.feature_fraction, "lambda_l2": config.lambda_l2,
              "seed": config.seed, "deterministic": True, "num_threads": config.num_threads,
              "verbosity": -1, "max_cat_to_onehot": 8}
    return params


def _part_rows(train: pd.DataFrame, part: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows and labels of one part: every row for purchases; for spend per purchase
    day, the rows with a purchase and some spend."""
    if part == "purchases":
        return train, train["purchases"].to_numpy(dtype=float)
    bought = train[(train["purchases"] > 0) & (train["spend"] > 0)]
    return bought, (bought["spend"] / bought["purchases"]).to_numpy(dtype=float)


def fit_ltv(train: pd.DataFrame, spec: LtvSpec, config: TrainingConfig) -> LtvModel:
    """Both boosters on ``train`` (``spend``, ``purchases`` and the inputs of ``spec``), each
    stopped early on a seeded fifth of the training users."""
    boosters, iterations = {}, {}
    for part in PARTS:
        rows, label = _part_rows(train, part)
        stop = _stop_rows(rows["user_id"], config.seed)
        if label.sum() <= 0 or stop.all() or not stop.any():
            raise DataError(f"too few purchases in the training windows to fit {part}; use "
                            "more --cutoffs or a later --as-of", field="cutoffs")
        dfit = lgb.Dataset(spec.frame(rows[~stop]), label=label[~stop],
                           categorical_feature=list(spec.categories), free_raw_data=False)
        dstop = lgb.Dataset(spec.frame(rows[stop]), label=label[stop], reference=dfit,
                            categorical_feature=list(spec.categories))
        boosters[part] = lgb.train(
            _params(config, part), dfit, num_boost_round=config.num_boost_round,
            valid_sets=[dstop],
            callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)])
        iterations[part] = int(boosters[part].best_iteration or config.num_boost_round)
    return LtvModel(boosters, spec.model_copy(update={"iterations": iterations}))


# ---------------------------------------------------------------- registry
def _beats_baseline(metrics: LtvMetrics, baseline: LtvMetrics) -> list[str]:
    """The criteria on which the model does not beat the baseline (empty: it does)."""
    failed = []
    if not metrics.spearman > baseline.spearman:
        failed.append(f"Spearman {metrics.spearman:.4f} <= {baseline.spearman:.4f}")
    if abs(metrics.spend_error) > abs(baseline.spend_error):
        failed.append(f"spend error {metrics.spend_error:+.1%} vs {baseline.spend_error:+.1%}")
    if abs(metrics.purchases_error) > abs(baseline.purchases_error):
        failed.append(f"purchase error {metrics.purchases_error:+.1%} vs "
                      f"{baseline.purchases_error:+.1%}")
    return failed


def gate(client: MlflowClient, version: str, metrics: LtvMetrics, baseline: LtvMetrics,
         valid: pd.DataFrame, force: bool) -> LtvGate:
    """Decide and set the aliases: ``challenger`` always, ``champion`` when earned or forced."""
    client.set_registered_model_alias(LTV_MODEL, CHALLENGER, version)
    failed = _beats_baseline(metrics, baseline)
    champion_version = champion_spearman = None
    try:
        champion_version, champion = load_ltv(client, CHAMPION)
    except NotFound:
        champion = None
    if champion is not None and champion_version != version:
        spend = champion.forecast(valid.reindex(columns=sorted(
            set(valid.columns) | set(champion.spec.feature_names))))["spend"].to_numpy()
        champion_spearman = float(pd.Series(spend).corr(valid["spend"].reset_index(drop=True),
                                                        method="spearman"))
        if not metrics.spearman > champion_spearman:
            failed.append(f"Spearman {metrics.spearman:.4f} <= champion v{champion_version} "
                          f"{champion_spearman:.4f}")
    earned = not failed
    if earned or force:
        client.set_registered_model_alias(LTV_MODEL, CHAMPION, version)
    reason = ("beats BG/NBD + Gamma-Gamma" + (" and the champion" if champion_spearman
                                             is not None else "") if earned
              else "; ".join(failed) + (" (promoted anyway: --force)" if force else ""))
    return LtvGate(promoted=earned or force, forced=force and not earned, version=version,
                   champion_version=champion_version, champion_spearman=champion_spearman,
                   reason=reason)


# ---------------------------------------------------------------- the run
def _log_run(result: dict[str, Any], plan: CutoffPlan, model: LtvModel, fingerprint: dict,
             n_train: int, n_valid: int, config: TrainingConfig) -> None:
    mlflow.log_params({
        "model_name": LTV_MODEL, "as_of": str(plan.validation),
        "horizon_days": plan.horizon_days,
        "training_cutoffs": ",".join(map(str, plan.training)), "n_train": n_train,
        "n_validation": n_valid, "n_features": len(model.spec.feature_names),
        "data_fingerprint": fingerprint["sha256"],
        **{f"best_iteration_{t}": i for t, i in model.spec.iterations.items()},
        **{f"lgb_{k}": v for k, v in _params(config, "value").items()
           if k not in ("objective", "metric")},
        **{f"rows_{k}": v for k, v in fingerprint["rows"].items()}})
    mlflow.log_metrics({**result["metrics"].prefixed(""),
                        **result["baseline"].prefixed(f"baseline_{BASELINE}_")})


def _log_artifacts(out: Path, valid: pd.DataFrame, forecasts: dict[str, pd.DataFrame],
                   model: LtvModel, plan: CutoffPlan, fingerprint: dict) -> None:
    plots.lorenz_plot(valid["spend"].to_numpy(), {name: f["spend"].to_numpy()
                                                  for name, f in forecasts.items()},
                      out / "lorenz.png")
    plots.importance_plot(model.spec.feature_names,
                          model.boosters["purchases"].feature_importance("gain"),
                          out / "feature_importance.png")
    predictions = valid[["user_id", *TARGETS]].reset_index(drop=True)
    for name, forecast in forecasts.items():
        for target in TARGETS:
            predictions[f"{name}_{target}"] = forecast[target].to_numpy()
    predictions.to_csv(out / "validation_predictions.csv", index=False)
    (out / "features.json").write_text(json.dumps(model.spec.feature_names, indent=1))
    (out / "cutoffs.json").write_text(plan.model_dump_json(indent=1))
    (out / "data_fingerprint.json").write_text(json.dumps(fingerprint, indent=1))
    for name in ("lorenz.png", "feature_importance.png"):
        mlflow.log_artifact(str(out / name), artifact_path="plots")
    for name in ("validation_predictions.csv", "features.json", "cutoffs.json",
                 "data_fingerprint.json"):
        mlflow.log_artifact(str(out / name))


def train_ltv(settings: Settings, as_of: date | None = None, horizon: int | None = None,
              cutoffs: int | None = None, force: bool = False, *,
              rebuild_features: bool = False, say: Say = print) -> LtvResult:
    """Train, validate, log, register and gate the LTV model (see the module docstring)."""
    cfg = settings.training
    raw_dir = Path(settings.paths.raw_dir)
    orders_path(raw_dir)
    horizon = horizon or cfg.labels.ltv_horizon_days
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    validation = latest_cutoff(settings, horizon, raw_dir, as_of)
    plan = plan_cutoffs(validation, horizon, cutoffs or cfg.cutoffs, cfg.cutoff_step_days,
                        on_grid=False)
    say(f"[1/5] ltv ({horizon} days): validation cutoff {plan.validation}, training cutoffs "
        f"{', '.join(map(str, plan.training))}")
    train = pd.concat([ltv_examples(settings, c, horizon, raw_dir, rebuild=rebuild_features,
                                    say=say) for c in plan.training], ignore_index=True)
    valid = ltv_examples(settings, plan.validation, horizon, raw_dir,
                         rebuild=rebuild_features, say=say)
    names, categorical = model_columns(settings)
    spec = LtvSpec(feature_names=names, categories=category_lists(train, categorical),
                   horizon_days=horizon, iterations={})
    seconds["data"] = round(time.perf_counter() - began, 3)
    say(f"[2/5] data: {len(train):,} training rows, {len(valid):,} validation users")

    model = fit_ltv(train, spec, cfg)
    seconds["fit"] = round(time.perf_counter() - began - seconds["data"], 3)
    say(f"[3/5] LightGBM: purchases {model.spec.iterations['purchases']} rounds (Poisson), "
        f"spend per purchase {model.spec.iterations['value']} rounds (Gamma)")
    forecasts = {"lightgbm": model.forecast(valid).reset_index(drop=True),
                 BASELINE: baselines.bgnbd_gg_forecast(raw_dir, plan.validation,
                                                       valid["user_id"], horizon, cfg)}
    actual = valid[list(TARGETS)].to_numpy(dtype=float)
    scores = {name: evaluate_ltv(actual[:, 0], actual[:, 1], f["spend"].to_numpy(),
                                 f["purchases"].to_numpy()) for name, f in forecasts.items()}
    metrics, baseline = scores["lightgbm"], scores[BASELINE]
    say("[4/5] " + "; ".join(
        f"{name}: spend {m.spend_error:+.1%}, purchases {m.purchases_error:+.1%}, Spearman "
        f"{m.spearman:.4f}, top decile {m.top_decile_capture:.1%}"
        for name, m in scores.items()))

    from training.pipeline import data_fingerprint

    client = configure(settings)
    fingerprint = data_fingerprint(raw_dir)
    with mlflow.start_run(experiment_id=experiment_id(settings, client, LTV_MODEL),
                          run_name=f"ltv-{horizon}d-{plan.validation}") as run:
        _log_run({"metrics": metrics, "baseline": baseline}, plan, model, fingerprint,
                 len(train), len(valid), cfg)
        with tempfile.TemporaryDirectory() as tmp:
            _log_artifacts(Path(tmp), valid, forecasts, model, plan, fingerprint)
            info = log_ltv_model(model, _example_rows(settings, plan.validation, valid),
                                 Path(tmp))
        version = register_version(client, LTV_MODEL, info.model_uri, run.info.run_id,
                                   info.model_id)
        decision = gate(client, version, metrics, baseline, valid, force)
        mlflow.set_tags({"gate_decision": "promoted" if decision.promoted else "challenger",
                         "gate_reason": decision.reason})
    seconds["total"] = round(time.perf_counter() - began, 3)
    say(f"[5/5] registered ltv version {version} (run {run.info.run_id}); "
        f"{'champion' if decision.promoted else 'challenger'}: {decision.reason}")
    return LtvResult(version=version, run_id=run.info.run_id, plan=plan, n_train=len(train),
                     n_valid=len(valid), iterations=model.spec.iterations, metrics=metrics,
                     baseline=baseline, gate=decision, seconds=seconds)


def _example_rows(settings: Settings, as_of: date, valid: pd.DataFrame) -> pd.DataFrame:
    """Five stored feature rows of validation users: the logged model's input example."""
    from features.build import load_features

    features = load_features(settings, as_of)
    return features[features["user_id"].isin(valid["user_id"].head(50))].reset_index(drop=True)
