"""The MLflow side: tracking set-up, the model registry, aliases and the champion gate.

Aliases: every new version gets ``challenger``; ``champion`` moves to it only when its
validation ROC AUC beats the champion's re-scored on the same validation rows (a tie keeps
the champion), or when forced. :func:`load_version` is shared by the gate and by the serving loader, so the
champion is scored the same way in both places.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from nextbest.config import Settings
from nextbest.errors import NotFound
from training.model import ModelSpec

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_FILE = "model.lgb"
SPEC_FILE = "model_spec.json"
KEY_METRICS = ("roc_auc", "pr_auc", "log_loss", "ece")


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
    """The version number behind ``ref`` (an alias or a number); NotFound if there is none."""
    try:
        if ref.isdigit():
            return str(client.get_model_version(name, ref).version)
        return str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException as exc:
        raise NotFound(f"model {name!r} has no version or alias {ref!r}; run "
                       f"`nextbest train {name}` first", field="model") from exc


def load_version(client: MlflowClient, name: str, ref: str) -> LoadedModel:
    """Download version/alias ``ref`` of ``name`` and load its raw LightGBM booster and spec."""
    version = resolve_version(client, name, ref)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        booster = lgb.Booster(model_file=str(local / MODEL_FILE))
        spec = ModelSpec.model_validate_json((local / "extra_files" / SPEC_FILE).read_text())
    return LoadedModel(name=name, version=version, booster=booster, spec=spec)


def champion(client: MlflowClient, name: str) -> LoadedModel | None:
    """The current champion of ``name``, or None when there is none yet."""
    try:
        client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return load_version(client, name, CHAMPION)


class GateDecision(BaseModel):
    """Outcome of the champion gate, printed and logged with both numbers."""

    promoted: bool
    forced: bool
    challenger_version: str
    challenger_roc_auc: float
    champion_version: str | None = None
    champion_roc_auc: float | None = None
    reason: str

    def message(self) -> str:
        """One line for the console and the run's tags."""
        verdict = "champion moves to" if self.promoted else "champion stays; challenger is"
        return f"{verdict} version {self.challenger_version}: {self.reason}"


def decide(challenger_version: str, challenger_auc: float, champion_version: str | None,
           champion_auc: float | None, force: bool) -> GateDecision:
    """Promote when there is no champion, the challenger's ROC AUC is higher than the
    champion's on the same validation rows, or ``force`` is set.

    A tie keeps the champion: a retrain on the same data reproduces the same model, and a
    version that is not better has not earned the move (the issue's "only if at least as
    good" is necessary, not sufficient).
    """
    better = champion_auc is None or challenger_auc > champion_auc
    if champion_auc is None:
        reason = f"no champion yet (challenger ROC AUC {challenger_auc:.4f})"
    else:
        relation = ">" if better else ("=" if challenger_auc == champion_auc else "<")
        reason = (f"challenger ROC AUC {challenger_auc:.4f} {relation} champion "
                  f"v{champion_version} {champion_auc:.4f} on the same validation rows")
        if not better:
            reason += " (promoted anyway: --force)" if force else " (not better)"
    return GateDecision(promoted=better or force, forced=force and not better,
                        challenger_version=challenger_version, challenger_roc_auc=challenger_auc,
                        champion_version=champion_version, champion_roc_auc=champion_auc,
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


def promote(client: MlflowClient, name: str, version: str) -> str:
    """Make ``version`` of ``name`` the champion by hand (the gate's ``--force`` after the fact)."""
    version = resolve_version(client, name, version)
    client.set_registered_model_alias(name, CHAMPION, version)
    return version


def aliases_by_version(aliases: dict[str, str | int]) -> dict[str, list[str]]:
    """Invert the registered model's ``{alias: version}`` map."""
    out: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return out


class VersionRow(BaseModel):
    """One line of ``nextbest models list``."""

    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    created: int
    metrics: dict[str, float]


def list_versions(client: MlflowClient, names: tuple[str, ...]) -> list[VersionRow]:
    """Every registered version of ``names`` with its aliases and key validation metrics."""
    rows = []
    for name in names:
        try:
            by_version = aliases_by_version(client.get_registered_model(name).aliases)
        except MlflowException:
            continue
        for mv in client.search_model_versions(f"name = '{name}'"):
            metrics: dict[str, float] = {}
            if mv.run_id:
                run_metrics = client.get_run(mv.run_id).data.metrics
                metrics = {k: run_metrics[k] for k in KEY_METRICS if k in run_metrics}
                metrics.update({k: v for k, v in run_metrics.items() if k.endswith("_roc_auc")})
            rows.append(VersionRow(name=name, version=str(mv.version), aliases=by_version.get(str(mv.version), []),
                                   run_id=mv.run_id, created=mv.creation_timestamp,
                                   metrics=metrics))
    return sorted(rows, key=lambda r: (r.name, int(r.version)))


def spec_json(spec: ModelSpec) -> str:
    """The spec as the JSON file logged beside the model."""
    return json.dumps(spec.model_dump(), indent=1)
