"""Erasure everywhere: the one place that knows every store and file a user's data is in.

``DELETE /users/{id}`` and ``nextbest data erase`` both come here (:class:`Eraser`). The
places, in the order they are erased:

1. *Files are staged first*: each file holding the user is rewritten beside itself
   (:class:`features.erasure.StagedFile`) without being put in place: the raw tables,
   import rejects, feature partitions and latent traits (by their rules), then every other
   file under ``paths.data_dir``, ``paths.reports_dir`` and ``paths.mlruns_dir``: Parquet
   tables (``score --all`` output, reports' tables), CSV files (the MLflow runs'
   ``validation_predictions.csv``, reports' tables), JSON lines (a channel's deliveries),
   JSON (a report's ``report.json``: the list items and objects naming the user go). A text
   file that names the user in a form erasure cannot rewrite (an HTML page, an id inside
   free text) fails the erasure before anything changed: regenerate or delete it.
2. *Stores*, each in one transaction with ``secure_delete``, then a WAL checkpoint that
   empties the ``-wal`` file: the online store (which lists the user's salted hash as
   erased), the decision log, the campaign store. A store that fails rolls its own
   transaction back (its connection stays writable) and the staged files are discarded.
3. *Files are committed* (atomic renames; JSON lines are rewritten in place under the
   channel's file lock, so a dispatcher appending meanwhile loses nothing).

A failure raises :class:`~nextbest.errors.ErasureFailed` naming the place (``field``) and
the places already erased (never undone: erasure only goes forward; running it again
finishes it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from campaigns.store import CampaignStore
from decisions.decision_log import DecisionLog
from features.erasure import (
    ErasureReport,
    StagedFile,
    UserEraser,
    names_user,
    stage_csv,
    stage_files,
    stage_json,
    stage_json_lines,
    stage_parquet,
    token_pattern,
)
from features.store import OnlineStore, open_store, unique_user_ids
from nextbest.config import Settings
from nextbest.errors import ErasureFailed
from nextbest.storage import exists, location

SQLITE_MAGIC = b"SQLite format 3\x00"
# Text files a user's id may appear in but that erasure cannot rewrite row by row.
TEXT_SUFFIXES = {".json", ".html", ".htm", ".md", ".txt", ".yaml", ".yml", ".log", ".xml"}
# Files under data_dir that never hold a user: the salt and the API key hashes.
SKIP_NAMES = {"id_salt", "keys.yaml"}


class Eraser:
    """Erases users from every place under ``settings.paths`` (module docstring).

    ``decisions`` and ``campaigns`` are the caller's open stores (the service's engine and
    campaign store); ``campaign_lock`` serialises use of the campaign store's connection."""

    def __init__(self, settings: Settings, store: OnlineStore, *,
                 decisions: UserEraser | None = None, campaigns: CampaignStore | None = None,
                 campaign_lock: threading.RLock | None = None):
        self.settings = settings
        self.store = store
        self.decisions = decisions
        self.campaigns = campaigns
        self.campaign_lock = campaign_lock or threading.RLock()

    def erase(self, user_ids: Iterable[str], *, now: datetime | None = None) -> ErasureReport:
        """Erase the users everywhere; raises :class:`ErasureFailed` naming the place that
        failed (files untouched, the failing store rolled back)."""
        ids = unique_user_ids(user_ids)
        staged = self.stage(ids)
        report = ErasureReport(user_ids=ids)
        done: list[str] = []
        steps: list[tuple[str, Callable[[], None]]] = [
            ("online store", lambda: setattr(report, "store_records",
                                             self.store.erase_many(ids, now=now)))]
        if self.decisions is not None:
            decisions = self.decisions
            steps.append(("decision log", lambda: setattr(report, "decisions", sum(
                decisions.erase_user(u) for u in ids))))
        if self.campaigns is not None:
            steps.append(("campaign store", lambda: setattr(report, "campaign_rows",
                                                            self._erase_campaigns(ids))))
        for place, step in steps:
            try:
                step()
            except Exception as exc:
                _discard(staged)
                raise _failed(place, exc, done) from exc
            done.append(place)
        for one in staged:
            try:
                one.commit()
            except Exception as exc:
                _discard(staged)
                raise _failed(str(one.path), exc, done) from exc
            report.files[str(one.path)] = one.counts
        return report

    def _erase_campaigns(self, ids: Sequence[str]) -> int:
        assert self.campaigns is not None
        with self.campaign_lock:
            return sum(self.campaigns.erase_user(u) for u in ids)

    def stage(self, ids: Sequence[str]) -> list[StagedFile]:
        """Every file holding one of the users, rewritten beside itself (not yet in place).
        Raises :class:`ErasureFailed` naming the file that could not be (nothing changed)."""
        paths = self.settings.paths
        staged: list[StagedFile] = []
        try:
            staged += stage_files(ids, raw_dir=paths.raw_dir, features_dir=paths.features_dir,
                                  latent_dir=paths.latent_dir)
            # Known trees have their own rules; the worker board (data/serving/) holds no user.
            known = {paths.raw_dir, paths.features_dir, paths.latent_dir,
                     Path(paths.data_dir) / "serving"}
            pattern = token_pattern(ids)
            for path in self._other_files(known):
                one = _stage_other(path, ids, pattern)
                if one is not None:
                    staged.append(one)
        except ErasureFailed:
            _discard(staged)
            raise
        return staged

    def _other_files(self, known: set[Path]) -> Iterator[Path]:
        """Files under data_dir, reports_dir and mlruns_dir outside the ``known`` trees
        (those have their own rules), skipping SQLite databases (their stores erase them)
        and logged models (directories with an ``MLmodel`` file: no user data, and a rewrite
        would break them)."""
        paths = self.settings.paths
        resolved = {Path(p).resolve() for p in known}
        seen: set[Path] = set()
        for root in (paths.data_dir, paths.reports_dir, paths.mlruns_dir):
            root = Path(root)
            if not root.is_dir():
                continue
            for directory, dirs, files in os.walk(root):
                here = Path(directory).resolve()
                if MODEL_MARKER in files:
                    # A logged model (MLflow's MLmodel beside its artifacts): booster, spec,
                    # input example hold no user by construction, and rewriting one would
                    # corrupt the model (a spec key or category equal to an erased id).
                    dirs[:] = []
                    continue
                dirs[:] = [d for d in dirs if (here / d) not in resolved]
                for name in files:
                    path = here / name
                    if path in seen or name in SKIP_NAMES or name.endswith(".erasing") \
                            or _is_sqlite(path):
                        continue
                    seen.add(path)
                    yield path


MODEL_MARKER = "MLmodel"  # the file that makes a directory an MLflow logged model

# Names of SQLite databases and their companion files, recognised without opening them.
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db", "-wal", "-shm", "-journal")


def _is_sqlite(path: Path) -> bool:
    """A SQLite database or one of its ``-wal`` / ``-shm`` / ``-journal`` files.

    Known names are never opened: closing any descriptor of a database file drops every
    POSIX lock this process holds on it, so the service's own connections would lose
    theirs, and another process closing its last connection would then delete the WAL
    under them (their later writes vanish, or fail with "disk I/O error")."""
    if path.name.endswith(SQLITE_SUFFIXES):
        return True
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _stage_other(path: Path, ids: Sequence[str], pattern: Any) -> StagedFile | None:
    """Stage one file of unknown origin by its kind; refuse a text file naming the user."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return stage_parquet(path, None, ids)
        if suffix == ".csv":
            return stage_csv(path, ids)
        if suffix == ".json":
            return stage_json(path, ids)
        if suffix == ".jsonl":
            one = stage_json_lines(path, ids)
            return None if one is None else LockedLines(one, ids)
        if suffix in TEXT_SUFFIXES and pattern.search(path.read_bytes()):
            raise ErasureFailed(
                f"{path} names a user being erased and erasure cannot rewrite a {suffix} "
                "file: regenerate it (e.g. `nextbest report`) or delete it, then erase again",
                field=str(path))
    except ErasureFailed:
        raise
    except Exception as exc:
        raise ErasureFailed(f"{path}: cannot rewrite it without the user ({exc}); nothing "
                            "was erased", field=str(path)) from exc
    return None


class LockedLines(StagedFile):
    """A JSON-lines file is committed in place under its lock (the channel appends to an
    open handle, which a rename would orphan); lines appended since staging are kept."""

    def __init__(self, staged: StagedFile, ids: Sequence[str]):
        super().__init__(staged.path, staged.counts, staged.tmp)
        self.ids = list(ids)

    def commit(self) -> None:
        self.discard()
        pattern = token_pattern(self.ids)
        with self.path.open("r+b") as f, locked(f):
            lines = f.read().splitlines(keepends=True)
            f.seek(0)
            f.write(b"".join(line for line in lines if not names_user(line, pattern)))
            f.truncate()
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def locked(f: Any) -> Iterator[None]:
    """An exclusive ``flock`` on an open file for the block."""
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _discard(staged: list[StagedFile]) -> None:
    for one in staged:
        with contextlib.suppress(OSError):
            one.discard()


def _failed(place: str, exc: Exception, done: list[str]) -> ErasureFailed:
    """The error of a failed step: which place, why, and what was already erased."""
    already = (f"already erased (and kept so): {', '.join(done)}" if done
               else "nothing else was erased")
    if isinstance(exc, ErasureFailed):  # says itself what became of its own changes
        return ErasureFailed(f"erasure failed in the {place}: {exc.message}; no file was "
                             f"changed; {already}", field=place)
    return ErasureFailed(f"erasure failed in the {place}: {type(exc).__name__}: {exc}; its "
                         f"changes were rolled back and no file was changed; {already}. Run "
                         "the erasure again once the cause is fixed", field=place)


def listed_in_files(settings: Settings, store: OnlineStore) -> list[str]:
    """Ids in the raw tables, feature partitions and latent traits whose hash is on the
    erasure list (the list holds no ids): what ``data erase --pending`` purges."""
    import pyarrow.parquet as pq

    from features.contract import raw_files
    from features.erasure import FEATURES_GLOB, LATENT_FILES, RAW_RULES

    paths = settings.paths
    columns: list[tuple[Path, tuple[str, ...]]] = [
        (path, (*rule.drop, *rule.blank)) for name, rule in RAW_RULES.items()
        for path in raw_files(Path(paths.raw_dir), name)]
    columns += [(path, ("user_id",))
                for path in sorted(Path(paths.features_dir).glob(FEATURES_GLOB))]
    columns += [(Path(paths.latent_dir) / name, ("user_id",)) for name in LATENT_FILES]
    found: set[str] = set()
    for path, names in columns:
        if not path.is_file():
            continue
        present = [n for n in names if n in pq.read_schema(path).names]
        table = pq.read_table(path, columns=present)
        for name in present:
            found.update(str(v) for v in table[name].unique().to_pylist() if v is not None)
    return sorted(store.erased_among(found))


def erase_everywhere(settings: Settings, user_ids: Iterable[str], *,
                     pending: bool = False, now: datetime | None = None) -> ErasureReport:
    """``nextbest data erase``: the users (plus, with ``pending``, everyone on the erasure
    list still found in the files) from every place under ``settings.paths``.

    The decision log and the campaign store are only opened when their files exist."""
    with open_store(settings) as store, contextlib.ExitStack() as stack:
        ids = unique_user_ids(user_ids) if user_ids else []
        if pending:
            ids = list(dict.fromkeys([*ids, *listed_in_files(settings, store)]))
        campaigns = decisions = None
        if exists(location(settings, "campaign_store")):
            campaigns = CampaignStore(location(settings, "campaign_store"))
            stack.callback(campaigns.close)
        if exists(location(settings, "decision_log")):
            decisions = DecisionLog(location(settings, "decision_log"),
                                    synchronous=settings.bandit.log_synchronous)
            stack.callback(decisions.close)
        if not ids:
            return ErasureReport(user_ids=[])
        return Eraser(settings, store, decisions=decisions, campaigns=campaigns).erase(
            ids, now=now)
