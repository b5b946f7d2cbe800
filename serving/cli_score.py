"""``nextbest score --all``: every user of the online store, scored, in one Parquet file.

The store is read in chunks (:meth:`~features.store.OnlineStore.iter_frames`, a full scan
on SQLite and Redis alike); each chunk is scored at once by the champion models
(:meth:`~serving.scoring.Scorer.score_table`, the path ``/score`` takes for ``user_ids``)
and appended to the file, so memory stays a few chunks whatever the number of users. A
second thread reads and decodes the next chunk while this one is scored (SQLite, pyarrow's
JSON reader and LightGBM all release the GIL), which takes a third off the time on 2 cores. The
columns are :data:`~serving.scoring.SCORE_COLUMNS`; the model versions are in the file's
metadata. The file is written under a temporary name and renamed: a reader sees the old
file or the whole new one.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from features.store import SCAN_CHUNK_ROWS, open_store
from nextbest.config import Settings
from nextbest.errors import ValidationFailed

if TYPE_CHECKING:  # the models load only when the command runs
    from serving.scoring import Scorer

SCORES_FILE = "scores.parquet"
T = TypeVar("T")


class ScoredAll(NamedTuple):
    """What ``score --all`` wrote."""

    users: int
    seconds: float
    path: Path
    model_versions: dict[str, str]


def parquet_schema(versions: dict[str, str]) -> pa.Schema:
    """The file's columns (:data:`~serving.scoring.SCORE_COLUMNS`, in order) and, as
    metadata, the version of each model (``churn_version``, ``propensity_version``)."""
    from serving.scoring import SCORE_COLUMNS

    types = {"user_id": pa.string(), "features_as_of": pa.string(), "tier": pa.string(),
             "segment": pa.string(), "tags": pa.list_(pa.string()),
             "churn_probability": pa.float64(), "purchase_propensity": pa.float64(),
             "lifecycle_stage": pa.string(), "ltv_12m": pa.float64()}
    return pa.schema([(name, types[name]) for name in SCORE_COLUMNS],
                     metadata={f"{name}_version": v for name, v in versions.items()})


def score_all(scorer: Scorer, out: Path, chunk_rows: int = SCAN_CHUNK_ROWS) -> ScoredAll:
    """Score every user of ``scorer.store`` into the Parquet file ``out``."""
    began = time.perf_counter()
    versions = {name: str(v) for name, v in scorer.model_versions().items() if v is not None}
    schema = parquet_schema(versions)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    users = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for records in prefetched(scorer.store.iter_frames(chunk_rows)):
                table = scorer.score_table(records)
                writer.write_table(pa.Table.from_pandas(table, schema=schema,
                                                        preserve_index=False))
                users += len(table)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ScoredAll(users, time.perf_counter() - began, out, versions)


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer.

    An exception of the producer is raised here, in the consumer; a consumer that stops
    early (an exception of its own) makes the producer stop at its next item."""
    ready: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[bool, object]) -> bool:
        """Queue ``entry`` unless the consumer has stopped; whether it was queued."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((True, item)):
                    return
            offer((False, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer((False, exc))

    thread = threading.Thread(target=produce, name="score-all-reader", daemon=True)
    thread.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item  # type: ignore[misc]
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def _score(args: argparse.Namespace, settings: Settings) -> int:
    """Handler of ``nextbest score --all``."""
    out = Path(args.out or Path(settings.paths.data_dir) / SCORES_FILE)
    if out.is_dir():
        raise ValidationFailed(f"--out {out} is a directory; give a file path such as "
                               f"{out / SCORES_FILE}", field="out")
    if args.chunk_rows <= 0:
        raise ValidationFailed(f"--chunk-rows must be positive, got {args.chunk_rows}",
                               field="chunk_rows")
    from serving.scoring import Scorer
    from training.loader import load_champions

    champions = load_champions(settings)  # NotFound (one line, non-zero exit) without them
    with open_store(settings) as store:
        scorer = Scorer(settings, store, champions)
        scorer.use_ltv(scorer.load_ltv())
        done = score_all(scorer, out, args.chunk_rows)
    models = ", ".join(f"{name} v{version}" for name, version in done.model_versions.items())
    print(f"scored {done.users:,} users in {done.seconds:.1f} s ({models}) -> {done.path}")
    if not done.users:
        print("warning: the online store holds no records: run `nextbest features build`",
              file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest score``."""
    parser = sub.add_parser(
        "score", help="score every user of the online store into a Parquet file",
        description="Write every user's tier, segment, tags, churn probability and purchase "
                    "propensity (the champion models' scores, as /score gives them) to "
                    "Parquet, reading the online store in chunks.")
    parser.add_argument("--all", action="store_true", required=True,
                        help="every user with a record in the online store")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the Parquet file to write (default: paths.data_dir/{SCORES_FILE})")
    parser.add_argument("--chunk-rows", type=int, default=SCAN_CHUNK_ROWS,
                        help=f"users read and scored at a time (default {SCAN_CHUNK_ROWS:,})")
    parser.set_defaults(handler=_score)
