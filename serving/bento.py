"""The bento that carries its models: ``nextbest bento build`` and how the service reads it.

Building (:func:`build_bento`):

1. Each champion of the MLflow registry (``churn`` and ``propensity``, required; ``ltv`` and
   ``sentiment`` when registered, their newest version when no champion alias exists) is
   imported into BentoML's model store with ``bentoml.mlflow.import_model`` as
   ``nextbest-<name>``, labelled with its registered name, version and run; the bandit's
   latest checkpoint (``paths.bandit_dir``) becomes ``nextbest-bandit``, labelled with the
   log position and config fingerprint it covers. A model already imported from the same
   registry version (or the same checkpoint) is reused, not copied again. Every other
   enabled decision point's latest checkpoint becomes ``nextbest-bandit-<point>``.
2. ``bentoml build`` runs on ``bentofile.yaml`` with one bento argument, ``nextbest``: a
   :class:`Bundle` naming those model tags and the build's configuration (without its paths
   and secrets). The service declares each named model as a ``BentoModel``, so the bento
   references them and ``bentoml containerize`` / ``bentoml export`` copy them along.

Serving: BentoML hands the argument back to the service when it runs from the bento
(:func:`bundle_from_arguments`). The service then loads its champions from the bento's model
store instead of the registry (and never polls the registry: the bento's versions are
fixed), seeds each decision point's bandit directory with its bundled checkpoint when it
holds none, and reads its settings from the bundled configuration, the config file named
by ``NEXTBEST_CONFIG`` and ``NEXTBEST__*`` variables. ``paths.data_dir`` defaults to
:data:`BENTO_DATA_DIR` there (the bento's own directory is no place for a decision log).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.exceptions import NotFound as BentoNotFound
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from decisions.learner import CheckpointMeta, CheckpointStore, StagedCheckpoint
from nextbest.config import DEFAULT_POINT, Settings, load_settings
from nextbest.errors import ConfigError, MissingComponent, NotFound
from training.labels import LTV_MODEL, SENTIMENT_MODEL
from training.loader import CHURN, PROPENSITY, ChampionModels
from training.registry import CHAMPION, configure, load_directory, resolve_version

log = logging.getLogger(__name__)

ARGUMENT = "nextbest"          # the bento argument holding the Bundle
MODEL_PREFIX = "nextbest-"     # BentoML model names: nextbest-churn, nextbest-bandit, ...
BANDIT = "bandit"
REQUIRED = (CHURN, PROPENSITY)
OPTIONAL = (LTV_MODEL, SENTIMENT_MODEL)
BANDIT_MODEL_FILE = "model.vw"
BANDIT_META_FILE = "checkpoint.json"
SEED_LOCK = "seed.lock"
BENTO_DATA_DIR = "~/.nextbest/data"
REPO = Path(__file__).resolve().parents[1]
Say = Callable[[str], None]


class BundledModel(BaseModel):
    """One model a bento carries: its BentoML tag and where it came from."""

    tag: str
    registry_name: str | None = None     # the MLflow registered model (None: the bandit)
    registry_version: str | None = None
    checkpoint_seq: int | None = None    # the bandit: reward log position it covers


class Bundle(BaseModel):
    """What ``nextbest bento build`` puts into the bento argument ``nextbest``."""

    models: dict[str, BundledModel]
    config: dict[str, Any]

    def versions(self) -> dict[str, str]:
        """Registered version of each bundled registry model, e.g. ``{"churn": "3"}``."""
        return {key: str(m.registry_version) for key, m in self.models.items()
                if m.registry_version is not None}

    def reference(self, key: str) -> bentoml.models.BentoModel | None:
        """The ``BentoModel`` of a bundled model (a service class attribute), or None."""
        model = self.models.get(key)
        return bentoml.models.BentoModel(model.tag) if model else None

    def path(self, key: str) -> Path:
        """The directory of a bundled model in the model store the service reads (the
        bento's own when it carries its models, else ``$BENTOML_HOME/models``)."""
        return Path(bentoml.models.get(self.models[key].tag).path)

    def settings(self, environ: dict[str, str] | None = None) -> Settings:
        """The service's settings: built-in defaults, then the bundled configuration
        (``paths.data_dir`` = :data:`BENTO_DATA_DIR`), then ``NEXTBEST_CONFIG`` and
        ``NEXTBEST__*`` variables."""
        base = {**self.config, "paths": {"data_dir": BENTO_DATA_DIR}}
        return load_settings(None, environ=environ, base=base)


def bundle_from_arguments() -> Bundle | None:
    """The bundle of the bento this service runs from (or is being built into), or None
    when it runs from source (``nextbest serve``)."""
    value = getattr(bentoml.use_arguments(), ARGUMENT, None)
    return Bundle.model_validate(value) if value else None


def carried_config(settings: Settings) -> dict[str, Any]:
    """The configuration a bento carries: everything but the build host's paths, its
    MLflow URI and its secrets (the id salt, channel HMAC keys, the Redis URL, which may
    hold a password): a container gets those from its environment. The online store is
    Redis (``NEXTBEST__STORE__REDIS_URL``): a bento's is shared, not a file of the build."""
    config = settings.model_dump(mode="json", exclude={"paths", "mlflow_tracking_uri"})
    config["privacy"].pop("id_salt", None)
    config["store"].pop("redis_url", None)
    config["store"]["backend"] = "redis"
    for channel in config["channels"].values():
        channel.pop("secret", None)
    return config


# --- build ---------------------------------------------------------------------------------

def _stored(name: str, labels: dict[str, str]) -> bentoml.Model | None:
    """The newest model ``name`` of the store whose labels include ``labels``."""
    try:
        candidates = bentoml.models.list(name)
    except BentoNotFound:
        return None
    matching = [m for m in candidates if labels.items() <= m.info.labels.items()]
    return max(matching, key=lambda m: m.info.creation_time, default=None)


def _registry_version(client: MlflowClient, name: str, *, required: bool) -> str | None:
    """The champion's version of ``name``; for an optional model without a champion alias
    its newest version; None when an optional model is not registered."""
    if required:
        return resolve_version(client, name, CHAMPION)
    try:
        return resolve_version(client, name, CHAMPION)
    except NotFound:
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return None
        return str(max(int(v.version) for v in versions)) if versions else None


def import_registry_model(settings: Settings, client: MlflowClient, name: str,
                          version: str) -> BundledModel:
    """Version ``version`` of registered model ``name`` in BentoML's model store, labelled
    with its registry version and run (reused when already imported)."""
    mv = client.get_model_version(name, version)
    labels = {"registry_model": name, "registry_version": str(version),
              "run_id": str(mv.run_id or "")}
    model = _stored(MODEL_PREFIX + name, labels)
    if model is None:
        model = bentoml.mlflow.import_model(
            MODEL_PREFIX + name, f"models:/{name}/{version}", labels=labels,
            metadata={"registry_uri": settings.mlflow_tracking_uri, "source": str(mv.source),
                      "aliases": ",".join(sorted(mv.aliases or []))})
    return BundledModel(tag=str(model.tag), registry_name=name, registry_version=str(version))


def bandit_key(point: str) -> str:
    """The bundle key (and BentoML model name after ``nextbest-``) of a decision point's
    checkpoint: ``bandit`` for the default point (as bentos built before decision points
    have it), ``bandit-<point>`` for the others."""
    return BANDIT if point == DEFAULT_POINT else f"{BANDIT}-{point}"


def import_bandit(settings: Settings, point: str = DEFAULT_POINT) -> BundledModel | None:
    """The latest checkpoint of decision point ``point`` as ``nextbest-bandit`` (the
    default point) or ``nextbest-bandit-<point>``; None when it has none."""
    name = MODEL_PREFIX + bandit_key(point)
    try:
        bentoml.models.BentoModel(name)
    except (BentoMLException, ValueError) as exc:
        raise ConfigError(f"decision point {point!r} cannot name a bento model ({exc}): use "
                          "lowercase letters, digits and '_'") from exc
    store = CheckpointStore(Path(settings.for_point(point).paths.bandit_dir))
    for _ in range(3):  # a checkpoint pruned between reading latest.json and copying it
        meta = store.latest()
        if meta is None:
            return None
        labels = {"fingerprint": meta.fingerprint, "seq": str(meta.seq),
                  "created": meta.created.isoformat(), "decision_point": point}
        model = _stored(name, labels)
        if model is not None:
            return BundledModel(tag=str(model.tag), checkpoint_seq=meta.seq)
        try:
            with bentoml.models.create(name, labels=labels,
                                       metadata={"rewards_learned": meta.rewards_learned}) as model:
                shutil.copyfile(store.model_path(meta), model.path_of(BANDIT_MODEL_FILE))
                Path(model.path_of(BANDIT_META_FILE)).write_text(meta.model_dump_json())
        except FileNotFoundError:
            continue
        return BundledModel(tag=str(model.tag), checkpoint_seq=meta.seq)
    raise MissingComponent(f"the bandit checkpoints in {store.dir} keep changing; stop the "
                           "learner or retry")


def import_models(settings: Settings, *, say: Say = print) -> Bundle:
    """Import the champions and the bandit's latest checkpoint into BentoML's model store;
    :class:`~nextbest.errors.NotFound` when a required champion is missing."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise NotFound(f"no MLflow registry at {uri}: run `nextbest train churn` and "
                       "`nextbest train propensity` first (or set MLFLOW_TRACKING_URI)",
                       field="mlflow_tracking_uri")
    client = configure(settings)
    models: dict[str, BundledModel] = {}
    for name in REQUIRED + OPTIONAL:
        version = _registry_version(client, name, required=name in REQUIRED)
        if version is None:
            say(f"no {name} model registered: the bento carries none")
            continue
        models[name] = import_registry_model(settings, client, name, version)
        say(f"{name} version {version} -> {models[name].tag}")
    for point in settings.point_names:
        bandit = import_bandit(settings, point)
        where = settings.for_point(point).paths.bandit_dir
        if bandit is None:
            say(f"no {point} checkpoint in {where}: the bento's service starts that decision "
                "point's bandit fresh")
        else:
            models[bandit_key(point)] = bandit
            say(f"{point} checkpoint at log position {bandit.checkpoint_seq} -> {bandit.tag}")
    return Bundle(models=models, config=carried_config(settings))


def build_bento(settings: Settings, *, bentofile: Path | None = None, version: str | None = None,
                say: Say = print) -> bentoml.Bento:
    """Import the models (:func:`import_models`) and build the bento of ``bentofile``
    (default: the one beside the sources) so that it carries them."""
    bentofile = Path(bentofile or REPO / "bentofile.yaml").resolve()
    if not bentofile.is_file():
        raise NotFound(f"no bentofile at {bentofile}", field="bentofile")
    bundle = import_models(settings, say=say)
    labels = {f"{key}_version": value for key, value in bundle.versions().items()}
    try:
        return bentoml.bentos.build_bentofile(
            str(bentofile), build_ctx=str(bentofile.parent), version=version, labels=labels,
            args={ARGUMENT: bundle.model_dump(mode="json")})
    except BentoMLException as exc:
        raise ConfigError(f"bentoml build of {bentofile} failed: {exc}") from exc


# --- serve ---------------------------------------------------------------------------------

def load_bundled_champions(bundle: Bundle) -> ChampionModels:
    """The churn and propensity champions from the bento's model store."""
    loaded = {}
    for name in REQUIRED:
        model = bundle.models[name]
        loaded[name] = load_directory(name, str(model.registry_version),
                                      bundle.path(name) / "mlflow_model")
    return ChampionModels(churn=loaded[CHURN], propensity=loaded[PROPENSITY])


def seed_bandit(settings: Settings, bundle: Bundle) -> dict[str, CheckpointMeta]:
    """Publish each bundled decision point's checkpoint into its bandit directory when that
    holds none yet (a first start); returns what was published, by decision point.

    A seed covers log position 0: the decision log of the new deployment is not the one
    the checkpoint was trained from, so every reward in it is still to be learned.
    """
    seeded = {}
    for point in settings.point_names:
        key = bandit_key(point)
        if key in bundle.models:
            meta = _seed_point(settings.for_point(point), bundle, key)
            if meta is not None:
                seeded[point] = meta
    return seeded


def _seed_point(settings: Settings, bundle: Bundle, key: str) -> CheckpointMeta | None:
    store = CheckpointStore(Path(settings.paths.bandit_dir))
    with (store.dir / SEED_LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the workers of one service start together
        if store.latest() is not None:
            return None
        source = bundle.path(key)
        meta = CheckpointMeta.model_validate_json((source / BANDIT_META_FILE).read_text())
        meta = meta.model_copy(update={"seq": 0, "model_file": f"model-{0:012d}.vw"})
        staged = store.dir / f".seed-{os.getpid()}.tmp"
        shutil.copyfile(source / BANDIT_MODEL_FILE, staged)
        published = store.publish(StagedCheckpoint(meta, staged))
    log.info("%s seeded from %s (%d rewards learned) in %s", settings.decision_point,
             bundle.models[key].tag, meta.rewards_learned, store.dir)
    return published
