"""A served world for tests and benchmarks: a tiny marketplace and real ``nextbest serve``
processes over it.

The world: a synthetic marketplace of a few hundred users, its features in the online
store and churn/propensity champions in a temporary MLflow registry, all under one
directory that every ``NEXTBEST__*`` path points into. A server is started by
``nextbest serve`` on a free 127.0.0.1 port in its own session, polled until ``/readyz``
answers 200, and stopped (SIGTERM, then SIGKILL) by its owner. The serving tests' fixtures
(tests/serving/conftest.py), the fault scenario (tests/fault_scenario.py) and
benchmarks/fault.py use it; a benchmark puts ``tests/`` on ``sys.path`` to import it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml
from api_key import key_config
from redis_server import free_port

from decisions.policy import PolicyLayer
from features.build import build_features
from features.store import open_store
from nextbest.config import Settings, load_settings, path_overrides

REPO = Path(__file__).resolve().parents[1]
WORLD_USERS = 600
WORLD_DAYS = 400
WORLD_SEED = 11
# Feedback later than this is "late"; short so that a test can wait it out.
REWARD_WINDOW_SECONDS = 4.0
READY_TIMEOUT_SECONDS = 120.0
# Feedback integrity: the revenue limit of a decision without an item price, and the
# largest reward learned from one feedback.
MAX_REVENUE = 5000.0
CLIP_MAX = 1000.0


def world_env(root: Path) -> dict[str, str]:
    """Every path of the settings under ``root``, and the world's config file."""
    return path_overrides(root) | {"NEXTBEST_CONFIG": str(root / "nextbest.yaml")}


def test_config() -> dict:
    """The service config of the tests: a reward window of a few seconds (so late feedback
    can be provoked), a fast sweeper, and low revenue and reward limits."""
    return {
        "auth": {"keys": [key_config()]},
        "training": {"num_boost_round": 50, "early_stopping_rounds": 10},
        "bandit": {
            "reward": {"window_days": REWARD_WINDOW_SECONDS / 86400,
                       "max_revenue": MAX_REVENUE, "clip_max": CLIP_MAX},
            "sweep_seconds": 1.0,
            "checkpoint_every": 200,
        },
    }


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run ``nextbest ARGS`` and fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"nextbest {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@dataclass
class World:
    """A built world: its root, environment and settings."""

    root: Path
    env: dict[str, str]
    settings: Settings


def build_world(root: Path) -> World:
    """Synthesise users, build their features into the online store, train the churn,
    propensity and seller churn champions."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "nextbest.yaml").write_text(yaml.safe_dump(test_config()))
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEXTBEST")}
    env.update(world_env(root))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env["BENTOML_HOME"] = str(root / "bentoml")
    data = root / "data"
    run_cli(["data", "synth", "--users", str(WORLD_USERS), "--days", str(WORLD_DAYS),
             "--seed", str(WORLD_SEED), "--out", str(data / "raw"),
             "--latent-out", str(data / "latent")], env, root)
    settings = load_settings(None, environ=env)
    build_features(settings, progress=False)  # also refreshes the online store
    for model in ("churn", "propensity"):
        run_cli(["train", model, "--cutoffs", "2"], env, root)
    # Forced: on a world this small the gate against the recency baseline may go either
    # way, and the seller answers need a champion to score with.
    run_cli(["train", "seller_churn", "--cutoffs", "2", "--force"], env, root)
    return World(root=root, env=env, settings=settings)


class ServerFailed(RuntimeError):
    """A server exited during start-up or never became ready; the message has its log."""


@dataclass
class Server:
    """A running ``nextbest serve`` child and how to reach it."""

    url: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's output, for failure messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def processes(self) -> list[psutil.Process]:
        """The server's whole process tree. BentoML's workers call setsid, so they are not in
        the process group of ``nextbest serve``: they are found as descendants instead."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send ``sig`` to the server (SIGKILL: to every process of its tree at once, a
        crash); whatever is still alive after ``timeout`` is SIGKILLed."""
        tree = self.processes()
        targets = tree if sig == signal.SIGKILL else tree[:1]
        for process in targets:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)


def own_bandit_env(world: World, name: str) -> dict[str, str]:
    """Variables giving a server its own decision log and bandit directory under the world,
    so that it does not share (or fight over) the learner of the session server."""
    data = world.root / name
    return {"NEXTBEST__PATHS__DECISION_LOG": str(data / "decisions.sqlite"),
            "NEXTBEST__PATHS__BANDIT_DIR": str(data / "bandit")}


def start_server(world: World, *, workers: int = 1, name: str = "server",
                 env: dict[str, str] | None = None, port: int | None = None) -> Server:
    """Start ``nextbest serve`` on ``port`` (default: a free one) and wait until ``/readyz``
    is 200.

    ``env`` adds or overrides variables of the world's environment for this server only."""
    port = port or free_port()
    log_path = world.root / f"{name}-{port}.log"
    cmd = [sys.executable, "-m", "nextbest.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]
    # Each server its own BENTOML_HOME: `bentoml serve` empties its metrics directory.
    home = {"BENTOML_HOME": str(world.root / f"bentoml-{name}-{port}")}
    return launch_server(cmd, port, env=world.env | home | (env or {}), cwd=world.root,
                         log_path=log_path)


def launch_server(cmd: list[str], port: int, *, env: dict[str, str], cwd: Path,
                  log_path: Path) -> Server:
    """Run ``cmd`` (a server listening on 127.0.0.1:``port``) in its own session and wait
    until ``/readyz`` is 200; :class:`ServerFailed` with its output if it exits or never
    is."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"{' '.join(cmd[2:4])} exited with {proc.returncode}:\n"
                        f"{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop(signal.SIGKILL)
    raise ServerFailed(f"{' '.join(cmd[2:4])} not ready after {READY_TIMEOUT_SECONDS}s:\n"
                f"{server.log_tail()}")


class UserPool:
    """Known, personalisable, non-control users of the world, handed out once each."""

    def __init__(self, settings: Settings):
        policy = PolicyLayer(settings.bandit)
        store = open_store(settings)
        try:
            ids = [f"u{i:06d}" for i in range(2000)]
            records = store.get_many(ids)
            self.users = [
                uid for uid, rec in records.items()
                if not policy.in_control(uid) and store.get_preferences(uid).personalization
                and not rec.get("under_review")
                and "coupon_abuser" not in (rec.get("tags") or [])]
            self.tagged = [uid for uid in self.users if records[uid].get("tags")]
        finally:
            store.close()
        assert len(self.users) > 100, "the world has too few usable users"

    def take(self, tagged: bool = False) -> str:
        """A user no other test has taken."""
        pool = self.tagged if tagged else self.users
        uid = pool.pop()
        for other in (self.users, self.tagged):
            if uid in other:
                other.remove(uid)
        return uid
