"""Cutoffs and the out-of-time training set (docs/ARCHITECTURE.md, training/).

The validation cutoff T is named by ``--as-of`` or defaults to the latest cutoff whose label
window is complete in the data. Training uses ``n`` monthly cutoffs before T whose label
windows close by T, so no training label looks past T. There is no random row split.
Features for every cutoff come from ``features.build`` (reused when already built).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from features.build import (
    build_features,
    categorical_columns,
    default_as_of,
    feature_columns,
    load_features,
    seller_feature_columns,
)
from nextbest.config import Settings
from nextbest.errors import DataError, NotFound
from training.labels import SELLER_CHURN, ModelName, horizon_days, labels_at

Say = Callable[[str], None]


class CutoffPlan(BaseModel):
    """The validation cutoff and the training cutoffs (oldest first) of one run."""

    validation: date
    training: list[date]
    horizon_days: int

    def all(self) -> list[date]:
        """Every cutoff the run needs features for, oldest first."""
        return [*self.training, self.validation]


def plan_cutoffs(validation: date, horizon: int, n: int, step_days: int, *,
                 on_grid: bool = True) -> CutoffPlan:
    """``n`` cutoffs ``step_days`` apart whose label windows ``[t, t + horizon)`` end by T.

    The latest training cutoff is T minus the horizon rounded up to whole steps, so the
    cutoffs stay on the monthly grid anchored at T; with ``on_grid`` false it is T minus the
    horizon itself (its window closes exactly at T: the most recent behaviour there is).
    """
    if n < 1:
        raise DataError(f"cutoffs must be at least 1, got {n}", field="cutoffs")
    gap = math.ceil(horizon / step_days) * step_days if on_grid else horizon
    training = [validation - timedelta(days=gap + k * step_days) for k in range(n)]
    return CutoffPlan(validation=validation, training=sorted(training), horizon_days=horizon)


def resolve_validation_cutoff(settings: Settings, model_name: ModelName, raw_dir: Path,
                              as_of: date | None) -> date:
    """``as_of`` if its label window is complete in the data, else the latest such cutoff."""
    return latest_cutoff(settings, horizon_days(model_name, settings.training.labels), raw_dir,
                         as_of)


def latest_cutoff(settings: Settings, horizon: int, raw_dir: Path, as_of: date | None) -> date:
    """``as_of`` if a ``horizon``-day label window from it is complete in the data, else the
    latest cutoff whose window is; DataError for an ``as_of`` whose window is not."""
    # Labels are read from orders: events streamed in since the last orders import must not
    # make a label window look complete before its orders are in.
    end = default_as_of(settings, raw_dir, tables=("orders",))
    latest = end - timedelta(days=horizon)
    if as_of is None:
        return latest
    if as_of > latest:
        raise DataError(
            f"as_of {as_of.isoformat()}: its {horizon}-day label window ends after the data "
            f"(last day {end - timedelta(days=1)}); use {latest.isoformat()} or earlier",
            field="as_of")
    return as_of


def model_columns(settings: Settings, model_name: str | None = None
                  ) -> tuple[list[str], list[str]]:
    """Model inputs of ``model_name`` in their fixed order, and which are categorical: the
    buyer features, plus the seller features for seller churn.

    Refuses (ConfigError) a list holding one of ``policy.forbidden_features``: no model may
    learn from the user's device, operating system or network address.
    """
    windows = settings.features.windows_days
    names = feature_columns(windows)
    if model_name == SELLER_CHURN:
        names = names[:-len(categorical_columns())] + seller_feature_columns(windows) \
            + categorical_columns()
    settings.policy.refuse_forbidden(names, "training: the model's feature list")
    return names, categorical_columns()


def features_at(settings: Settings, cutoff: date, raw_dir: Path, *, rebuild: bool,
                say: Say) -> pd.DataFrame:
    """The features of ``cutoff``: reused from ``features_dir`` or built (without the store)."""
    if not rebuild:
        try:
            frame = load_features(settings, cutoff)
            say(f"  features as_of {cutoff}: reused ({len(frame)} users)")
            return frame
        except NotFound:
            pass
    say(f"  features as_of {cutoff}: building")
    return build_features(settings, cutoff, raw_dir=raw_dir, refresh_store=False, progress=False)


def _numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Numeric inputs as float32 (half the memory of float64; LightGBM bins them anyway)."""
    return frame[columns].apply(pd.to_numeric, errors="coerce").astype(np.float32)


def inputs_at(settings: Settings, cutoff: date, raw_dir: Path, *, rebuild: bool,
              say: Say, model_name: str | None = None) -> pd.DataFrame:
    """``user_id`` and the model inputs (of ``model_name``) of every user with features at
    ``cutoff``."""
    names, categorical = model_columns(settings, model_name)
    feats = features_at(settings, cutoff, raw_dir, rebuild=rebuild, say=say)
    missing = [c for c in [*names, "user_id"] if c not in feats.columns]
    if missing:
        raise DataError(f"features as_of {cutoff} lack columns {missing}; rebuild them with "
                        "`--rebuild-features`", field="features")
    numeric = [c for c in names if c not in categorical]
    return pd.concat([feats[["user_id"]].astype(str), _numeric(feats, numeric),
                      feats[categorical].astype("string")], axis=1)


def with_inputs(settings: Settings, labels: pd.DataFrame, cutoff: date, raw_dir: Path, *,
                rebuild: bool, say: Say, model_name: str | None = None) -> pd.DataFrame:
    """``labels`` (one row per population user) with ``cutoff`` and the model inputs added.

    Users in the population with no feature row (none expected) get all-missing inputs
    rather than being dropped, so the population stays exactly as the labels define it.
    """
    if labels.empty:
        raise DataError(f"no user of the model's population was active in the "
                        f"{settings.training.labels.population_days} days before cutoff "
                        f"{cutoff}; use fewer --cutoffs or a later --as-of", field="cutoffs")
    inputs = inputs_at(settings, cutoff, raw_dir, rebuild=rebuild, say=say,
                       model_name=model_name)
    frame = labels.merge(inputs, on="user_id", how="left", validate="one_to_one")
    frame.insert(1, "cutoff", pd.Timestamp(cutoff))
    return frame


def examples_at(settings: Settings, model_name: ModelName, cutoff: date, raw_dir: Path, *,
                rebuild: bool, say: Say) -> pd.DataFrame:
    """One row per population user at ``cutoff``: ``user_id, cutoff, label`` + model inputs."""
    labels = labels_at(raw_dir, cutoff, model_name, settings.training.labels)
    frame = with_inputs(settings, labels, cutoff, raw_dir, rebuild=rebuild, say=say,
                        model_name=model_name)
    names, _ = model_columns(settings, model_name)
    return frame[["user_id", "cutoff", "label", *names]]


@dataclass
class TrainingData:
    """The assembled out-of-time data of one run."""

    train: pd.DataFrame
    valid: pd.DataFrame
    plan: CutoffPlan
    feature_names: list[str]
    categorical: list[str]


def assemble(settings: Settings, model_name: ModelName, plan: CutoffPlan, raw_dir: Path, *,
             rebuild: bool = False, say: Say = print) -> TrainingData:
    """Labels and features for every cutoff of ``plan``, stacked into train and validation."""
    parts = []
    for cutoff in plan.training:
        parts.append(examples_at(settings, model_name, cutoff, raw_dir, rebuild=rebuild, say=say))
    valid = examples_at(settings, model_name, plan.validation, raw_dir, rebuild=rebuild, say=say)
    names, categorical = model_columns(settings, model_name)
    return TrainingData(train=pd.concat(parts, ignore_index=True), valid=valid, plan=plan,
                        feature_names=names, categorical=categorical)
