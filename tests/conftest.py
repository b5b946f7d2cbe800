"""Shared fixtures. Integration tests (real servers, Spark) are marked ``integration``.

Every test runs in an empty working directory of its own with no ``NEXTBEST*`` or
``MLFLOW_TRACKING_URI`` variable set, so a developer's ``nextbest.yaml``, ``data/`` and
``mlruns/`` in the checkout never leak into a test, and no test sees another's files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextbest.config import Settings, load_settings, path_overrides


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose every path points into a fresh temporary directory."""
    env = path_overrides(tmp_path)
    return load_settings(None, environ=env)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep a developer's own settings and working directory out of the tests."""
    for key in list(os.environ):
        if key.startswith("NEXTBEST"):
            monkeypatch.delenv(key, raising=False)
    # MLflow's set_tracking_uri/set_registry_uri write these into os.environ: set then delete
    # them through monkeypatch so whatever a test leaves behind is undone after it.
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# -- storage backends -----------------------------------------------------------------------
class StorageBackend:
    """One backend for a test: SQLite files (``url`` None) or a fresh PostgreSQL database."""

    def __init__(self, name: str, url: str | None):
        self.name = name
        self.url = url

    def target(self, path: Path) -> Path | str:
        """Where a store opens: ``path`` on SQLite, the test's database on PostgreSQL."""
        return self.url or path

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with ``storage.url`` set to this backend's."""
        return settings.model_copy(update={"storage": settings.storage.model_copy(
            update={"url": self.url})})

    def use(self, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
        """:meth:`apply`, and the same for settings loaded from the environment meanwhile
        (the CLI in-process, subprocesses)."""
        if self.url:
            monkeypatch.setenv("NEXTBEST__STORAGE__URL", self.url)
        return self.apply(settings)

    def env(self) -> dict[str, str]:
        """The ``NEXTBEST__STORAGE__URL`` variable of a subprocess on this backend."""
        return {"NEXTBEST__STORAGE__URL": self.url} if self.url else {}


@pytest.fixture(scope="session")
def postgres_server():
    """One throw-away PostgreSQL cluster for the session (started on first use); each test
    gets a database of its own (``storage`` fixture)."""
    from postgres_server import PostgresServerError, running_postgres

    try:
        with running_postgres() as url:
            yield url
    except PostgresServerError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """One redis-server for the whole session (started on first use; tests use their own
    key prefixes): the Redis online store's tests and the fault test."""
    from redis_server import RedisServerError, running_redis

    try:
        with running_redis(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except RedisServerError as exc:
        pytest.fail(str(exc))


_DATABASES = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest):
    """Each storage test runs twice: on SQLite files and on a real PostgreSQL database."""
    if request.param == "sqlite":
        yield StorageBackend("sqlite", None)
        return
    from postgres_server import create_database

    from nextbest.storage import close_pools

    server = request.getfixturevalue("postgres_server")
    url = create_database(server, f"nb_{os.getpid()}_{next(_DATABASES)}")
    yield StorageBackend("postgresql", url)
    close_pools()


# Fixtures built once per session that are worth building once per run: under
# ``pytest -n 2 --dist loadgroup`` (``make test``) every test using one of them goes to the
# same worker, so the served world and the trained models are built once, not per worker.
SHARED_GROUPS = {"world": "served_world", "server": "served_world", "client": "served_world",
                 "pool": "served_world", "trained": "trained", "fresh_home": "trained"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = next((SHARED_GROUPS[name] for name in getattr(item, "fixturenames", ())
                      if name in SHARED_GROUPS), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
