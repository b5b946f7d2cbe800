"""MLflow logging of a simulation: one parent run, one nested run per policy."""

from __future__ import annotations

from pathlib import Path

from experiments.runner import SimulationResult
from nextbest.config import Settings
from nextbest.errors import MissingComponent

EXPERIMENT = "simulation"


def _experiment_id(settings: Settings, name: str) -> str:
    """The id of experiment ``name``, created with artifacts under ``paths.mlruns_dir``."""
    import mlflow

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = (Path(settings.paths.mlruns_dir) / "artifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(name, artifact_location=artifacts.as_uri())


def log_simulation(settings: Settings, result: SimulationResult, plots: list[Path],
                   json_path: Path | None = None) -> str:
    """Log the run; returns the parent run id."""
    try:
        import mlflow
    except ImportError as exc:
        raise MissingComponent("mlflow is not installed; pip install mlflow") from exc
    experiment_id = _experiment_id(settings, EXPERIMENT)
    cfg = result.config
    with mlflow.start_run(experiment_id=experiment_id,
                          run_name=f"simulate-seed{cfg.seed}-n{cfg.decisions}") as parent:
        mlflow.log_params({**cfg.model_dump(), "policies": ",".join(result.metrics),
                           "algorithm_default": settings.bandit.exploration.algorithm,
                           "reward_kind": settings.bandit.reward.kind})
        for name, metrics in result.metrics.items():
            with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True):
                mlflow.log_param("policy", name)
                numbers = {k: v for k, v in metrics.model_dump().items()
                           if isinstance(v, int | float)}
                mlflow.log_metrics(numbers)
                for arm, share in metrics.arm_share.items():
                    mlflow.log_metric(f"arm_share_{arm}", share)
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="plots")
        if json_path is not None:
            mlflow.log_artifact(str(json_path))
        return parent.info.run_id
