"""Start a throw-away PostgreSQL cluster for tests and benchmarks (127.0.0.1 only).

Debian's ``postgresql`` package puts ``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``; the cluster lives in a temporary directory, listens
on a free port, runs without fsync (nothing in it must survive) and is stopped and deleted
afterwards. PostgreSQL refuses to run as root, so under root the cluster runs as the
``postgres`` user the package creates. Used by the ``storage`` fixture (tests/conftest.py),
the fault test and benchmarks/fault.py.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis_server import free_port

MISSING_POSTGRES = "install postgresql (apt-get install postgresql)"


class PostgresServerError(RuntimeError):
    """PostgreSQL is missing, failed to start or never answered; the message says which."""


def _bin_dir() -> Path:
    """The newest installed PostgreSQL's binary directory."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name))
    if not candidates:
        raise PostgresServerError(MISSING_POSTGRES)
    return Path(candidates[-1]).parent


def _run_as() -> tuple[dict[str, int], dict[str, str]]:
    """Popen keyword arguments (and environment) to run the server as a non-root user."""
    if os.geteuid() != 0:
        return {}, {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresServerError(f"running as root and there is no 'postgres' user: "
                                  f"{MISSING_POSTGRES}") from exc
    return {"user": user.pw_uid, "group": user.pw_gid}, {"HOME": user.pw_dir}


@contextmanager
def running_postgres(timeout: float = 30.0) -> Iterator[str]:
    """Run a fresh cluster on a free port; yield the URL of its ``postgres`` database as the
    superuser ``nextbest`` (trust authentication on 127.0.0.1); stop and delete it after."""
    bin_dir = _bin_dir()
    as_user, extra_env = _run_as()
    root = Path(tempfile.mkdtemp(prefix="nextbest-pg-"))
    data = root / "data"
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    env = {**os.environ, **extra_env, "LC_ALL": "C.UTF-8"}
    port = free_port()
    try:
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "nextbest",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, env=env,
                       cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **as_user)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresServerError(f"initdb failed: {exc.stdout.decode()[-2000:]}") from exc
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               "-c max_connections=200 -c shared_buffers=32MB")
    started = subprocess.run(
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
         "-w", "-t", str(int(timeout)), "start"], env=env, cwd=root,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **as_user)
    url = f"postgresql://nextbest@127.0.0.1:{port}/postgres"
    try:
        if started.returncode != 0:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            raise PostgresServerError(f"pg_ctl start failed: {started.stdout.decode()} {log}")
        _wait_until_ready(url, timeout)
        yield url
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                        "stop"], env=env, cwd=root, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, **as_user)
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_ready(url: str, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise PostgresServerError(f"PostgreSQL at {url} did not answer within "
                                          f"{timeout} s") from None
            time.sleep(0.1)


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"
