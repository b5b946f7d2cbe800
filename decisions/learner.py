"""The single-writer learner: one process owns the learning VW model (docs/ARCHITECTURE.md).

- :class:`LearnerLock`: an OS file lock (``fcntl.flock`` on ``bandit_dir/learner.lock``);
  a second learner fails at once. The OS drops the lock when its process dies, even by
  ``kill -9``, so a restart can always take it.
- :class:`CheckpointStore`: checkpoints are a VW model file plus JSON meta (the reward log
  position ``seq`` they cover and counts), written to a temporary name and renamed, then
  published by atomically replacing ``latest.json``. Readers never see half a file. Writing
  is two steps: :meth:`~CheckpointStore.stage` (VW writes its model to the temporary file,
  on the thread that owns the workspace; fast, no fsync) and
  :meth:`~CheckpointStore.publish` (fsyncs, renames, meta, pruning; any thread).
- :class:`Learner`: loads the latest checkpoint, then learns every reward with
  ``seq`` above it, in log order; checkpoints every ``checkpoint_every`` rewards, after
  ``checkpoint_seconds`` with unsaved learning, and on close. With
  ``publish_in_background`` (the inline role, which learns on the service's event loop) a
  checkpoint only stages the model there and a publisher thread does the slow part, so a
  checkpoint does not hold up other requests. After a crash the same steps
  replay what the checkpoint missed, so no accepted reward is lost, and because VW saves its
  full learning state the result equals a learner that never crashed.
- :class:`ModelWatcher`: what scorer processes use to pick up published checkpoints.

Many hosts (``storage.url`` set, :func:`open_checkpoints`): checkpoints are rows of the
storage database instead (:class:`DatabaseCheckpointStore`: the model bytes with the log
position they cover), so replicas on other hosts load them, and the lock is a lease
(:class:`AdvisoryLease`: a PostgreSQL session advisory lock per decision point, held on a
connection of its own). The server drops it the moment the holder's connection dies
(``kill -9`` closes its socket; a vanished host is found by TCP keepalives within
seconds), and a standby waiting for it (``nextbest learner --standby``) takes over,
loading the newest checkpoint and replaying the log after it.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, Field

from decisions import reward_model  # imported here: first used on the event loop
from decisions.choosers import BANDIT, Chooser, ChooserSpec
from decisions.decision_log import DecisionLog, LoggedDecision
from decisions.encoding import BanditExample
from nextbest.config import DEFAULT_POINT, Settings
from nextbest.errors import Conflict
from nextbest.storage import Target, is_postgres, lock_key, open_database, redact

LOG = logging.getLogger(__name__)
LATEST = "latest.json"
KEEP_CHECKPOINTS = 3


class CheckpointMeta(BaseModel):
    """What a checkpoint covers: every reward with ``seq`` <= this one is in the model."""

    seq: int = 0
    rewards_seen: int = 0       # reward rows consumed (learnable or not)
    rewards_learned: int = 0    # of which learned by VW
    model_file: str = ""        # file name inside the checkpoint directory
    fingerprint: str = ""       # ChooserSpec.fingerprint of the config that trained it
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))


def policy_version(fingerprint: str, seq: int) -> str:
    """``<fingerprint>.<seq>``: the config and the log position of the model that decided."""
    return f"{fingerprint}.{seq}"


class LearnerLock:
    """An exclusive, non-blocking ``flock`` that makes this process the only learner."""

    def __init__(self, bandit_dir: Path):
        bandit_dir.mkdir(parents=True, exist_ok=True)
        self.path = bandit_dir / "learner.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise Conflict naming the lock file."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise Conflict(f"another process is already the bandit learner ({self.path} is "
                           "locked); start this one as a scorer") from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def held(self) -> bool:
        """Whether this process still holds the lock (a file lock is never lost)."""
        return self._fd is not None


class Lease(Protocol):
    """What makes one process the learner: :class:`LearnerLock` or :class:`AdvisoryLease`."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def held(self) -> bool: ...


class AdvisoryLease:
    """The learner lease of one decision point on PostgreSQL: a session advisory lock.

    Held on a dedicated connection (never a pooled one) with short TCP keepalives on both
    ends, so the server releases it within seconds of the holder's death and the holder
    learns (:meth:`held`) that it lost it when its connection breaks.
    """

    def __init__(self, url: str, point: str):
        self.url = url
        self.point = point
        self.key = lock_key(f"learner:{point}")
        self._conn: Any = None

    def acquire(self) -> None:
        """Take the lease or raise Conflict (another process is the learner)."""
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10, keepalives=1,
                               keepalives_idle=2, keepalives_interval=1, keepalives_count=3)
        for name, value in (("tcp_keepalives_idle", 2), ("tcp_keepalives_interval", 1),
                            ("tcp_keepalives_count", 3)):
            conn.execute(f"SET {name} = {value}")
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
            conn.close()
            raise Conflict(f"another process is already the bandit learner of {self.point} "
                           f"(its lease on {redact(self.url)} is held); start this one as a "
                           "scorer, or as a standby: nextbest learner --standby")
        self._conn = conn

    def held(self) -> bool:
        """Whether the lease's connection is still alive (the server holds it for us)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except Exception:  # psycopg.OperationalError and friends: the lease is gone
            self.release()
            return False

    def release(self) -> None:
        """Drop the lease (closing the connection releases the lock)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class StagedCheckpoint(NamedTuple):
    """A model written to a temporary file, waiting to be published as ``meta``."""

    meta: CheckpointMeta
    path: Path


class CheckpointStore:
    """Checkpoints under ``bandit_dir``: ``model-<seq>.vw`` + ``model-<seq>.json`` + latest."""

    def __init__(self, bandit_dir: Path):
        self.dir = bandit_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._staged = itertools.count()  # staged file names never collide

    def latest(self) -> CheckpointMeta | None:
        """The published checkpoint, or None before the first one."""
        path = self.dir / LATEST
        if not path.exists():
            return None
        return CheckpointMeta.model_validate_json(path.read_text())

    def latest_stamp(self) -> tuple[int, int] | None:
        """A cheap change detector for ``latest.json`` (mtime and inode)."""
        try:
            st = (self.dir / LATEST).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def model_path(self, meta: CheckpointMeta) -> Path:
        """Where the model file of ``meta`` lives."""
        return self.dir / meta.model_file

    def save(self, chooser: Chooser, meta: CheckpointMeta) -> CheckpointMeta:
        """Write the model and its meta under temporary names, rename, then publish."""
        return self.publish(self.stage(chooser, meta))

    def stage(self, chooser: Chooser, meta: CheckpointMeta) -> StagedCheckpoint:
        """Write the model to a temporary file of its own (on the chooser's thread: VW
        saves from the workspace); the meta, a copy, names the file it will have."""
        meta = meta.model_copy(update={"model_file": f"model-{meta.seq:012d}.vw",
                                       "created": datetime.now(UTC)})
        staged = self.dir / f".{meta.model_file}.{os.getpid()}.{next(self._staged)}.tmp"
        chooser.save(staged)
        return StagedCheckpoint(meta, staged)

    def publish(self, staged: StagedCheckpoint) -> CheckpointMeta:
        """Flush the staged model to disk, rename it into place, write its meta, then point
        ``latest.json`` at it and prune old checkpoints. Safe from any one thread."""
        meta = staged.meta
        _fsync_file(staged.path)
        os.replace(staged.path, self.dir / meta.model_file)
        _atomic_write(self.dir / meta.model_file.replace(".vw", ".json"), meta.model_dump_json())
        _atomic_write(self.dir / LATEST, meta.model_dump_json())
        self._prune(keep=meta.model_file)
        return meta

    def discard_staged(self) -> int:
        """Delete staged models a crashed learner never published (only the learner, which
        holds the lock, may: it is the only one that stages)."""
        stale = list(self.dir.glob(".model-*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def _prune(self, keep: str) -> None:
        """Delete all but the newest ``KEEP_CHECKPOINTS`` checkpoints."""
        models = sorted(self.dir.glob("model-*.vw"))
        for old in models[:-KEEP_CHECKPOINTS]:
            if old.name != keep:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)

    def lease(self) -> Lease:
        """The lock that makes one process the learner of these checkpoints."""
        return LearnerLock(self.dir)

    def close(self) -> None:
        """Nothing to close for files."""


# Migration steps (nextbest.storage): append a step for a change, never edit a released one.
CHECKPOINT_STEPS = ("""
CREATE TABLE IF NOT EXISTS checkpoints (
    point TEXT NOT NULL,
    seq INTEGER NOT NULL,
    meta TEXT NOT NULL,
    model BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (point, seq)
)""",)


class DatabaseCheckpointStore(CheckpointStore):
    """Checkpoints of one decision point as rows of the storage database (many hosts).

    The same interface as the file store: staging writes the model to a local temporary
    file; publishing inserts its bytes with the meta (``seq``: the log position covered)
    and keeps the newest ``KEEP_CHECKPOINTS``; readers copy a model into a local cache
    directory to load it. Two learners publishing the same ``seq`` (one about to lose its
    lease) would publish the same model: the first row stays.
    """

    def __init__(self, target: Target, point: str):
        self.target = target
        self.point = point
        self.db = open_database(target)
        self.db.migrate("checkpoints", CHECKPOINT_STEPS)
        super().__init__(Path(tempfile.mkdtemp(prefix=f"nextbest-{point}-")))

    def latest(self) -> CheckpointMeta | None:
        row = self.db.execute("SELECT meta FROM checkpoints WHERE point = ? ORDER BY seq DESC "
                              "LIMIT 1", (self.point,)).fetchone()
        return None if row is None else CheckpointMeta.model_validate_json(row[0])

    def latest_stamp(self) -> tuple[int, int] | None:
        row = self.db.execute("SELECT max(seq), count(*) FROM checkpoints WHERE point = ?",
                              (self.point,)).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def model_path(self, meta: CheckpointMeta) -> Path:
        """The local copy of ``meta``'s model (fetched once; absent when it was pruned)."""
        path = self.dir / meta.model_file
        if not path.exists():
            row = self.db.execute("SELECT model FROM checkpoints WHERE point = ? AND seq = ?",
                                  (self.point, meta.seq)).fetchone()
            if row is not None:
                tmp = path.with_name(f".{path.name}.{next(self._staged)}.fetch")
                tmp.write_bytes(bytes(row[0]))
                os.replace(tmp, path)
        return path

    def publish(self, staged: StagedCheckpoint) -> CheckpointMeta:
        meta = staged.meta
        model = staged.path.read_bytes()
        with self.db.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO checkpoints (point, seq, meta, model, created) VALUES "
                "(?, ?, ?, ?, ?)", (self.point, meta.seq, meta.model_dump_json(), model,
                                    meta.created.timestamp()))
            self.db.execute(
                "DELETE FROM checkpoints WHERE point = ? AND seq < (SELECT min(seq) FROM "
                "(SELECT seq FROM checkpoints WHERE point = ? ORDER BY seq DESC LIMIT ?) "
                "AS newest)", (self.point, self.point, KEEP_CHECKPOINTS))
        os.replace(staged.path, self.dir / meta.model_file)
        for old in sorted(self.dir.glob("model-*.vw"))[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        return meta

    def lease(self) -> Lease:
        if is_postgres(self.target):
            return AdvisoryLease(str(self.target), self.point)
        return LearnerLock(Path(self.target).parent / f"{self.point}.learner")

    def close(self) -> None:
        """Close the connection and delete the local cache."""
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def open_checkpoints(settings: Settings, bandit_dir: Path | None = None,
                     point: str | None = None) -> CheckpointStore:
    """Where the learner of the settings' decision point publishes and scorers load: files
    under ``bandit_dir`` (one host), or, with ``storage.url``, rows of that database (many
    hosts) under ``point`` (default: the decision point's name; ``bandit`` for the default
    point, as before decision points)."""
    if settings.storage.url:
        if point is None:
            point = "bandit" if settings.decision_point == DEFAULT_POINT \
                else settings.decision_point
        return DatabaseCheckpointStore(settings.storage.url, point)
    return CheckpointStore(Path(bandit_dir or settings.paths.bandit_dir))


def _fsync_file(path: Path) -> None:
    """Flush a file's bytes to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    _fsync_file(tmp)
    os.replace(tmp, path)


class NoRewards(Exception):
    """A refit window without a learnable reward: nothing to fit (not an error)."""


class RefitWindow(NamedTuple):
    """The rewards a reward-model refit trains on: log positions ``first < seq <= last``.

    Fixed by the learner when the refit is due, so the model fitted (and its version,
    ``lgbm.<last>``) does not depend on when the fitting process gets to read the log.
    """

    first: int
    last: int

    def rows(self, log: DecisionLog, limit: int) -> list[Any]:
        """The window's learnable rewards as :class:`decisions.reward_model.TrainingRow`."""
        return [reward_model.TrainingRow(seq=r.seq, features=r.features, arm=r.action,
                                         converted=r.converted)
                for r in log.rewards_after(self.first, limit)
                if r.seq <= self.last and r.learnable and r.action is not None]


def fit_window(log_path: Target, window: RefitWindow, config: Any, seed: int,
               point: str = DEFAULT_POINT) -> str | None:
    """The fitting process's job: read ``window`` of decision point ``point`` on a
    connection of its own, fit the reward model, return it as JSON (None when the window has
    no learnable reward)."""
    log = DecisionLog(log_path, point=point)
    try:
        rows = window.rows(log, config.window)
    finally:
        log.close()
    return reward_model.fit_reward_model(config, rows, seed=seed).to_json() if rows else None


def load_chooser(settings: Settings, store: CheckpointStore | None,
                spec: ChooserSpec = BANDIT) -> tuple[Chooser, CheckpointMeta]:
    """The latest checkpoint's model if it was trained under this config, else a fresh one."""
    fingerprint = spec.fingerprint(settings.bandit)
    for _ in range(3):  # a checkpoint pruned between reading latest.json and loading it
        meta = store.latest() if store is not None else None
        if store is None or meta is None or meta.fingerprint != fingerprint or not spec.learns:
            break
        try:
            return spec.build(settings.bandit, model_file=store.model_path(meta),
                              learned=meta.rewards_learned), meta
        except RuntimeError:
            if store.model_path(meta).exists():
                raise  # the file is there but VW cannot read it: a real error
    return spec.build(settings.bandit), CheckpointMeta(fingerprint=fingerprint)


class Learner:
    """Learns every reward of the decision log in ``seq`` order, exactly once.

    ``store=None`` keeps everything in memory (a simulation on a scratch log): no lock, no
    checkpoints. The owner must call it from one thread only.
    """

    def __init__(self, settings: Settings, log: DecisionLog, *, store: CheckpointStore | None,
                 spec: ChooserSpec = BANDIT, publish_in_background: bool = False):
        self.settings = settings
        self.log = log
        self.store = store
        self.chooser, self.meta = load_chooser(settings, store, spec)
        if store is not None:
            store.discard_staged()
        self._unsaved = 0
        self._last_save = time.monotonic()
        # None: a reward that finds others before it unlearned learns them all first. A
        # number: at most that many of them (the service: the rest is learned in steps by
        # its housekeeping, so no request waits for a whole sweep's backlog).
        self.step_limit: int | None = None
        # One publisher thread: checkpoints are published in the order they were staged.
        self._publisher = (ThreadPoolExecutor(1, thread_name_prefix="checkpoint-publisher")
                           if publish_in_background and store is not None else None)
        self._published: Future[CheckpointMeta] | None = None
        # Reward-model refits (decisions/reward_model.py): beside the learning loop when the
        # learner serves (a store): a worker thread records each refit, and the fit itself
        # (reading its window of the log, LightGBM) runs in a process of its own, so it
        # neither blocks this loop nor competes with it for the GIL. Synchronously in a
        # simulation (deterministic).
        self._refit: Future[Any] | None = None
        background = store is not None and hasattr(self.chooser, "refit_due")
        self._refitter = (ThreadPoolExecutor(1, thread_name_prefix="reward-model-refit")
                          if background else None)
        self._fitter: ProcessPoolExecutor | None = None

    @property
    def policy_version(self) -> str:
        """The version of the model as it stands now."""
        return policy_version(self.meta.fingerprint, self.meta.seq)

    def catch_up(self, batch: int = 1000, limit: int | None = None) -> int:
        """Learn every reward after the covered ``seq`` (at most ``limit``, in order); how
        many rows were consumed."""
        consumed = 0
        while limit is None or consumed < limit:
            size = batch if limit is None else min(batch, limit - consumed)
            rows = self.log.rewards_after(self.meta.seq, size)
            for row in rows:
                self._learn(row.seq, row.learnable, row.action, row.features, row.reward,
                            row.probability, row.converted)
            consumed += len(rows)
            if len(rows) < size:
                break
        return consumed

    def learn_next(self, seq: int, logged: LoggedDecision, reward: float,
                   converted: bool) -> None:
        """Learn a reward just inserted at ``seq`` from the decision already in hand.

        The inline role's fast path: when ``seq`` directly follows what is covered it is
        learned without reading it back; otherwise (another writer came between) the log is
        read in order.
        """
        if seq != self.meta.seq + 1:
            self.catch_up(limit=self.step_limit)
            return
        d = logged.decision
        self._learn(seq, d.learnable, d.action, logged.features, reward, d.probability,
                    converted)

    def _learn(self, seq: int, learnable: bool, arm: str | None, features: dict[str, Any],
               reward: float, probability: float, converted: bool) -> None:
        """Learn one reward row (if learnable), advance the covered seq, checkpoint if due."""
        learned = learnable and arm is not None
        if learned:
            example = BanditExample.model_validate(features)
            self.chooser.learn(example, arm, reward, probability, converted)
        self.meta.seq = seq
        self.meta.rewards_seen += 1
        self.meta.rewards_learned += int(learned)
        self._unsaved += 1
        if learned:
            self._maybe_refit()
        if self._unsaved >= self.settings.bandit.checkpoint_every:
            self.checkpoint()

    def _maybe_refit(self) -> None:
        """Install a finished refit; start one when the chooser's reward model is due.

        The training window is the newest ``reward_model.window`` rewards of the log up to
        the covered ``seq``: read here (the log connection is this thread's), fitted here
        (a simulation) or in the refit worker (a store: the service)."""
        if self._refit is not None:
            if not self._refit.done():
                return
            finished, self._refit = self._refit, None
            error = finished.exception()
            if error is None:
                self.chooser.install(finished.result())  # type: ignore[attr-defined]
            elif not isinstance(error, NoRewards):
                LOG.error("reward model refit failed: %s", error)
        due = getattr(self.chooser, "refit_due", None)
        if due is None or not due():
            return
        config = self.settings.bandit.reward_model
        window = RefitWindow(first=max(self.meta.seq - config.window, 0), last=self.meta.seq)
        if self._refitter is None:
            rows = window.rows(self.log, config.window)
            if rows:
                self.chooser.install(  # type: ignore[attr-defined]
                    reward_model.fit_reward_model(config, rows, seed=self.settings.bandit.seed))
            return
        # Counted from now, so a slow fit is not asked for again meanwhile.
        self.chooser.learned_at_fit = self.chooser.learned  # type: ignore[attr-defined]
        self._refit = self._refitter.submit(self._fit_and_record, window)

    def _fit_and_record(self, window: RefitWindow) -> Any:
        """The refit worker's job: have the fitting process read the window and fit, keep
        the model file beside the checkpoints (so a replay can load the version that
        decided), log the refit to MLflow. Raises NoRewards when the window has none."""
        args = (self.log.path, window, self.settings.bandit.reward_model,
                self.settings.bandit.seed, self.log.point)
        if self._fitter is None:  # started on first use: a learner without refits spawns none
            self._fitter = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"))
        try:
            text = self._fitter.submit(fit_window, *args).result()
        except BrokenProcessPool:
            # No process could start (a script run without an ``if __name__ ==
            # "__main__"`` guard cannot spawn): fit in this thread, beside the loop still.
            LOG.warning("the reward model fitting process could not run; fitting in the "
                        "refit thread instead")
            text = fit_window(*args)
        if text is None:
            raise NoRewards(f"no learnable reward in log positions {window.first + 1}-"
                            f"{window.last}")
        model = reward_model.FittedRewardModel.from_json(text)
        assert self.store is not None  # the worker exists only with a store
        folder = self.store.dir / "reward_models"
        folder.mkdir(exist_ok=True)
        _atomic_write(folder / f"{model.version}.json", model.to_json())
        if self.settings.bandit.reward_model.log_mlflow:
            try:
                reward_model.log_refit(self.settings, model)
            except Exception:  # the model is good without its run: keep deciding with it
                LOG.exception("logging reward model refit %s to MLflow failed", model.version)
        return model

    def stop_refits(self) -> None:
        """Wait for a running refit to finish, install it, and stop the refit worker."""
        if self._refitter is not None:
            self._refitter.shutdown(wait=True)
            self._refitter = None
        if self._fitter is not None:
            self._fitter.shutdown(wait=True)
            self._fitter = None
        if self._refit is not None and self._refit.exception() is None:
            self.chooser.install(self._refit.result())  # type: ignore[attr-defined]
        self._refit = None

    def checkpoint_if_due(self) -> None:
        """Checkpoint when there is unsaved learning older than ``checkpoint_seconds``."""
        elapsed = time.monotonic() - self._last_save
        if self._unsaved and elapsed >= self.settings.bandit.checkpoint_seconds:
            self.checkpoint()

    def checkpoint(self, *, wait: bool = False) -> CheckpointMeta | None:
        """Save and publish the model with the log position it covers (no-op in memory).

        With a background publisher only the staging happens here; ``wait`` also waits
        until this checkpoint (and every earlier one) is published."""
        if self.store is not None:
            staged = self.store.stage(self.chooser, self.meta)
            self.meta = staged.meta.model_copy()  # learning goes on in a copy
            if self._publisher is None:
                self.store.publish(staged)
            else:
                self._published = self._publisher.submit(self.store.publish, staged)
                self._published.add_done_callback(_log_failure)
                if wait:
                    self._published.result()
        self._unsaved = 0
        self._last_save = time.monotonic()
        return self.meta if self.store is not None else None

    def close(self) -> None:
        """Checkpoint what is unsaved, wait until it is published, free the model."""
        self.stop_refits()
        self.checkpoint(wait=True)
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
        self.chooser.close()

    def sweep(self, now: datetime) -> int:
        """Default rewards for decisions whose window closed; then learn them."""
        added = self.log.sweep_closed(now, self.settings.bandit.reward)
        if added:
            self.catch_up()
        return added


def _log_failure(published: Future[CheckpointMeta]) -> None:
    """Log a checkpoint that could not be published (the next one tries again; the log
    still holds every reward, so a restart replays what it missed)."""
    error = published.exception()
    if error is not None:
        LOG.error("publishing a bandit checkpoint failed: %s", error, exc_info=error)


class LearnerThread:
    """The learner role's background loop: tail the log, sweep, checkpoint, until stopped.

    It opens its own decision-log connection and its own VW model, so nothing it touches
    is shared with the scoring thread(s).
    """

    def __init__(self, settings: Settings, log_path: Target, store: CheckpointStore,
                 poll_seconds: float = 0.05, spec: ChooserSpec = BANDIT,
                 lease: Lease | None = None):
        self.settings = settings
        self.lease = lease
        self.lost = threading.Event()  # set when the lease was lost: learning stopped
        self.spec = spec
        self.log_path = log_path
        self.store = store
        self.poll_seconds = poll_seconds
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bandit-learner", daemon=True)

    def start(self) -> None:
        """Start the loop and wait until the checkpoint is loaded and the log replayed."""
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        """Replay, publish, then poll the log until asked to stop; checkpoint on the way out."""
        try:
            log = DecisionLog(self.log_path, synchronous=self.settings.bandit.log_synchronous,
                              point=self.settings.decision_point)
            learner = Learner(self.settings, log, store=self.store, spec=self.spec)
            learner.catch_up()
            learner.checkpoint()  # publish at once, so scorers have a model to load
        except BaseException as exc:  # reported to start(), which re-raises it
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        last_sweep = 0.0
        last_check = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if self.lease is not None and time.monotonic() - last_check >= 1.0:
                    last_check = time.monotonic()
                    if not self.lease.held():
                        # Another learner may hold it now: stop at once, publish nothing.
                        LOG.error("the bandit learner lease was lost; learning stopped")
                        self.lost.set()
                        return
                try:
                    learner.catch_up()
                    if time.monotonic() - last_sweep >= self.settings.bandit.sweep_seconds:
                        learner.sweep(datetime.now(UTC))
                        last_sweep = time.monotonic()
                    learner.checkpoint_if_due()
                except Exception:  # e.g. the log stayed locked: log it, try again next poll
                    LOG.exception("bandit learner step failed; retrying")
                self.stop_event.wait(self.poll_seconds)
            learner.catch_up()
            learner.stop_refits()
            learner.checkpoint()
        finally:
            learner.stop_refits()
            learner.chooser.close()
            log.close()

    def stop(self) -> None:
        """Ask the loop to finish (it learns what is left and checkpoints) and wait."""
        self.stop_event.set()
        self.thread.join()


class ModelWatcher:
    """A scorer's view of the published model: reloads it when ``latest.json`` changes,
    looking at most every ``reload_seconds``.

    The look and the load run in a thread of their own (the checkpoint store may be a
    database; a VW model takes milliseconds to read): :meth:`refresh`, on the request
    path, only starts a look when one is due and swaps in a model loaded since. The new
    workspace is handed over whole, never used by two threads at once."""

    def __init__(self, settings: Settings, store: CheckpointStore, spec: ChooserSpec = BANDIT):
        self.settings = settings
        self.store = store
        self.spec = spec
        self.chooser, self.meta = load_chooser(settings, store, spec)
        self._stamp = store.latest_stamp()
        self._checked = time.monotonic()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-loader")
        self._loading: Future[tuple[Chooser, CheckpointMeta, Any] | None] | None = None

    def refresh(self, *, force: bool = False) -> bool:
        """Swap in a model loaded since the last call, and start a look for a newer one when
        ``reload_seconds`` passed; ``force``: look and load now, in this thread. True when
        the model changed."""
        swapped = self._collect(wait=force)
        now = time.monotonic()
        if force:
            self._checked = now
            return self._install(self._load_if_newer(self._stamp)) or swapped
        if self._loading is None and now - self._checked >= self.settings.bandit.reload_seconds:
            self._checked = now
            self._loading = self._loader.submit(self._load_if_newer, self._stamp)
        return swapped

    def _collect(self, *, wait: bool) -> bool:
        """Swap in what the look in flight loaded, once it is done (``wait``: wait for it);
        True when the model changed."""
        if self._loading is None or not (wait or self._loading.done()):
            return False
        loading, self._loading = self._loading, None
        try:
            return self._install(loading.result())
        except Exception:  # keep serving the model in hand; the next look retries
            LOG.exception("loading the newest bandit checkpoint failed")
            return False

    def _load_if_newer(self, stamp: Any) -> tuple[Chooser, CheckpointMeta, Any] | None:
        """The published model when its stamp is not ``stamp`` (None when it is)."""
        newer = self.store.latest_stamp()
        if newer == stamp:
            return None
        chooser, meta = load_chooser(self.settings, self.store, self.spec)
        return chooser, meta, newer

    def _install(self, loaded: tuple[Chooser, CheckpointMeta, Any] | None) -> bool:
        if loaded is None:
            return False
        old = self.chooser
        self.chooser, self.meta, self._stamp = loaded
        old.close()
        return True

    def close(self) -> None:
        """Stop looking and free the model (a model loaded but not swapped in yet too)."""
        self._loader.shutdown(wait=True)
        self._collect(wait=True)
        self.chooser.close()

    @property
    def policy_version(self) -> str:
        """The version of the model this scorer uses."""
        return policy_version(self.meta.fingerprint, self.meta.seq)

