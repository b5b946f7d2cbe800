"""A non-linear reward model inside the bandit: LightGBM refit on the decision log, with VW.

The linear VW learner (:class:`decisions.bandit.ConversionBandit`) cannot represent the
interactions that decide which arm pays (a user's coupon history x the item's price x the
arm). :class:`RewardModelBandit` adds a LightGBM model of ``P(convert | example, arm)``
fitted on the newest ``reward_model.window`` rewards of the decision log every
``reward_model.refit_every`` learned rewards, and combines it with VW
(``reward_model.combine``):

- ``residual``: ``logit = f_lgbm(x, a) + w_vw . x``; VW learns the residual (LightGBM's
  logit is each example's base margin), and starts afresh at each refit, because the
  residual of one model is not the residual of the next;
- ``blend``: ``p = b p_lgbm + (1 - b) p_vw`` with VW learning the whole logit on its own.

Before the first refit (``min_rewards``) it is the linear learner exactly. Expected reward
and exploration are the linear learner's: ``p x margin``, then SquareCB's inverse-gap
weighting (:func:`decisions.bandit.explore`) over the combined prediction.

Refits are asked for by the learner (:class:`decisions.learner.Learner`), which owns the
decision log: :meth:`RewardModelBandit.refit_due` says when, :func:`fit_reward_model` fits
(off the request path: in the learner thread, or a worker thread of the inline role) and
:meth:`RewardModelBandit.install` swaps the model in. Each fitted model has a version
(``lgbm.<last seq>``: the log position of the newest reward it learned) that the engine
writes into every decision it informs (``decisions.reward_model``), so replays and offline
evaluation know which model decided. A checkpoint is one zip holding the VW model and the
reward model (:meth:`RewardModelBandit.save`).

Features are read from the logged example's tokens only (:class:`TokenFeaturizer`), so a
logged decision is re-scored exactly as it was seen.
"""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from decisions.bandit import ConversionBandit, vw_arguments, vw_learn, vw_predictions
from decisions.encoding import BanditExample
from nextbest.config import BanditConfig, RewardModelConfig

VERSION_PREFIX = "lgbm."
MULTI_VALUED = frozenset({"tag"})  # keys that occur several times: one 0/1 column per value


def linear_bandit(config: BanditConfig) -> BanditConfig:
    """``config`` with no reward model: the linear VW learner alone."""
    return config.model_copy(update={"reward_model": config.reward_model.model_copy(
        update={"kind": "none"})})


def uses_reward_model(config: BanditConfig) -> bool:
    """Whether the configured bandit has a non-linear reward model."""
    return config.reward_model.kind != "none" and config.exploration.model == "conversion"


# ------------------------------------------------------------------------------ features

def _parse(token: str) -> tuple[str, str | float]:
    """``key=value`` (text or an integer bin) or ``key:number``, as (key, value)."""
    if "=" in token:
        key, _, value = token.partition("=")
        try:
            return key, float(int(value))
        except ValueError:
            return key, value
    if ":" in token:
        key, _, value = token.partition(":")
        try:
            return key, float(value)
        except ValueError:
            return key, value
    return token, 1.0


def example_items(example: BanditExample, arm: str) -> dict[str, str | float]:
    """The named values of one (decision, arm) pair: every token of the shared namespaces
    and of the arm, ``ns.key``; multi-valued keys (tags) as ``ns.key=value`` -> 1; the
    decision's value as ``log_value``."""
    items: dict[str, str | float] = {}
    for ns, tokens in [*example.shared.items(), ("A", example.arms[arm])]:
        for token in tokens:
            key, value = _parse(token)
            if key in MULTI_VALUED:
                items[f"{ns}.{key}={value}"] = 1.0
            else:
                items[f"{ns}.{key}"] = value
    if example.value is not None:
        items["log_value"] = math.log1p(max(example.value, 0.0))
    return items


@dataclass
class TokenFeaturizer:
    """Columns and category codes learned from a training window; turns (example, arm)
    pairs into LightGBM's numeric matrix (NaN: missing or an unseen category)."""

    columns: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, items: Sequence[dict[str, str | float]]) -> TokenFeaturizer:
        """Every name seen; text values become categories (sorted: stable codes)."""
        names: set[str] = set()
        levels: dict[str, set[str]] = {}
        for row in items:
            for key, value in row.items():
                names.add(key)
                if isinstance(value, str):
                    levels.setdefault(key, set()).add(value)
        return cls(columns=sorted(names),
                   categories={k: sorted(v) for k, v in sorted(levels.items())})

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.columns)}
        self._codes = {k: {v: float(i) for i, v in enumerate(levels)}
                       for k, levels in self.categories.items()}

    @property
    def categorical(self) -> list[int]:
        """Indices of the categorical columns."""
        return [self._index[k] for k in self.categories]

    def transform(self, items: Sequence[dict[str, str | float]]) -> np.ndarray:
        """Shape ``(len(items), len(columns))``."""
        out = np.full((len(items), len(self.columns)), np.nan)
        for r, row in enumerate(items):
            for key, value in row.items():
                c = self._index.get(key)
                if c is None:
                    continue
                if isinstance(value, str):
                    out[r, c] = self._codes.get(key, {}).get(value, np.nan)
                else:
                    out[r, c] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "categories": self.categories}


# --------------------------------------------------------------------------------- model

class RefitReport(BaseModel):
    """What one refit trained on and how it did on held-out rewards (an MLflow run)."""

    version: str
    first_seq: int
    last_seq: int
    rows: int
    train_rows: int
    holdout_rows: int
    conversion_rate: float
    holdout_log_loss: float
    holdout_base_log_loss: float   # predicting the training conversion rate for everyone
    holdout_auc: float | None
    seconds: float


@dataclass
class FittedRewardModel:
    """A LightGBM conversion model and the featurizer it was trained with."""

    version: str
    booster: Any  # lightgbm.Booster (read-only once fitted: safe to share between threads)
    featurizer: TokenFeaturizer
    report: RefitReport | None = None

    def logits(self, example: BanditExample, arms: Sequence[str]) -> np.ndarray:
        """The model's conversion logit of each of ``arms`` on ``example``, shape ``(k,)``."""
        matrix = self.featurizer.transform([example_items(example, arm) for arm in arms])
        return np.asarray(self.booster.predict(matrix, raw_score=True, num_threads=1))

    def to_json(self) -> str:
        """Everything needed to load it again (the booster as LightGBM's text)."""
        return json.dumps({"version": self.version, "featurizer": self.featurizer.to_dict(),
                           "booster": self.booster.model_to_string(),
                           "report": None if self.report is None else self.report.model_dump()})

    @classmethod
    def from_json(cls, text: str) -> FittedRewardModel:
        import lightgbm as lgb

        body = json.loads(text)
        return cls(version=body["version"], booster=lgb.Booster(model_str=body["booster"]),
                   featurizer=TokenFeaturizer(**body["featurizer"]),
                   report=None if body["report"] is None else RefitReport(**body["report"]))


class TrainingRow(BaseModel):
    """One learned reward of the log: the example as logged, the arm shown, the outcome."""

    seq: int
    features: dict[str, Any]
    arm: str
    converted: bool


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC by ranks (None with one class only)."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def fit_reward_model(config: RewardModelConfig, rows: Sequence[TrainingRow], *,
                     seed: int = 0) -> FittedRewardModel:
    """Fit LightGBM's P(convert | example, arm) on ``rows`` (oldest first).

    A seeded ``holdout_share`` of the rows is held out for the report's metrics (log loss
    against the base rate, AUC); the model is trained on the rest. Deterministic for the
    same rows and seed.
    """
    import time

    import lightgbm as lgb

    started = time.perf_counter()
    items = [example_items(BanditExample.model_validate(r.features), r.arm) for r in rows]
    y = np.array([float(r.converted) for r in rows])
    featurizer = TokenFeaturizer.fit(items)
    x = featurizer.transform(items)
    last_seq = rows[-1].seq
    held = np.random.default_rng([seed, last_seq]).random(len(rows)) < config.holdout_share
    params = {"objective": "binary", "learning_rate": config.learning_rate,
              "num_leaves": config.num_leaves, "min_data_in_leaf": config.min_child_samples,
              "lambda_l2": 10.0, "verbose": -1, "seed": seed, "num_threads": 1,
              "deterministic": True, "force_col_wise": True, "max_cat_to_onehot": 8,
              "cat_smooth": 10.0}
    data = lgb.Dataset(x[~held], y[~held], categorical_feature=featurizer.categorical,
                       free_raw_data=True)
    booster = lgb.train(params, data, num_boost_round=config.n_estimators)
    p = np.asarray(booster.predict(x[held], num_threads=1)) if held.any() else np.array([])
    rate = float(y[~held].mean()) if (~held).any() else 0.0
    version = f"{VERSION_PREFIX}{last_seq}"
    report = RefitReport(
        version=version, first_seq=rows[0].seq, last_seq=last_seq, rows=len(rows),
        train_rows=int((~held).sum()), holdout_rows=int(held.sum()),
        conversion_rate=float(y.mean()),
        holdout_log_loss=_log_loss(y[held], p) if held.any() else float("nan"),
        holdout_base_log_loss=(_log_loss(y[held], np.full(int(held.sum()), rate))
                               if held.any() else float("nan")),
        holdout_auc=_auc(y[held], p) if held.any() else None,
        seconds=time.perf_counter() - started)
    return FittedRewardModel(version=version, booster=booster, featurizer=featurizer,
                             report=report)


# -------------------------------------------------------------------------------- bandit

def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


class RewardModelBandit(ConversionBandit):
    """The conversion bandit with a LightGBM reward model beside VW (module docstring).

    ``model`` is the reward model in use (None before the first refit); ``learned_at_fit``
    the rewards learned when it was installed, from which the next refit is counted.
    """

    def __init__(self, config: BanditConfig, *, model_file: Path | None = None,
                 learned: int = 0):
        self.model: FittedRewardModel | None = None
        self.learned_at_fit = 0
        if model_file is not None and zipfile.is_zipfile(model_file):
            with zipfile.ZipFile(model_file) as bundle, tempfile.TemporaryDirectory() as tmp:
                bundle.extract("vw.model", tmp)
                super().__init__(config, model_file=Path(tmp) / "vw.model", learned=learned)
                meta = json.loads(bundle.read("meta.json"))
                self.learned_at_fit = int(meta["learned_at_fit"])
                if "reward_model.json" in bundle.namelist():
                    self.model = FittedRewardModel.from_json(
                        bundle.read("reward_model.json").decode())
        else:  # fresh, or a linear learner's checkpoint (VW alone)
            super().__init__(config, model_file=model_file, learned=learned)

    @property
    def reward_model_version(self) -> str | None:
        """The version of the reward model informing decisions now (None: VW alone)."""
        return None if self.model is None else self.model.version

    # -- predicting ----------------------------------------------------------------------
    def conversion_probabilities(self, example: BanditExample) -> list[float]:
        """P(convert) of each arm: VW alone, or VW combined with the reward model."""
        if self.model is None:
            return super().conversion_probabilities(example)
        arms = list(example.arms)
        shared = self.shared_text(example)
        vw = np.array(vw_predictions(self.workspace, [self.vw_line(example, arm, shared=shared)
                                                      for arm in arms]))
        tree = self.model.logits(example, arms)
        if self.config.reward_model.combine == "residual":
            return _sigmoid(tree + vw).tolist()
        weight = self.config.reward_model.blend_weight
        return (weight * _sigmoid(tree) + (1 - weight) * _sigmoid(vw)).tolist()

    # -- learning ------------------------------------------------------------------------
    def learn(self, example: BanditExample, arm: str, reward: float, probability: float,
              converted: bool) -> None:
        """Learn whether ``arm`` converted: the residual over the reward model's logit
        (``residual``), or the whole logit (``blend``, or before the first refit)."""
        label = 1 if converted else -1
        if self.model is not None and self.config.reward_model.combine == "residual":
            base = float(self.model.logits(example, [arm])[0])
            line = self.vw_line(example, arm)
            # VW's label is "label importance base": the reward model's logit as base.
            vw_learn(self.workspace, f"{label} 1 {base:.9g} {line}")
        else:
            vw_learn(self.workspace, self.vw_line(example, arm, label))
        self.learned += 1

    def refit_due(self) -> bool:
        """Whether enough rewards were learned since the last refit (or to fit the first)."""
        rm = self.config.reward_model
        return (self.learned >= rm.min_rewards
                and (self.model is None or self.learned - self.learned_at_fit >= rm.refit_every))

    def install(self, model: FittedRewardModel) -> None:
        """Decide with ``model`` from now on; in ``residual`` mode VW starts afresh, since
        it learned the residual of the previous model."""
        if self.config.reward_model.combine == "residual":
            old = self.workspace
            self.workspace = type(old)(arg_list=vw_arguments(self.config))
            old.finish()
        self.model = model
        self.learned_at_fit = self.learned

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """One zip: VW's model (with its learning state), the reward model, the counters."""
        with tempfile.TemporaryDirectory() as tmp:
            vw = Path(tmp) / "vw.model"
            self.workspace.save(str(vw))
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as bundle:
                bundle.write(vw, "vw.model")
                bundle.writestr("meta.json", json.dumps({"learned_at_fit": self.learned_at_fit}))
                if self.model is not None:
                    bundle.writestr("reward_model.json", self.model.to_json())



# ------------------------------------------------------------------------ refits, logged

REFIT_EXPERIMENT = "reward_model"


def log_refit(settings: Any, model: FittedRewardModel) -> str:
    """One MLflow run for a refit (experiment ``reward_model``): the data window, the
    held-out metrics, the config, and the model itself as an artifact. Returns the run id.

    Uses the client API only (no active-run state), so it is safe off the main thread.
    """
    from training.registry import configure, experiment_id

    client = configure(settings)
    report = model.report
    assert report is not None  # a freshly fitted model has its report
    run = client.create_run(experiment_id(settings, client, REFIT_EXPERIMENT),
                            run_name=model.version)
    run_id = run.info.run_id
    params = {"version": report.version, "first_seq": report.first_seq,
              "last_seq": report.last_seq, "rows": report.rows,
              **{f"config.{k}": v for k, v in
                 settings.bandit.reward_model.model_dump().items()}}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for key in ("train_rows", "holdout_rows", "conversion_rate", "holdout_log_loss",
                "holdout_base_log_loss", "holdout_auc", "seconds"):
        value = getattr(report, key)
        if value is not None and math.isfinite(value):
            client.log_metric(run_id, key, float(value))
    client.log_text(run_id, model.to_json(), "reward_model.json")
    client.set_terminated(run_id)
    return run_id
