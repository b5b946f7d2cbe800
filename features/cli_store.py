"""``nextbest store reset`` and ``nextbest store refresh``: put the online store right.

Why: the store keeps the latest as_of of each user, so a build with a mistaken as_of (far
in the future) stays there over every later correct build. ``refresh --as-of DATE`` loads a
built partition and replaces newer records; ``reset`` empties the records. Both keep what
users chose (preferences, removed tags) and the erasure list.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from features.build import load_features
from features.store import open_store
from nextbest.cli import command_group, iso_date
from nextbest.config import Settings
from nextbest.errors import ValidationFailed


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest store reset`` and ``nextbest store refresh``."""
    store_sub = command_group(sub, "store", "reset the online store or put an as_of back")
    reset = store_sub.add_parser(
        "reset", help="remove every record from the online store",
        description="Removes the features record of every user; keeps preferences, removed "
                    "tags and the erasure list. The next `features build` fills it again.")
    reset.add_argument("--yes", action="store_true", help="really remove the records")
    reset.set_defaults(handler=run_reset)
    refresh = store_sub.add_parser(
        "refresh", help="load one built as_of into the online store, replacing newer records",
        description="Loads OUT/as_of=DATE/features.parquet (built by `features build`) into "
                    "the online store. Records with a later as_of are replaced, and removed "
                    "for users not in that partition; preferences, removed tags and the "
                    "erasure list stay.")
    refresh.add_argument("--as-of", dest="as_of", type=iso_date, required=True,
                         metavar="YYYY-MM-DD", help="the built as_of to load")
    refresh.add_argument("--features", type=Path, default=None,
                         help="features directory (default: settings.paths.features_dir)")
    refresh.set_defaults(handler=run_refresh)


def _where(settings: Settings) -> str:
    """The store's location, for messages."""
    if settings.store.backend == "redis":
        return f"Redis {settings.store.redis_url} (prefix {settings.store.redis_prefix!r})"
    return str(settings.paths.store_path)


def run_reset(args: argparse.Namespace, settings: Settings) -> int:
    """Remove every record after ``--yes``; print how many."""
    with open_store(settings) as store:
        meta = store.meta()
        if not args.yes:
            raise ValidationFailed(
                f"store reset removes the records of {meta['users']:,} users (as_of "
                f"{meta['as_of']}) from {_where(settings)}; pass --yes to do it", field="yes")
        removed = store.reset()
    print(f"store reset: removed {removed:,} records from {_where(settings)}; preferences, "
          "removed tags and the erasure list kept")
    return 0


def run_refresh(args: argparse.Namespace, settings: Settings) -> int:
    """Load the partition of ``--as-of`` over newer records; print what changed."""
    frame = load_features(settings, args.as_of, args.features)
    with open_store(settings) as store:
        loaded = store.load_records(frame, args.as_of, replace_newer=True)
    print(f"store refreshed to as_of {args.as_of}: {loaded.written:,} records written, "
          f"{loaded.cleared:,} later records of users not in it removed ({_where(settings)})")
    return 0
