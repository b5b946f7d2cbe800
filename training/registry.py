"""The MLflow side: tracking set-up, the model registry, aliases and the champion gate.

Aliases: every new version gets ``challenger``; ``champion`` moves to it only when its
validation ROC AUC is strictly higher than each baseline's of its own run and than the
champion's re-scored on the same validation rows (a tie keeps the champion), or when forced.
:func:`load_version` is shared by the gate and by the serving loader, so the champion is
scored the same way in both places.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from nextbest.config import Settings
from nextbest.errors import NotFound
from training import pyfunc
from training.model import ModelSpec

log = logging.getLogger(__name__)
CHAMPION = "champion"
CHALLENGER = "challenger"
KEY_METRICS = ("roc_auc", "pr_auc", "log_loss", "ece")
TUNE_TRIALS_PARAM = "tune_trials"


def quiet_mlflow() -> None:
    """Silence MLflow's and alembic's chatter (database migrations, progress bars, warnings)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow tracking and registry at ``settings.mlflow_tracking_uri`` and return a client.

    A local ``sqlite:///`` URI gets its directory created, since MLflow does not.
    """
    quiet_mlflow()
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings, client: MlflowClient, name: str) -> str:
    """The experiment ``name``, created with artifacts under ``paths.mlruns_dir/artifacts``."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (Path(settings.paths.mlruns_dir) / "artifacts" / name).resolve()
    location.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=location.as_uri())


@dataclass
class LoadedModel:
    """A registered version as serving uses it: raw booster plus its spec."""

    name: str
    version: str
    booster: lgb.Booster
    spec: ModelSpec


def resolve_version(client: MlflowClient, name: str, ref: str) -> str:
    """The version number behind ``ref`` (an alias or a number); NotFound, listing the
    versions that exist, if there is none."""
    try:
        if ref.isdigit():
            return str(client.get_model_version(name, ref).version)
        return str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException as exc:
        raise NotFound(_missing_version(client, name, ref), field="model") from exc


def _missing_version(client: MlflowClient, name: str, ref: str) -> str:
    """Why ``ref`` of ``name`` cannot be found, with the versions and aliases that exist."""
    versions = sorted(int(mv.version) for mv in client.search_model_versions(f"name = '{name}'"))
    if not versions:
        return f"no model {name!r} is registered yet; run `nextbest train {name}` first"
    aliases = sorted(client.get_registered_model(name).aliases.items())
    listing = ", ".join(map(str, versions))
    if aliases:
        listing += " (" + ", ".join(f"{alias} {version}" for alias, version in aliases) + ")"
    wanted = f"version {ref}" if ref.isdigit() else f"version with alias {ref!r}"
    return (f"model {name!r} has no {wanted}; its versions are {listing}; "
            f"`nextbest models promote {name} VERSION` makes one the champion")


def load_version(client: MlflowClient, name: str, ref: str) -> LoadedModel:
    """Load version/alias ``ref`` of ``name`` through its pyfunc and keep the raw booster and
    spec (the very artifacts ``mlflow.pyfunc.load_model`` reads)."""
    version = resolve_version(client, name, ref)
    return load_directory(name, version, f"models:/{name}/{version}")


def load_directory(name: str, version: str, location: str | Path) -> LoadedModel:
    """Version ``version`` of ``name`` from ``location``: a ``models:/`` URI or the model's
    directory copied out of the registry (the bento's model store keeps one)."""
    model = pyfunc.load(str(location))
    return LoadedModel(name=name, version=version, booster=model.booster, spec=model.spec)


def champion(client: MlflowClient, name: str) -> LoadedModel | None:
    """The current champion of ``name``, or None when there is none yet."""
    try:
        client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    try:
        return load_version(client, name, CHAMPION)
    except NotFound as exc:  # registered by an older nextbest: nothing to compare with
        log.warning("%s; the new version is compared with no champion", exc.message)
        return None


def unbeaten_baselines(roc_auc: float, baselines: Mapping[str, float]) -> dict[str, float]:
    """The baselines (name -> ROC AUC) that ``roc_auc`` does not strictly exceed."""
    return {name: auc for name, auc in baselines.items() if not roc_auc > auc}


def _baselines_text(roc_auc: float, unbeaten: Mapping[str, float]) -> str:
    return (f"ROC AUC {roc_auc:.4f} does not beat its baseline"
            f"{'s' if len(unbeaten) > 1 else ''} "
            + ", ".join(f"{name} {auc:.4f}" for name, auc in unbeaten.items()))


class GateDecision(BaseModel):
    """Outcome of the champion gate, printed and logged with every number it used."""

    promoted: bool
    forced: bool
    challenger_version: str
    challenger_roc_auc: float
    champion_version: str | None = None
    champion_roc_auc: float | None = None
    baseline_roc_auc: dict[str, float] = {}
    unbeaten_baselines: dict[str, float] = {}
    reason: str

    def message(self) -> str:
        """One line for the console and the run's tags."""
        if self.promoted:
            verdict = "champion moves to"
        elif self.champion_version is None:
            verdict = "no champion; challenger is"
        else:
            verdict = "champion stays; challenger is"
        return f"{verdict} version {self.challenger_version}: {self.reason}"

    def warning(self) -> str | None:
        """One line for stderr when the challenger does not beat a baseline of its own run."""
        if not self.unbeaten_baselines:
            return None
        outcome = ("promoted anyway (--force)" if self.promoted else
                   "not promoted; --force (or `nextbest models promote`) promotes it anyway")
        return (f"version {self.challenger_version} "
                f"{_baselines_text(self.challenger_roc_auc, self.unbeaten_baselines)}: {outcome}")


def decide(challenger_version: str, challenger_auc: float, champion_version: str | None,
           champion_auc: float | None, *, baselines: Mapping[str, float],
           force: bool) -> GateDecision:
    """Promote when the challenger's ROC AUC is higher than every baseline's of its own run
    (``baselines``: name -> ROC AUC on the same evaluation rows) and higher than the
    champion's re-scored on the same rows (or there is no champion); or when ``force`` is set.

    Strictly higher, both times: a tie keeps the champion (a retrain on the same data
    reproduces the same model, and a version that is not better has not earned the move), and
    a model that ties a heuristic is not worth serving over it.
    """
    better = champion_auc is None or challenger_auc > champion_auc
    unbeaten = unbeaten_baselines(challenger_auc, baselines)
    if champion_auc is None:
        reason = f"no champion yet (challenger ROC AUC {challenger_auc:.4f})"
    else:
        relation = ">" if better else ("=" if challenger_auc == champion_auc else "<")
        reason = (f"challenger ROC AUC {challenger_auc:.4f} {relation} champion "
                  f"v{champion_version} {champion_auc:.4f} on the same validation rows")
    if unbeaten:
        reason += f"; its {_baselines_text(challenger_auc, unbeaten)}"
    earned = better and not unbeaten
    if not earned:
        why = [text for text, failed in (("not better", not better),
                                         ("below its baselines", bool(unbeaten))) if failed]
        reason += " (promoted anyway: --force)" if force else f" ({', '.join(why)})"
    return GateDecision(promoted=earned or force, forced=force and not earned,
                        challenger_version=challenger_version, challenger_roc_auc=challenger_auc,
                        champion_version=champion_version, champion_roc_auc=champion_auc,
                        baseline_roc_auc=dict(baselines), unbeaten_baselines=unbeaten,
                        reason=reason)


def apply_decision(client: MlflowClient, name: str, decision: GateDecision) -> None:
    """Give the new version ``challenger`` and, when promoted, ``champion``."""
    client.set_registered_model_alias(name, CHALLENGER, decision.challenger_version)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, decision.challenger_version)


def register_version(client: MlflowClient, name: str, model_uri: str, run_id: str,
                     model_id: str | None) -> str:
    """Register a logged model as a new version of ``name`` (creating ``name`` if needed).

    Done through the client rather than ``log_model(registered_model_name=...)``, which
    prints registration chatter to stderr.
    """
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=model_uri, run_id=run_id, model_id=model_id)
    return str(mv.version)


def promote(client: MlflowClient, name: str, version: str) -> VersionRow:
    """Make ``version`` of ``name`` the champion by hand (the gate's ``--force`` after the fact);
    returns its row (see :meth:`VersionRow.warning` for a version below its baselines)."""
    version = resolve_version(client, name, version)
    client.set_registered_model_alias(name, CHAMPION, version)
    by_version = aliases_by_version(client.get_registered_model(name).aliases)
    return _version_row(client, client.get_model_version(name, version), by_version)


def aliases_by_version(aliases: dict[str, str | int]) -> dict[str, list[str]]:
    """Invert the registered model's ``{alias: version}`` map."""
    out: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return out


class VersionRow(BaseModel):
    """One line of ``nextbest models list``: a version, its run and its validation metrics."""

    name: str
    version: str
    aliases: list[str]
    created: datetime
    run_id: str | None
    run_name: str | None
    tune_trials: int | None = None
    metrics: dict[str, float]

    def baseline_roc_auc(self) -> dict[str, float]:
        """ROC AUC of each baseline of the version's run, by baseline name."""
        return {key.removeprefix("baseline_").removesuffix("_roc_auc"): value
                for key, value in self.metrics.items()
                if key.startswith("baseline_") and key.endswith("_roc_auc")}

    def warning(self) -> str | None:
        """One line when the version's ROC AUC does not beat a baseline of its own run."""
        auc = self.metrics.get("roc_auc")
        unbeaten = unbeaten_baselines(auc, self.baseline_roc_auc()) if auc is not None else {}
        if not unbeaten:
            return None
        return f"{self.name} version {self.version} {_baselines_text(auc, unbeaten)}"


def _version_row(client: MlflowClient, mv: ModelVersion,
                 by_version: dict[str, list[str]]) -> VersionRow:
    """The row of one registered version, with its run's name, tuning and key metrics."""
    metrics: dict[str, float] = {}
    run_name = trials = None
    if mv.run_id:
        run = client.get_run(mv.run_id)
        run_name = run.info.run_name
        trials = run.data.params.get(TUNE_TRIALS_PARAM)
        metrics = {k: v for k, v in run.data.metrics.items()
                   if k in KEY_METRICS or (k.startswith("baseline_") and k.endswith("_roc_auc"))}
    return VersionRow(name=mv.name, version=str(mv.version),
                      aliases=by_version.get(str(mv.version), []),
                      created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
                      run_id=mv.run_id, run_name=run_name,
                      tune_trials=int(trials) if trials is not None else None, metrics=metrics)


def list_versions(client: MlflowClient, names: tuple[str, ...]) -> list[VersionRow]:
    """Every registered version of ``names`` with its aliases, run and key validation metrics."""
    rows = []
    for name in names:
        try:
            by_version = aliases_by_version(client.get_registered_model(name).aliases)
        except MlflowException:
            continue
        rows += [_version_row(client, mv, by_version)
                 for mv in client.search_model_versions(f"name = '{name}'")]
    return sorted(rows, key=lambda r: (r.name, int(r.version)))
