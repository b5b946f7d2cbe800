"""The bento carries its models: ``nextbest bento build``, then ``bentoml serve`` of the bento
in an empty directory with only Redis configured, answering ``/score`` with the registry's
versions (integration); and the unit pieces: the pins, the carried configuration."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_key import HEADERS
from redis_server import RedisServerError, running_redis

from decisions.engine import DecisionEngine
from decisions.learner import CheckpointStore
from decisions.policy import RequestContext, seller_view, user_view
from features.build import load_features
from features.store import open_store
from nextbest.config import Settings, load_settings
from serving.bento import BENTO_DATA_DIR, Bundle, carried_config

REPO = Path(__file__).resolve().parents[2]
# Installed for training only: a bento must not carry them.
TRAINING_ONLY = {"pyspark", "matplotlib", "lifetimes", "optuna", "fairlearn"}
BANDIT_DECISIONS = 40


def _pins(specs: list[str]) -> dict[str, str]:
    """``{package: spec}`` of requirement strings (extras dropped from the name)."""
    return {re.split(r"[\[<>=]", spec, maxsplit=1)[0].lower(): spec for spec in specs}


def test_bento_packages_are_the_serving_pins_without_training_ones() -> None:
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bento = _pins(bentofile["python"]["packages"])
    pinned = _pins(project["dependencies"])
    assert not TRAINING_ONLY & set(bento), "training-only packages in bentofile.yaml"
    assert set(bento) == set(pinned) - TRAINING_ONLY
    for name, spec in bento.items():
        # Same version as pyproject.toml (ibis without its pyspark extra).
        assert spec.replace("[duckdb]", "[duckdb,pyspark]") == pinned[name], name


def test_the_server_takes_the_libuv_loop_and_the_c_http_parser() -> None:
    """BentoML's worker leaves uvicorn's loop and HTTP parser to ``auto`` (on Linux): with
    uvloop and httptools installed (pinned for the service and the bento) that is libuv's
    loop and the C parser, a third less CPU a request than asyncio's loop and h11."""
    from uvicorn.loops.auto import auto_loop_factory
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    assert AutoHTTPProtocol.__name__ == "HttpToolsProtocol", (
        "httptools is missing: pip install -c constraints.txt -e '.[dev]'")
    loop = auto_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop"), (
            "uvloop is missing: pip install -c constraints.txt -e '.[dev]'")
    finally:
        loop.close()
    # ... and BentoML's worker passes uvicorn neither (a loop only on Windows).
    worker = Path(importlib.util.find_spec("_bentoml_impl.worker.service").origin).read_text()
    assert 'uvicorn_extra_options["loop"] = "asyncio"' in worker
    assert "http=" not in worker and '"http"' not in worker


def test_carried_config_keeps_no_paths_or_secrets() -> None:
    settings = load_settings(None, environ={
        "NEXTBEST__PRIVACY__ID_SALT": "pepper", "NEXTBEST__STORE__REDIS_URL": "redis://:pw@h/0",
        "NEXTBEST__CHANNELS__EMAIL__SECRET": "hmac-key", "NEXTBEST__BANDIT__CONTROL_SHARE": "0.2"})
    config = carried_config(settings)
    text = json.dumps(config)
    assert "pepper" not in text and ":pw@" not in text and "hmac-key" not in text
    assert "paths" not in config and "mlflow_tracking_uri" not in config
    bundle = Bundle(models={}, config=config)
    served = bundle.settings(environ={})
    assert served.bandit.control_share == 0.2  # the build's configuration comes along
    assert served.paths.data_dir == Path(BENTO_DATA_DIR).expanduser()
    assert served.paths.decision_log == Path(BENTO_DATA_DIR).expanduser() / "decisions.sqlite"
    moved = bundle.settings(environ={"NEXTBEST__PATHS__DATA_DIR": "/srv/nb",
                                     "NEXTBEST__BANDIT__CONTROL_SHARE": "0.3"})
    assert moved.paths.decision_log == Path("/srv/nb/decisions.sqlite")
    assert moved.bandit.control_share == 0.3  # the environment wins over the bento
    assert served.store.backend == "redis"  # a bento's online store is shared


def _train_bandit(world: Any, users: list[str], env: dict[str, str],
                  point: str = "buyer_offer") -> int:
    """Decide for ``users`` at decision ``point`` and reward half of them; returns the
    rewards learned by the checkpoint the engine leaves in that point's bandit directory."""
    settings = load_settings(None, environ=world.env | env).for_point(point)
    view = seller_view if settings.bandit.subject == "seller" else user_view
    store = open_store(settings)
    engine = DecisionEngine(settings, role="inline")
    try:
        for i, user_id in enumerate(users):
            decision = engine.decide(view(user_id, store.get(user_id)), RequestContext())
            engine.feedback(decision.event_id, converted=i % 2 == 0,
                            revenue=10.0 if i % 2 == 0 else 0.0)
    finally:
        engine.close()
        store.close()
    meta = CheckpointStore(Path(settings.paths.bandit_dir)).latest()
    assert meta is not None and meta.rewards_learned > 0
    return meta.rewards_learned


def _features_into(settings: Settings, source: Settings) -> None:
    """The latest features of ``source``'s online store, loaded into ``settings``' store."""
    with open_store(source) as store:
        as_of = date.fromisoformat(str(store.meta()["as_of"])[:10])
    with open_store(settings) as store:
        loaded = store.load_records(load_features(source, as_of, None), as_of)
    assert loaded.written > 0


def _champion_versions(world: Any) -> dict[str, str]:
    from training.loader import champion_versions

    return champion_versions(world.settings)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "redis-data").mkdir()
    try:
        with running_redis(tmp_path / "redis-data") as url:
            yield url
    except RedisServerError as exc:
        pytest.fail(str(exc))


@pytest.mark.integration
def test_bento_serves_its_models_in_an_empty_directory(
        world: Any, pool: Any, launch: Callable[..., Any], tmp_path: Path,
        redis_url: str) -> None:
    bandit_env = {"NEXTBEST__PATHS__DECISION_LOG": str(tmp_path / "build" / "decisions.sqlite"),
                  "NEXTBEST__PATHS__BANDIT_DIR": str(tmp_path / "build" / "bandit")}
    user_id = pool.take()
    learned = _train_bandit(world, [pool.take() for _ in range(BANDIT_DECISIONS)], bandit_env)
    sellers = _train_bandit(world, [pool.take() for _ in range(BANDIT_DECISIONS)], bandit_env,
                            point="seller_offer")
    home = tmp_path / "bentoml"
    build_env = world.env | bandit_env | {"BENTOML_HOME": str(home)}
    built = subprocess.run([sys.executable, "-m", "nextbest.cli", "bento", "build"],
                           env=build_env, cwd=world.root, capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    tag = built.stdout.strip()
    assert tag.startswith("nextbest:"), built.stdout
    versions = _champion_versions(world)

    bento_dir = home / "bentos" / "nextbest" / tag.split(":")[1]
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    carried = {model["tag"].split(":")[0] for service in info["services"]
               for model in service["models"]}
    assert {"nextbest-churn", "nextbest-propensity", "nextbest-bandit",
            "nextbest-bandit-seller_offer"} <= carried  # every decision point's checkpoint
    assert info["labels"]["churn_version"] == versions["churn"]
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text().lower()
    assert "pyspark" not in requirements and "lightgbm==" in requirements

    # The features live in Redis only; the serving directory is empty, no MLflow is set and
    # only the Redis URL is configured.
    store_env = {"NEXTBEST__STORE__BACKEND": "redis", "NEXTBEST__STORE__REDIS_URL": redis_url}
    _features_into(load_settings(None, environ=world.env | store_env), world.settings)
    empty, user_home = tmp_path / "empty", tmp_path / "home"
    empty.mkdir()
    user_home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NEXTBEST", "MLFLOW"))}
    env |= {"NEXTBEST__STORE__REDIS_URL": redis_url, "BENTOML_HOME": str(home),
            "HOME": str(user_home), "BENTOML_DO_NOT_TRACK": "true"}
    server = launch([sys.executable, "-m", "bentoml", "serve", tag], env=env, cwd=empty,
                    log_path=tmp_path / "bento-serve.log")
    try:
        answer = httpx.post(f"{server.url}/score", json={"user_id": user_id},
                            headers=HEADERS, timeout=10.0)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["known"] is True, server.log_tail()
        assert body["model_versions"] == versions
        assert 0.0 <= body["churn_probability"] <= 1.0
        decided = httpx.post(f"{server.url}/next_best_action", json={"user_id": user_id},
                             headers=HEADERS, timeout=10.0)
        assert decided.status_code == 200, decided.text
        reload = httpx.post(f"{server.url}/models/reload", headers=HEADERS, timeout=10.0)
        assert reload.status_code == 409 and "bento" in reload.json()["detail"]
    finally:
        server.stop()
    # The same bento deciding in a process of its own (serving.decision_process), which
    # loads the bento's models too: the bento's versions, and a reward learned at once.
    server = launch([sys.executable, "-m", "bentoml", "serve", tag],
                    env=env | {"NEXTBEST__SERVING__DECISION_PROCESS": "true"}, cwd=empty,
                    log_path=tmp_path / "bento-serve-decider.log")
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=10.0).json()
        assert ready["decision_process"] is not None, server.log_tail()
        decided = httpx.post(f"{server.url}/next_best_action", json={"user_id": user_id},
                             headers=HEADERS, timeout=10.0)
        assert decided.status_code == 200, decided.text
        reward = httpx.post(f"{server.url}/feedback", headers=HEADERS, timeout=10.0,
                            json={"event_id": decided.json()["event_id"], "converted": False})
        assert reward.status_code == 200 and "learned" in reward.json()["detail"], reward.text
    finally:
        server.stop()
    # The bandit was seeded from the bento under the default data directory.
    data_dir = user_home / BENTO_DATA_DIR.removeprefix("~/")
    seeded = CheckpointStore(data_dir / "bandit").latest()
    assert seeded is not None and seeded.rewards_learned >= learned
    seeded_sellers = CheckpointStore(data_dir / "bandit" / "seller_offer").latest()
    assert seeded_sellers is not None and seeded_sellers.rewards_learned == sellers
    assert seeded_sellers.fingerprint != seeded.fingerprint  # each point's own model
    assert (data_dir / "decisions.sqlite").exists()
    assert list(empty.iterdir()) == []  # nothing written where it was started
