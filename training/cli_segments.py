"""``nextbest segments report``: the tier and segment report of one as_of.

It lives with the training stage because its Platinum churn alert reads the champion churn
model; the report itself is :mod:`features.report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from features.report import (
    build_report,
    default_out_dir,
    render_text,
    resolve_as_of,
    write_report,
)
from nextbest.cli import command_group, iso_date
from nextbest.config import Settings
from training.loader import load_churn_scorer, load_ltv_scorer


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest segments report``."""
    commands = command_group(sub, "segments", "tier and segment reports")
    report = commands.add_parser(
        "report", help="tier sizes, shares, ARPU, segments, tier migration and alerts",
        description="Summarise the features of one as_of: tiers, segments, the tier "
                    "migration since --compare-to and alerts. Writes report.json and "
                    "segments.png into --out and prints their paths.")
    report.add_argument("--as-of", type=iso_date, help="features date (default: the latest built)")
    report.add_argument("--compare-to", type=iso_date,
                        help="second features date: tier migration and share shifts")
    report.add_argument("--json", action="store_true", help="print the report as one JSON "
                        "object (paths go to stderr)")
    report.add_argument("--out", type=Path,
                        help="output directory (default: REPORTS_DIR/segments_AS_OF)")
    report.add_argument("--tier-by", choices=("value", "ltv"), default="value",
                        help="rank Platinum and Gold by past value (features.tiers."
                        "value_column, default) or by the LTV champion's forecast")
    report.add_argument("--features-dir", type=Path,
                        help="features root (default: paths.features_dir)")
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    """Build, print and write the segments report."""
    # Check the dates before loading the churn model, which takes seconds.
    as_of = resolve_as_of(settings, args.as_of, args.features_dir)
    compare_to = args.compare_to and resolve_as_of(settings, args.compare_to, args.features_dir)
    report = build_report(settings, as_of, compare_to, scorer=load_churn_scorer(settings),
                          ltv=load_ltv_scorer(settings), features_dir=args.features_dir,
                          tier_by=args.tier_by)
    json_path, chart_path = write_report(report, args.out or default_out_dir(settings, report))
    if args.json:
        print(report.model_dump_json())
        paths_to = sys.stderr
    else:
        print(render_text(report))
        print()
        paths_to = sys.stdout
    print(f"wrote {json_path}", file=paths_to)
    print(f"wrote {chart_path}", file=paths_to)
    return 0
