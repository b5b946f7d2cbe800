"""Start a throw-away redis-server for tests and benchmarks (no persistence, 127.0.0.1 only).

Used by the ``redis_url`` fixture (tests/features/conftest.py) and by benchmarks/store.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MISSING_REDIS = "install redis-server (apt-get install redis-server)"
_FALLBACK_BINARY = Path("/usr/bin/redis-server")


class RedisServerError(RuntimeError):
    """redis-server is missing, exited or never answered; the message says which."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if _FALLBACK_BINARY.exists():
        return str(_FALLBACK_BINARY)
    raise RedisServerError(MISSING_REDIS)


def _wait_until_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until the server answers PING; raise with its output if it dies or never does."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RedisServerError(f"redis-server exited with {proc.returncode}: {out}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    raise RedisServerError(f"redis-server at {url} did not answer within {timeout} s")


@contextmanager
def running_redis(workdir: Path, timeout: float = 10.0) -> Iterator[str]:
    """Run redis-server on a free port without persistence; yield its URL; stop it after."""
    port = free_port()
    proc = subprocess.Popen(
        [_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until_ready(url, proc, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
