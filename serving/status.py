"""What each worker of the service has loaded, and how the workers agree on a model reload.

A BentoML service with ``workers > 1`` is several processes that share no memory. Each
worker publishes its :class:`WorkerStatus` (models, features as_of, policy version) as a
small JSON file in the service's board directory (``paths.data_dir/serving/<port>/``);
``POST /models/reload`` bumps the board's reload generation, every worker watches it (and
the registry, every ``serving.model_refresh_seconds``) and reloads, and the worker that
answered waits until every live worker reports the versions it loaded, so its answer says
which versions each worker serves. Several replicas on other hosts see a new champion on
their own schedule (the registry check).

Erasure works the same way: the worker that erased a user bumps the board's erasure
generation, and every worker, seeing it change, drops whatever it keeps in memory about any
user on the erasure list (cached scores, decisions kept for their feedback). The board names
no user: the list in the shared store says who.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

RELOAD_FILE = "reload"
ERASURE_FILE = "erasures"
WORKER_PREFIX = "worker-"


class WorkerStatus(BaseModel):
    """What one worker process serves now."""

    pid: int
    ready: bool
    models: dict[str, str | None]
    features_as_of: str | None
    store_users: int
    policy_version: str
    engine_role: str
    # serving.decision_process: the pid of the process deciding and learning (None: this
    # worker decides itself, also while a new decision process starts).
    decision_process: int | None = None
    missing: list[str] = Field(default_factory=list)  # what readiness lacks, in words
    reload_generation: int = 0
    updated: datetime = Field(default_factory=lambda: datetime.now(UTC))


def _alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerBoard:
    """The board directory of one service (one host and port): worker files and the
    reload generation."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def generation(self) -> int:
        """The current reload generation (0 before the first reload)."""
        try:
            return int((self.dir / RELOAD_FILE).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def bump(self) -> int:
        """Ask every worker to reload; returns the new generation."""
        generation = self.generation() + 1
        _write(self.dir / RELOAD_FILE, str(generation))
        return generation

    def erasures(self) -> int:
        """The current erasure generation (0 before the first erasure)."""
        try:
            return int((self.dir / ERASURE_FILE).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def bump_erasures(self) -> int:
        """Tell every worker that users were erased; returns the new generation. (Two
        workers bumping at once may both write the same number: either way it changed.)"""
        generation = self.erasures() + 1
        _write(self.dir / ERASURE_FILE, str(generation))
        return generation

    def publish(self, status: WorkerStatus) -> None:
        """Write this worker's status (atomically: readers never see half a file)."""
        _write(self.dir / f"{WORKER_PREFIX}{status.pid}.json", status.model_dump_json())

    def withdraw(self, pid: int) -> None:
        """Remove a worker's status (on shutdown)."""
        (self.dir / f"{WORKER_PREFIX}{pid}.json").unlink(missing_ok=True)

    def workers(self) -> list[WorkerStatus]:
        """The status of every live worker; files of dead processes are removed."""
        out = []
        for path in sorted(self.dir.glob(f"{WORKER_PREFIX}*.json")):
            try:
                status = WorkerStatus.model_validate_json(path.read_text())
            except (FileNotFoundError, ValueError):
                continue  # replaced or withdrawn while we read
            if _alive(status.pid):
                out.append(status)
            else:
                path.unlink(missing_ok=True)
        return out

    def wait_for(self, generation: int, timeout: float, poll: float = 0.1) -> list[WorkerStatus]:
        """Every live worker's status once all have reloaded for ``generation`` (or what
        they report when ``timeout`` seconds have passed)."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers()
            if all(w.reload_generation >= generation for w in workers) or \
                    time.monotonic() >= deadline:
                return workers
            time.sleep(poll)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def status_json(status: WorkerStatus) -> bytes:
    """The /readyz body of one worker."""
    return json.dumps(status.model_dump(mode="json")).encode()
