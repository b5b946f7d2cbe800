"""``nextbest features build``: point-in-time features, segmentation and the online store."""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

from features.build import build_features, default_as_of, partition_dir, refresh_online_store
from features.engines import ENGINES
from nextbest.cli import command_group
from nextbest.config import Settings
from nextbest.errors import ValidationFailed


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest features build``."""
    features_sub = command_group(sub, "features", "build point-in-time features, tiers and tags")
    build = features_sub.add_parser(
        "build", help="compute the features of one as_of date and refresh the online store",
        description="Reads the raw tables, computes one row per user from rows before AS_OF "
                    "only, adds tier, RFM segment, cluster, seller tier and tags, writes "
                    "OUT/as_of=AS_OF/features.parquet and refreshes the online store.")
    build.add_argument("--as-of", dest="as_of", default=None, metavar="YYYY-MM-DD",
                       help="feature date (default: the day after the latest order or event)")
    build.add_argument("--engine", choices=ENGINES, default=None,
                       help="execution engine (default: settings.features.engine)")
    build.add_argument("--data", type=Path, default=None,
                       help="raw tables directory (default: settings.paths.raw_dir)")
    build.add_argument("--out", type=Path, default=None,
                       help="features directory (default: settings.paths.features_dir)")
    build.add_argument("--no-store", dest="store", action="store_false",
                       help="do not refresh the online store")
    build.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar")
    build.add_argument("--force", action="store_true",
                       help="build an as_of more than features.as_of_max_days_past_data days "
                            "after the data ends")
    build.set_defaults(handler=run_build)


def parse_as_of(text: str | None) -> date | None:
    """``YYYY-MM-DD`` to a date; :class:`ValidationFailed` naming the flag otherwise."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ValidationFailed(f"--as-of {text!r} is not a date (YYYY-MM-DD)",
                               field="as_of") from exc


def run_build(args: argparse.Namespace, settings: Settings) -> int:
    """Build the features, refresh the store and print one summary line saying what the
    store did (it keeps records newer than this as_of, and says so)."""
    started = time.perf_counter()
    as_of = parse_as_of(args.as_of)
    if as_of is None:
        as_of = default_as_of(settings, args.data)
    frame = build_features(settings, as_of, engine=args.engine, raw_dir=args.data,
                           out_dir=args.out, refresh_store=False, progress=args.progress,
                           force=args.force or args.as_of is None)  # a default is in range
    store = "store not refreshed"
    if args.store:
        store = refresh_online_store(settings, frame, as_of, args.data).line()
    where = partition_dir(args.out or settings.paths.features_dir, as_of)
    print(f"features as_of {as_of}: {len(frame):,} users, {frame.shape[1]} columns in "
          f"{time.perf_counter() - started:.1f} s -> {where} ({store})")
    return 0
