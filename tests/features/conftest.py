"""Fixtures of the features tests: a real redis-server for the Redis online store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_server import RedisServerError, running_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the whole session (tests use their own key prefixes)."""
    try:
        with running_redis(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except RedisServerError as exc:
        pytest.fail(str(exc))
