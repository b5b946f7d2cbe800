"""``nextbest data synth`` (synthetic marketplace) and ``nextbest data import`` (platform files).

``nextbest data erase`` is added to the same group by :mod:`serving.cli`, next to the code
that knows every place a user's data is kept."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from features.contract import SPECS
from features.importers import import_table
from features.synth import synthesize
from nextbest.cli import command_group, non_negative_int, output_dir
from nextbest.config import Settings
from nextbest.errors import ValidationFailed


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest data synth`` and ``nextbest data import``."""
    data_sub = command_group(sub, "data", help="import platform tables, generate a synthetic "
                                               "marketplace, erase users")
    _register_synth(data_sub)
    _register_import(data_sub)


def _register_synth(sub: argparse._SubParsersAction) -> None:
    synth = sub.add_parser(
        "synth", help="write the five raw tables of a synthetic marketplace and its latent traits")
    synth.add_argument("--users", type=int, default=5000, help="number of users (default 5000)")
    synth.add_argument("--days", type=int, default=730, help="days of history (default 730)")
    synth.add_argument("--seed", type=non_negative_int, default=None, help="random seed (default: settings.seed)")
    synth.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1),
                       help="first day, YYYY-MM-DD (default 2024-01-01)")
    synth.add_argument("--out", type=output_dir, default=None,
                       help="raw tables directory (default: settings.paths.raw_dir)")
    synth.add_argument("--latent-out", type=output_dir, default=None,
                       help="latent traits directory (default: settings.paths.latent_dir)")
    synth.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace, settings: Settings) -> int:
    """Generate the synthetic marketplace and print one summary line."""
    summary = synthesize(
        n_users=args.users, days=args.days,
        seed=settings.seed if args.seed is None else args.seed,
        raw_dir=args.out or settings.paths.raw_dir,
        latent_dir=args.latent_out or settings.paths.latent_dir,
        start=args.start,
    )
    print(summary.line())
    return 0


def _register_import(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import", help="import a CSV or Parquet file as one table of the data contract",
        description="Read PATH, rename its columns onto the contract's, keep the good rows in "
                    "OUT/TABLE.parquet and report bad ones in OUT/rejects/TABLE.csv. Files "
                    "without a header line get columns named 1, 2, 3, ... (e.g. the CDNOW "
                    "master file: --map buyer_id=1,ts=2,amount=4). An existing table needs "
                    "--append or --replace; when more than features.import_max_reject_share "
                    "of the rows are rejected the table is left as it was and the command "
                    "fails.")
    imp.add_argument("table", choices=list(SPECS), help="which table the file holds")
    imp.add_argument("path", type=Path, help="CSV (any delimiter) or Parquet file")
    imp.add_argument("--map", dest="mapping", action="append", nargs="+", default=[],
                     metavar="OURS=THEIRS",
                     help="column mapping, e.g. --map buyer_id=cust ts=date or "
                          "--map buyer_id=cust,ts=date (repeatable)")
    imp.add_argument("--out", type=Path, default=None,
                     help="output directory (default: settings.paths.raw_dir)")
    imp.add_argument("--sep", default=None,
                     help="CSV delimiter (default: sniffed; whitespace-separated files work)")
    header = imp.add_mutually_exclusive_group()
    header.add_argument("--no-header", dest="header", action="store_false", default=None,
                        help="the first line is data (default: sniffed)")
    header.add_argument("--header", dest="header", action="store_true",
                        help="the first line holds column names (default: sniffed)")
    imp.add_argument("--names", default=None,
                     help="comma-separated names for the file's columns, e.g. cust,date,qty,total")
    imp.add_argument("--date-format", dest="date_format", default=None, metavar="FORMAT",
                     help="how the file writes its timestamps (strftime), e.g. %%m/%%d/%%Y or "
                          "'%%d.%%m.%%Y %%H:%%M' (default: ISO 8601, YYYYMMDD, epoch seconds, "
                          "or day/month when the file shows their order)")
    imp.add_argument("--encoding", default=None,
                     help="text encoding of a CSV file, e.g. latin-1 or cp1252 (default utf-8)")
    mode = imp.add_mutually_exclusive_group()
    mode.add_argument("--append", dest="mode", action="store_const", const="append",
                      default=None, help="add the rows to an existing table (a row with the "
                                         "key of an existing one replaces it)")
    mode.add_argument("--replace", dest="mode", action="store_const", const="replace",
                      help="overwrite an existing table")
    imp.set_defaults(handler=run_import)


def parse_mapping(items: list[list[str]]) -> dict[str, str]:
    """``[["a=x,b=y"], ["c=z"]]`` -> ``{"a": "x", "b": "y", "c": "z"}``."""
    mapping: dict[str, str] = {}
    for group in items:
        for item in group:
            for pair in filter(None, item.split(",")):
                ours, eq, theirs = pair.partition("=")
                if not eq or not ours.strip() or not theirs.strip():
                    raise ValidationFailed(f"--map {pair!r}: expected OURS=THEIRS", field="map")
                mapping[ours.strip()] = theirs.strip()
    return mapping


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import one file and print the accepted / rejected counts and any notes."""
    sep = {"\\t": "\t", "tab": "\t", "space": r"\s+", "whitespace": r"\s+"}.get(args.sep, args.sep)
    result = import_table(
        args.table, args.path, parse_mapping(args.mapping), args.out or settings.paths.raw_dir,
        sep=sep, header=args.header,
        names=[n.strip() for n in args.names.split(",")] if args.names else None,
        date_format=args.date_format, encoding=args.encoding, mode=args.mode,
        max_reject_share=settings.features.import_max_reject_share,
    )
    print("\n".join(result.lines()))
    return 0
