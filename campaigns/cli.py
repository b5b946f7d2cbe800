"""``nextbest campaigns list|run``, ``nextbest scheduler`` and ``nextbest dispatch``.

The first two open the decision engine as a scorer (the service, or ``nextbest learner``, is the
one learner), the online store with the champion models, and the campaign store.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime

from nextbest.cli import command_group
from nextbest.config import Settings
from nextbest.errors import ValidationFailed
from nextbest.storage import location


def iso_moment(text: str) -> datetime:
    """argparse ``type`` for ``--now``: an ISO 8601 moment, naive meaning UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a moment (e.g. 2026-01-05T10:00 or 2026-01-05T10:00:00+00:00)"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@contextmanager
def open_layer(settings: Settings) -> Iterator:
    """The campaign layer over scorer engines (one per decision point), the online store and
    the champions."""
    from campaigns.layer import CampaignLayer
    from decisions.engine import DecisionEngine
    from decisions.points import DecisionPoints
    from decisions.users import UserDirectory, try_load_champions
    from features.store import open_store
    from training.loader import load_seller_churn_champion

    store = open_store(settings)
    points = None
    layer = None
    try:
        users = UserDirectory(settings, store, *try_load_champions(settings))
        users.seller_churn_model = load_seller_churn_champion(settings)
        points = DecisionPoints.open(settings, lambda scoped: DecisionEngine(scoped,
                                                                             role="scorer"))
        layer = CampaignLayer(settings, points, users)
        yield layer
    finally:
        if layer is not None:
            layer.close()
        if points is not None:
            points.close()
        store.close()


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from campaigns.definitions import compile_campaigns, names_for

    compile_campaigns(settings)  # a misspelt rule is refused before anything is shown
    from campaigns.store import CampaignStore

    store = CampaignStore(location(settings, "campaign_store"))
    try:
        counts = store.counts()
    finally:
        store.close()
    rows = []
    for c in settings.campaigns.campaigns:
        rows.append({"name": c.name, "kind": c.kind, "event": c.event, "schedule": c.schedule,
                     "condition": c.condition, "arms": c.arms or "all",
                     "holdout_share": c.holdout_share, "enabled": c.enabled,
                     "counts": counts.get(c.name, {}),
                     "names": sorted(names_for(c, settings))})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        when = row["event"] if row["kind"] != "scheduled" else f"cron {row['schedule']}"
        state = "" if row["enabled"] else " (disabled)"
        counts_text = ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items())) or "none"
        print(f"{row['name']}{state}: {row['kind']} on {when}; holdout "
              f"{row['holdout_share']:.0%}; arms {row['arms']}")
        if row["condition"]:
            print(f"  when: {row['condition']}")
        print(f"  outbox: {counts_text}")
    print("\nnames a condition may read: `nextbest campaigns list --json` lists them per "
          "campaign")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    with open_layer(settings) as layer:
        report = layer.run(args.name, now=args.now, dry_run=args.dry_run)
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    suppressed = ", ".join(f"{k} {v}" for k, v in sorted(report.suppressed.items())) or "none"
    what = "would reach" if args.dry_run else "reached"
    print(f"{report.campaign} (slot {report.slot}): audience {report.audience}, holdout "
          f"{report.holdout}; {what} {report.messages} with a message; suppressed: "
          f"{suppressed}; already in the outbox: {report.already} ({report.seconds:.1f} s)")
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from campaigns.report import campaign_report, format_report
    from campaigns.store import CampaignStore

    settings.campaigns.campaign(args.name)  # unknown: NotFound listing the campaigns
    store = CampaignStore(location(settings, "campaign_store"))
    try:
        report = campaign_report(settings, store, args.name, now=datetime.now(UTC),
                                 alpha=args.alpha)
    finally:
        store.close()
    print(report.model_dump_json(indent=2) if args.json else format_report(report))
    return 0


def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    if args.interval <= 0:
        raise ValidationFailed(f"--interval must be positive, got {args.interval}",
                               field="interval")
    stop = threading.Event()
    if not args.once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with open_layer(settings) as layer:
        while True:
            report = layer.run_due(args.now)
            runs = "; ".join(f"{r.campaign} {r.messages} messages of {r.audience}"
                             for r in report.runs) or "no campaign due"
            print(f"{report.now:%Y-%m-%d %H:%M:%S} UTC: {report.timers_fired} delayed "
                  f"trigger(s) fired; {runs}; {report.events_exported} event(s) exported",
                  flush=True)
            if args.once or stop.wait(args.interval):
                return 0


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from campaigns.dispatcher import Dispatcher, DispatchReport
    from campaigns.store import CampaignStore

    if args.interval <= 0:
        raise ValidationFailed(f"--interval must be positive, got {args.interval}",
                               field="interval")

    def show(report: DispatchReport) -> None:
        if args.once or report.claimed:
            print(f"{report.now:%Y-%m-%d %H:%M:%S} UTC: {report.claimed} claimed: "
                  f"{report.sent} sent, {report.retried} to retry, {report.dead} dead, "
                  f"{report.lost} lost to another dispatcher ({report.seconds:.1f} s)",
                  flush=True)

    with closing(CampaignStore(location(settings, "campaign_store"))) as store, \
            closing(Dispatcher(settings, store, environ=os.environ)) as dispatcher:
        if args.once:
            show(dispatcher.run_once(args.now))
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"dispatching to {', '.join(dispatcher.channels) or 'no enabled channel'} "
              f"every {args.interval:g} s", flush=True)
        dispatcher.run(stop, args.interval, args.now, on_pass=show)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest campaigns list|run``, ``nextbest scheduler`` and ``nextbest dispatch``."""
    actions = command_group(sub, "campaigns", help="campaigns: list them, run a scheduled one")
    p = actions.add_parser("list", help="the configured campaigns and their outbox counts")
    p.add_argument("--json", action="store_true", help="print JSON, with the names each "
                   "campaign's condition may read")
    p.set_defaults(handler=_list)
    p = actions.add_parser("run", help="run a scheduled campaign over its audience now",
                           description="Evaluate the campaign's audience over the online "
                           "store, split off its holdout, decide each remaining user's arm and "
                           "write the outbox. Running the same --now slot again adds nothing.")
    p.add_argument("name", help="campaign name (nextbest campaigns list)")
    p.add_argument("--now", type=iso_moment, default=None,
                   help="the moment of the run, ISO 8601, UTC unless an offset is given "
                   "(default: now)")
    p.add_argument("--dry-run", action="store_true",
                   help="count the audience and holdout; decide and write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_run)
    p = actions.add_parser("report", help="a campaign's funnel and lift over its holdout",
                           description="Funnel (fired, suppressed by reason, scheduled, sent, "
                           "delivered, opened, clicked, converted), attributed revenue and arm "
                           "cost, and the lift in conversion over the campaign's own holdout "
                           "(intention to treat) with intervals and ROI, per arm and tier.")
    p.add_argument("name", help="campaign name")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - interval level")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_report)

    p = sub.add_parser("scheduler", help="fire delayed triggers and scheduled campaigns",
                       description="Every --interval seconds (or once): fire the delayed "
                       "triggers due, run each scheduled campaign whose latest cron slot has "
                       "not run, and export kept events into the raw data.")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--now", type=iso_moment, default=None,
                   help="evaluate at this moment instead of the clock (tests, backfills)")
    p.add_argument("--interval", type=float, default=30.0,
                   help="seconds between passes (default 30)")
    p.set_defaults(handler=_scheduler)

    p = sub.add_parser("dispatch", help="send due outbox messages to their channels",
                       description="Every --interval seconds (or once): claim the due outbox "
                       "messages, send each to its channel (a signed webhook POST with an "
                       "Idempotency-Key, or a JSON line), retry failures with backoff and "
                       "mark them dead after dispatch.max_attempts.")
    p.add_argument("--once", action="store_true", help="send everything due, then exit")
    p.add_argument("--now", type=iso_moment, default=None,
                   help="send as of this moment instead of the clock (tests, backfills)")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between passes (default 5)")
    p.set_defaults(handler=_dispatch)
