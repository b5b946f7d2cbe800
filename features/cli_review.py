"""``nextbest review list|clear|confirm``: the review queue of users a risk rule tagged.

A user in the queue gets no automated incentive until an operator clears them; confirming
keeps incentives off. Every decision needs a note and names the operator (``--by``,
default: the login name of whoever runs the command).
"""

from __future__ import annotations

import argparse
import getpass
import json

from features.review import DECISIONS, REVIEW_STATUSES, ReviewItem
from features.store import open_store
from nextbest.cli import command_group
from nextbest.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest review list``, ``review clear`` and ``review confirm``."""
    actions = command_group(sub, "review", "the review queue of risk-tagged users")
    listing = actions.add_parser("list", help="users in the queue, with the reasons",
                                 description="Lists reviews, oldest first: user, status, "
                                             "since when, the risk reasons and the last "
                                             "decision.")
    listing.add_argument("--status", choices=[*REVIEW_STATUSES, "all"], default="pending",
                         help="which reviews (default: pending)")
    listing.add_argument("--json", action="store_true", help="print the reviews as JSON")
    listing.set_defaults(handler=run_list)
    effects = {"cleared": ("clear", "automated incentives come back"),
               "confirmed": ("confirm", "automated incentives stay off")}
    for decision in DECISIONS:
        verb, effect = effects[decision]
        parser = actions.add_parser(verb, help=f"{verb} a user's review: {effect}")
        parser.add_argument("user_id")
        parser.add_argument("--note", required=True, help="why (kept with the decision)")
        parser.add_argument("--by", default=None,
                            help="the operator deciding (default: your login name)")
        parser.set_defaults(handler=run_decide, decision=decision)


def _line(item: ReviewItem) -> str:
    decided = (f"; {item.status} by {item.decided_by} on {item.decided_ts:%Y-%m-%d %H:%M}: "
               f"{item.note}" if item.decided_ts else "")
    return (f"{item.user_id}  {item.status}  since {item.opened_ts:%Y-%m-%d %H:%M} "
            f"(features {item.as_of})  {' | '.join(item.reasons)}{decided}")


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the reviews with ``--status``."""
    with open_store(settings) as store:
        items = store.reviews(None if args.status == "all" else args.status)
    if args.json:
        print(json.dumps([item.model_dump(mode="json") for item in items], indent=2))
        return 0
    for item in items:
        print(_line(item))
    which = "" if args.status == "all" else f" {args.status}"
    print(f"{len(items):,}{which} review{'' if len(items) == 1 else 's'}")
    return 0


def run_decide(args: argparse.Namespace, settings: Settings) -> int:
    """Clear or confirm one user's review."""
    by = args.by or getpass.getuser()
    with open_store(settings) as store:
        item = store.decide_review(args.user_id, args.decision, args.note, by)
    effect = "automated incentives restored" if not item.under_review else \
        "automated incentives stay off"
    print(f"{item.user_id}: review {item.status} by {item.decided_by} ({effect})")
    return 0
