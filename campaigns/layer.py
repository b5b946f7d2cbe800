"""The campaign layer: behaviour and item events, timers and schedules in; outbox rows out.

Every firing of a campaign for a user goes through :meth:`CampaignLayer.fire`, in order:

1. the trigger instance's idempotency key (campaign + user + instance) is looked up: an
   instance already in the outbox makes nothing new (the same event posted twice, two
   replicas, a re-run of a schedule slot);
2. the campaign's holdout (a stable hash of campaign and user, ``holdout_share``), users who
   opted out of personalisation (marketing that profiles them) and the campaign's cooldown
   suppress it, each with its reason;
3. the decision engine chooses the arm among the campaign's arms (the campaign is the
   decision's context): the global control group, contact limits and arm eligibility apply
   exactly as they do to ``/next_best_action``, and a firing without an arm is suppressed
   with the engine's reason;
4. the result is written to the outbox before anything is returned: a ``pending`` message,
   or a ``suppressed`` row saying why. Transactional campaigns skip 2 (not the engine).

Time is a parameter (``now``) everywhere, so tests and backfills move it forward instead of
sleeping.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from campaigns.definitions import TRANSITION_NAMES, Campaign, compile_campaigns
from campaigns.delivery import WEEK, Contact, plan_delivery
from campaigns.events import BehaviourEvent, realtime_names
from campaigns.store import CampaignStore, Item, OutboxMessage, Timer
from decisions.engine import DecisionEngine, utc
from decisions.points import DecisionPoints
from decisions.policy import NOT_A_SELLER, ContactCounts, RequestContext, UserView
from decisions.users import UserDirectory, UserState, user_state
from features.build import available_as_of, load_features
from features.segmentation import PROSPECTIVE, TIERS
from nextbest.config import Settings
from nextbest.errors import Conflict, NotFound, ValidationFailed
from nextbest.storage import location

log = logging.getLogger(__name__)
AUDIENCE_CHUNK = 20_000
# Firings of a scheduled run per write transaction of the campaign store: large enough to
# spare a commit per user, small enough not to hold other writers (the service) for long.
RUN_BATCH = 200


class EventsResult(BaseModel):
    """What posting events did: how many were new, and every campaign firing they caused."""

    accepted: int
    duplicates: int
    messages: list[OutboxMessage]
    # Events of erased users: neither kept nor acted on (nothing about them is stored again).
    erased: int = 0


class ItemResult(BaseModel):
    """What posting an item did."""

    item_id: str
    new: bool
    low_stock: bool
    messages: list[OutboxMessage]


class Receipt(BaseModel):
    """What a delivery receipt did."""

    message_id: str
    status: str
    counted: bool              # False: this status was already received for the message
    consent_withdrawn: str | None = None  # the preference an unsubscribe turned off


class RunReport(BaseModel):
    """One run of a scheduled campaign over its audience."""

    campaign: str
    slot: str
    dry_run: bool
    audience: int            # users whose condition holds
    holdout: int
    messages: int            # pending messages written
    suppressed: dict[str, int] = Field(default_factory=dict)  # reason -> firings
    already: int = 0         # firings of this slot already in the outbox
    seconds: float = 0.0


class SchedulerReport(BaseModel):
    """One pass of the scheduler at ``now``."""

    now: datetime
    timers_fired: int
    runs: list[RunReport]
    events_exported: int


# A user who starts a listing (and, for a delayed campaign, does not finish it in time) is a
# prospective seller, whatever the last features build said.
PROSPECT_EVENT = "listing_started"


def arm_counts(contacts: list[Contact], around: datetime) -> ContactCounts:
    """Messages per arm within a week of ``around``: what the arms' weekly caps count."""
    counts = Counter(c.arm for c in contacts if c.arm and abs(c.scheduled - around) < WEEK)
    return ContactCounts(per_arm_week=dict(counts))


def holdout_hash(campaign: str, user_id: str) -> float:
    """A stable number in [0, 1) for (campaign, user): the campaign's holdout is those below
    its ``holdout_share`` (independent of the global control group's hash)."""
    digest = hashlib.sha256(f"holdout|{campaign}|{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class CampaignLayer:
    """The campaigns of one process over one engine, one user directory and one store.

    The service makes one per worker; ``nextbest scheduler`` and ``nextbest campaigns run``
    make their own. Public methods are serialised by ``lock`` (the store connection is one);
    take it to use ``store`` directly.
    """

    def __init__(self, settings: Settings, engine: DecisionEngine | DecisionPoints,
                 users: UserDirectory, store: CampaignStore | None = None):
        """``engine``: the decision points' engines (one engine: only its point's campaigns
        can decide)."""
        self.settings = settings
        self.points = engine if isinstance(engine, DecisionPoints) else \
            DecisionPoints.single(engine)
        self.users = users
        self.campaigns = compile_campaigns(settings)
        self.store = store or CampaignStore(location(settings, "campaign_store"))
        self.lock = threading.RLock()
        self._last_export: datetime | None = None

    def close(self) -> None:
        self.store.close()

    def _of_kind(self, kind: str, event: str | None = None) -> list[Campaign]:
        """Enabled campaigns of ``kind`` (on ``event``), highest priority first."""
        found = [c for c in self.campaigns.values() if c.config.kind == kind
                 and (event is None or c.config.event == event)]
        return sorted(found, key=lambda c: -c.config.priority)

    def get(self, name: str) -> Campaign:
        """The enabled campaign ``name`` (NotFound listing the configured ones)."""
        config = self.settings.campaigns.campaign(name)
        if name not in self.campaigns:
            raise ValidationFailed(f"campaign {name!r} is disabled (enabled: false)",
                                   field="campaign")
        return self.campaigns[config.name]

    # -- one firing ---------------------------------------------------------------------------
    def fire(self, campaign: Campaign, state: UserState, *, key: str, trigger: str,
             context: RequestContext, now: datetime) -> OutboxMessage | None:
        """Decide and write one firing (module docstring); None when the instance is
        already in the outbox."""
        name = campaign.name
        user = state.view
        idempotency_key = f"{name}|{user.user_id}|{key}"
        if self.store.has_key(idempotency_key):
            return None
        reason = self._suppression(campaign, user, now)
        arm = decision_id = channel = None
        scheduled = now
        if reason is None:
            horizon = WEEK + timedelta(hours=campaign.config.max_delay_hours)
            contacts = self.store.contacts(user.user_id, now - horizon, now + horizon)
            channel, scheduled, reason = plan_delivery(
                self.settings, campaign.config, state.names, state.preferences, contacts, now)
        if reason is None:
            engine = self.points.get(campaign.config.decision_point)
            if engine.config.subject == "seller":
                user = self._as_seller(campaign, state)
            decision = engine.decide(user, context, now=now, campaign=name,
                                     arms=campaign.config.arms or None,
                                     counts=arm_counts(contacts, scheduled))
            decision_id = decision.event_id
            arm = decision.action
            if decision.control:
                reason = "control_group"
            elif arm is None:
                reason = f"no_eligible_arm: {decision.reason}"
        message = OutboxMessage(
            message_id=secrets.token_urlsafe(16), idempotency_key=idempotency_key,
            campaign=name, user_id=user.user_id, arm=arm, decision_id=decision_id,
            channel=None if reason else channel, created=now, scheduled=scheduled,
            status="suppressed" if reason else "pending", reason=reason, trigger=trigger,
            tier=user.tier)
        return message if self.store.add_message(message) else None

    def _as_seller(self, campaign: Campaign, state: UserState) -> UserView:
        """The user as the seller decision point sees them. A campaign on ``listing_started``
        (a listing begun and, for a delayed one, not finished in time) is itself the
        evidence that makes a user who does not consign yet a prospective seller."""
        view = self.users.seller_view(state.view.user_id, state)
        if campaign.config.event == PROSPECT_EVENT and view.tier == NOT_A_SELLER:
            view = view.model_copy(update={"tier": PROSPECTIVE, "segment": PROSPECTIVE})
        return view

    def _suppression(self, campaign: Campaign, user: UserView, now: datetime) -> str | None:
        """Why the campaign does not reach ``user`` now, before any decision (or None)."""
        config = campaign.config
        if config.transactional:
            return None
        if holdout_hash(config.name, user.user_id) < config.holdout_share:
            return "holdout"
        if not user.personalization:
            return "opted_out"
        if config.cooldown_hours > 0:
            last = self.store.last_message(user.user_id, config.name)
            if last is not None and now - last < timedelta(hours=config.cooldown_hours):
                return "cooldown"
        return None

    # -- behaviour events -------------------------------------------------------------------
    def on_events(self, events: list[BehaviourEvent], *,
                  now: datetime | None = None) -> EventsResult:
        """Keep each new event and run the triggers it fires (duplicates do nothing).
        Events of erased users are dropped unread: nothing about them is kept, logged or
        sent (one read of the erasure list per batch)."""
        ts = utc(now)
        messages: list[OutboxMessage] = []
        accepted = 0
        erased = self.users.store.erased_among(
            [e.user_id for e in events] + [e.seller_id for e in events if e.seller_id])
        kept = [e if e.seller_id not in erased else e.model_copy(update={"seller_id": None})
                for e in events if e.user_id not in erased]
        with self.lock:
            for event in kept:
                fired = self._on_event(event, ts)
                if fired is not None:
                    accepted += 1
                    messages += fired
        return EventsResult(accepted=accepted, duplicates=len(kept) - accepted,
                            messages=messages, erased=len(events) - len(kept))

    def _on_event(self, event: BehaviourEvent, now: datetime) -> list[OutboxMessage] | None:
        seq = self.store.add_event(event.user_id, event.type, utc(event.ts),
                                   item_id=event.item_id, category=event.category,
                                   price=event.price, seller_id=event.seller_id, now=now)
        if seq is None:
            return None
        if event.type == "purchase":
            self._attribute(event, seq, now)
            if event.seller_id:
                self._attribute(event, seq, now, seller=True)
        cancelling = [c.name for c in self._of_kind("delayed")
                      if c.config.cancel_event == event.type]
        self.store.cancel_timers(event.user_id, cancelling, event.item_id)
        triggered = self._of_kind("trigger", event.type)
        delayed = self._of_kind("delayed", event.type)
        if not triggered and not delayed:
            return []
        state = self.users.lookup(event.user_id)
        names = state.names | event.names()
        wanted = {n for c in (*triggered, *delayed) if c.condition for n in c.condition.names}
        names |= realtime_names(self.store, event, wanted)
        fired = []
        for campaign in triggered:
            if campaign.holds(names):
                message = self.fire(campaign, state, key=f"event:{seq}", trigger=f"event:{seq}",
                                    context=event.context(campaign.name), now=now)
                fired += [message] if message else []
        for campaign in delayed:
            if campaign.holds(names):
                assert campaign.config.delay_hours is not None
                self.store.add_timer(Timer(
                    instance_key=f"{campaign.name}|{event.user_id}|{event.item_id or ''}|{seq}",
                    campaign=campaign.name, user_id=event.user_id, item_id=event.item_id,
                    due=utc(event.ts) + timedelta(hours=campaign.config.delay_hours),
                    event_seq=seq, context=event.model_dump(mode="json")))
        return fired

    def _attribute(self, purchase: BehaviourEvent, seq: int, now: datetime, *,
                   seller: bool = False) -> None:
        """A purchase converts the user's latest delivered message of a buyer campaign whose
        attribution window it falls in, and (``seller``) the seller's latest delivered
        message of a seller campaign (the sale is what a seller offer is for): the
        conversion becomes the reward of the message's decision, so campaign bandits learn
        without ``/feedback``. Once per message."""
        bought = utc(purchase.ts)
        user_id = purchase.seller_id if seller else purchase.user_id
        assert user_id is not None
        for message, delivered in self.store.delivered_to(user_id, bought):
            campaign = self.settings.campaigns.campaign(message.campaign)
            if bought - delivered > timedelta(hours=campaign.attribution_hours):
                continue
            subject = self.settings.decision_points[campaign.decision_point].subject
            if (subject == "seller") != seller:
                continue
            revenue = float(purchase.price or 0.0)
            reward = 0.0
            if message.decision_id is not None:
                try:
                    result = self.points.feedback(message.decision_id, True, revenue, now=now)
                    reward = float(result.reward or 0.0)
                except Conflict as exc:  # the platform already reported another outcome
                    log.warning("conversion of %s not learned: %s", message.message_id,
                                exc.message)
            self.store.add_conversion(message.message_id, user_id, seq, bought, revenue,
                                      reward)
            return

    def on_receipt(self, message_id: str, status: str, ts: datetime, *,
                   now: datetime | None = None) -> Receipt:
        """Record a delivery receipt of a sent message (each status once); ``unsubscribed``
        withdraws the user's consent to that channel."""
        received = utc(now)
        with self.lock:
            message = self.store.get_message(message_id)
            if message is None:
                raise NotFound(f"no message {message_id!r} in the outbox", field="message_id")
            if message.status != "sent":
                raise Conflict(f"message {message_id} is {message.status}, not sent: a "
                               "receipt can only follow a sent message", field="message_id")
            new = self.store.add_receipt(message_id, status, utc(ts), received)
        consent_withdrawn = None
        if new and status == "unsubscribed" and message.channel is not None:
            flag = self.settings.channels[message.channel].consent
            if flag is not None:
                store = self.users.store
                store.set_preferences(message.user_id, store.get_preferences(
                    message.user_id).model_copy(update={flag: False, "updated_ts": None}))
                consent_withdrawn = flag
        return Receipt(message_id=message_id, status=status, counted=new,
                       consent_withdrawn=consent_withdrawn)

    # -- items ----------------------------------------------------------------------------------
    def on_item(self, item: Item, *, now: datetime | None = None) -> ItemResult:
        """Upsert a listing: a new one reaches its seller's followers, stock falling to the
        threshold reaches its recent viewers (once per user and item)."""
        ts = utc(now)
        threshold = self.settings.campaigns.low_stock_threshold
        with self.lock:
            before = self.store.put_item(item, now=ts)
            new = before is None
            was_low = before is not None and before.stock is not None and \
                before.stock <= threshold
            low = item.stock is not None and item.stock <= threshold and not was_low
            messages: list[OutboxMessage] = []
            if new:
                # A listing finished: the seller's timers waiting for one stop.
                finished = [c.name for c in self._of_kind("delayed")
                            if c.config.cancel_event == "new_listing"]
                self.store.cancel_timers(item.seller_id, finished, None)
                audience = self.store.followers(item.seller_id)
                messages += self._item_firings("new_listing", item, audience, ts)
            if low:
                since = ts - timedelta(days=self.settings.campaigns.lookback_days)
                audience = self.store.viewers(item.item_id, since)
                messages += self._item_firings("low_stock", item, audience, ts)
        return ItemResult(item_id=item.item_id, new=new, low_stock=low, messages=messages)

    def _item_firings(self, event: str, item: Item, audience: list[str],
                      now: datetime) -> list[OutboxMessage]:
        fired: list[OutboxMessage] = []
        campaigns = self._of_kind("trigger", event)
        if not campaigns:
            return fired
        item_names = {"item_id": item.item_id, "category": item.category, "price": item.price,
                      "seller_id": item.seller_id, "stock": item.stock}
        context = RequestContext(channel="campaign", page=event, item_id=item.item_id,
                                 item_price=item.price, category=item.category, hour=now.hour)
        for user_id in audience:
            if user_id == item.seller_id:
                continue
            state = self.users.lookup(user_id)
            names = state.names | item_names
            for campaign in campaigns:
                if campaign.holds(names):
                    message = self.fire(campaign, state, key=f"item:{item.item_id}",
                                        trigger=f"{event}:{item.item_id}",
                                        context=context.model_copy(update={"page": campaign.name}),
                                        now=now)
                    fired += [message] if message else []
        return fired

    # -- timers ---------------------------------------------------------------------------------
    def fire_due_timers(self, now: datetime | None = None) -> list[OutboxMessage]:
        """Fire every delayed trigger instance due at ``now`` that was not cancelled."""
        ts = utc(now)
        fired: list[OutboxMessage] = []
        with self.lock:
            for timer in self.store.due_timers(ts):
                if not self.store.finish_timer(timer.instance_key):
                    continue  # another scheduler fired it
                campaign = self.campaigns.get(timer.campaign)
                if campaign is None:
                    continue  # disabled since the timer started
                event = BehaviourEvent.model_validate(timer.context)
                state = self.users.lookup(timer.user_id)
                message = self.fire(campaign, state, key=timer.instance_key.split("|", 2)[2],
                                    trigger=f"timer:{timer.event_seq}",
                                    context=event.context(campaign.name), now=ts)
                fired += [message] if message else []
        return fired

    # -- scheduled campaigns ---------------------------------------------------------------------
    def run(self, name: str, *, now: datetime | None = None, dry_run: bool = False,
            slot: str | None = None) -> RunReport:
        """Run the scheduled campaign ``name`` over its audience in the online store.

        ``slot`` names the run (default: ``now`` to the minute) and is part of every firing's
        idempotency key, so running a slot again adds nothing. ``dry_run`` counts the
        audience and the holdout without deciding or writing.
        """
        ts = utc(now)
        campaign = self.get(name)
        if campaign.config.kind != "scheduled":
            raise ValidationFailed(f"campaign {name!r} is a {campaign.config.kind} campaign; "
                                   "only scheduled campaigns run over an audience",
                                   field="campaign")
        slot = slot or ts.strftime("%Y-%m-%dT%H:%M")
        started = datetime.now(UTC)
        report = RunReport(campaign=name, slot=slot, dry_run=dry_run, audience=0, holdout=0,
                           messages=0)
        reasons: Counter[str] = Counter()
        context = RequestContext(channel="campaign", page=name)
        with self.lock:
            for states in self._audience(campaign):
                report.audience += len(states)
                for state in states:
                    held = holdout_hash(name, state.view.user_id) < \
                        campaign.config.holdout_share
                    report.holdout += int(held and not campaign.config.transactional)
                if dry_run:
                    continue
                # RUN_BATCH firings per commit of the campaign store (not one each): each
                # batch is one write transaction, so its checks and rows are atomic.
                for start in range(0, len(states), RUN_BATCH):
                    with self.store.transaction():
                        for state in states[start:start + RUN_BATCH]:
                            message = self.fire(campaign, state, key=f"schedule:{slot}",
                                                trigger=f"schedule:{slot}", context=context,
                                                now=ts)
                            if message is None:
                                report.already += 1
                            elif message.status == "pending":
                                report.messages += 1
                            else:
                                reasons[str(message.reason).split(":")[0]] += 1
        report.suppressed = dict(reasons)
        report.seconds = (datetime.now(UTC) - started).total_seconds()
        return report

    def _audience(self, campaign: Campaign) -> Iterator[list[UserState]]:
        """The users whose condition holds, a chunk of the store at a time.

        Each chunk's records are parsed together (:meth:`OnlineStore.iter_frames`, as
        ``score --all`` reads them), scored and masked as one frame; only the users in the
        audience have their preferences read (one read per chunk) and a state built."""
        assert campaign.condition is not None
        previous = self._previous_build(campaign)
        store = self.users.store
        for records in store.iter_frames(AUDIENCE_CHUNK):
            frame = self._with_scores(records.assign(known=True))
            if previous is not None:
                frame = frame.merge(previous, on="user_id", how="left")
                frame["tier_drop"] = _tier_rank(frame["tier"]) - _tier_rank(frame["previous_tier"])
            chosen = frame[campaign.condition.mask(frame)]
            if chosen.empty:
                continue
            preferences = store.get_preferences_many(chosen["user_id"].tolist())
            yield [user_state(row["user_id"], row, preferences[row["user_id"]],
                              row["churn_probability"], row["purchase_propensity"])
                   for row in map(_plain, chosen.to_dict("records"))]

    def _with_scores(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the champions' churn and propensity (NaN without models)."""
        champions = self.users.champions
        if champions is None:
            return frame.assign(churn_probability=np.nan, purchase_propensity=np.nan)
        return champions.score_frame(frame)

    def _previous_build(self, campaign: Campaign) -> pd.DataFrame | None:
        """The previous features build's tier, churn probability and lifecycle stage per user,
        when the condition reads them (``previous_*``, ``tier_drop``) and there are two
        builds."""
        assert campaign.condition is not None
        if not campaign.condition.names & set(TRANSITION_NAMES):
            return None
        dates = available_as_of(self.settings)
        if len(dates) < 2:
            return pd.DataFrame({"user_id": pd.Series(dtype=str),
                                 "previous_tier": pd.Series(dtype=str),
                                 "previous_churn_probability": pd.Series(dtype=float),
                                 "previous_lifecycle_stage": pd.Series(dtype=str)})
        earlier = self._with_scores(load_features(self.settings, dates[-2]))
        stages = earlier["lifecycle_stage"] if "lifecycle_stage" in earlier.columns else None
        return pd.DataFrame({"user_id": earlier["user_id"].astype(str),
                             "previous_tier": earlier["tier"],
                             "previous_churn_probability": earlier["churn_probability"],
                             "previous_lifecycle_stage": stages})

    def run_due(self, now: datetime | None = None, *, export: bool = True) -> SchedulerReport:
        """Everything due at ``now``: delayed timers, scheduled campaigns whose latest cron
        slot has not run yet, and (every ``export_minutes``) the export of kept events."""
        ts = utc(now)
        fired = self.fire_due_timers(ts)
        runs = []
        for campaign in self._of_kind("scheduled"):
            slot = campaign.slot_at(ts).strftime("%Y-%m-%dT%H:%M")
            with self.lock:
                claimed = self.store.start_run(campaign.name, slot, ts)
            if not claimed:
                continue
            report = self.run(campaign.name, now=ts, slot=slot)
            with self.lock:
                self.store.finish_run(campaign.name, slot, {
                    "audience": report.audience, "messages": report.messages}, ts)
            runs.append(report)
        exported = 0
        due_export = self._last_export is None or ts - self._last_export >= timedelta(
            minutes=self.settings.campaigns.export_minutes)
        if export and due_export:
            exported = self.export_events()
            self._last_export = ts
        return SchedulerReport(now=ts, timers_fired=len(fired), runs=runs,
                               events_exported=exported)

    # -- events into the raw data ---------------------------------------------------------------
    def export_events(self, batch: int = 100_000) -> int:
        """Write kept events not exported yet into ``raw_dir/events/`` partitions (the data
        contract's columns), for the next features build; how many were written."""
        out_dir = Path(self.settings.paths.raw_dir) / "events"
        written = 0
        with self.lock:
            while True:
                events = self.store.unexported_events(batch)
                if not events:
                    return written
                table = pa.table({
                    "user_id": [e.user_id for e in events],
                    "ts": pa.array([e.ts.replace(tzinfo=None) for e in events],
                                   type=pa.timestamp("us")),
                    "type": [e.type for e in events],
                    "item_id": [e.item_id for e in events],
                    "category": [e.category for e in events],
                    "price": pa.array([e.price for e in events], type=pa.float64()),
                    "seller_id": [e.seller_id for e in events]})
                out_dir.mkdir(parents=True, exist_ok=True)
                name = f"part-{events[0].seq:012d}-{events[-1].seq:012d}.parquet"
                tmp = out_dir / f".{name}.tmp"
                pq.write_table(table, tmp)
                tmp.replace(out_dir / name)
                self.store.mark_exported(events[-1].seq)
                written += len(events)

    # -- reading ----------------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """Every configured campaign with its outbox counts by status."""
        counts = self.store.counts()
        return [{"name": c.name, "kind": c.kind, "event": c.event, "schedule": c.schedule,
                 "condition": c.condition, "arms": c.arms, "holdout_share": c.holdout_share,
                 "cooldown_hours": c.cooldown_hours, "transactional": c.transactional,
                 "enabled": c.enabled, "description": c.description,
                 "counts": counts.get(c.name, {})} for c in self.settings.campaigns.campaigns]


def _tier_rank(tiers: pd.Series) -> pd.Series:
    """Platinum 0 to churned 4; ``new`` and unknown tiers are missing."""
    ranks = {tier: i for i, tier in enumerate(TIERS) if tier != "new"}
    return tiers.map(ranks).astype(float)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row of a records frame with the values a record read one at a time has: arrays
    (tags, review reasons) as lists, missing text as None."""
    return {k: (list(v) if isinstance(v, np.ndarray) else None if v is pd.NA else v)
            for k, v in row.items()}
