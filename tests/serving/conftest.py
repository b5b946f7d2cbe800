"""Fixtures of the HTTP tests: a tiny world built once, and a real ``bentoml serve`` over it.

The world (session scope) and the servers come from tests/served_world.py (shared with the
fault scenario and benchmarks/fault.py); every server a fixture starts is always stopped at
the end.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from api_key import HEADERS, key_config
from served_world import (  # noqa: F401  (re-exported: tests import them from conftest)
    CLIP_MAX,
    MAX_REVENUE,
    Server,
    UserPool,
    World,
    build_world,
    free_port,
    launch_server,
    own_bandit_env,
    start_server,
    test_config,
    world_env,
)

from nextbest.config import load_settings, path_overrides


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The tiny world every HTTP test shares (built once per session)."""
    return build_world(tmp_path_factory.mktemp("serving_world"))


@pytest.fixture(scope="session")
def server(world: World) -> Iterator[Server]:
    """One real service over the world for the whole session, always stopped at the end."""
    srv = start_server(world)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client bound to the session's server."""
    with httpx.Client(base_url=server.url, timeout=30.0, headers=HEADERS) as http:
        yield http


@pytest.fixture
def spawn(world: World) -> Iterator[Callable[..., Server]]:
    """Start extra servers with their own decision log and bandit directory (by name);
    every one of them is stopped when the test ends."""
    started: list[Server] = []

    def start(name: str, *, workers: int = 1, env: dict[str, str] | None = None) -> Server:
        srv = start_server(world, workers=workers, name=name,
                           env=own_bandit_env(world, name.split("-")[0]) | (env or {}))
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop(signal.SIGKILL)


@pytest.fixture
def launch() -> Iterator[Callable[..., Server]]:
    """Start any server command until ready (:func:`launch_server`), one port each;
    every server started is stopped at the end of the test."""
    started: list[Server] = []

    def start(cmd: list[str], **kwargs: object) -> Server:
        port = free_port()
        server = launch_server([*cmd, "--host", "127.0.0.1", "--port", str(port)], port,
                               **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def empty_server(tmp_path: Path, world: World) -> Iterator[Server]:
    """A service started with ``allow_empty`` in an empty directory: no models, no
    features (the world's environment minus its paths and config)."""
    env = {k: v for k, v in world.env.items() if not k.startswith("NEXTBEST")}
    env |= path_overrides(tmp_path) | {"BENTOML_HOME": str(tmp_path / "bentoml"),
                                       "NEXTBEST__SERVING__ALLOW_EMPTY": "true",
                                       "NEXTBEST__AUTH__KEYS": json.dumps([key_config()])}
    empty = World(root=tmp_path, env=env, settings=load_settings(None, environ=env))
    srv = start_server(empty, name="empty")
    try:
        yield srv
    finally:
        srv.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def pool(world: World) -> UserPool:
    """The session's pool: a user handed to one test is never handed to another."""
    return UserPool(world.settings)
