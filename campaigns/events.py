"""Behaviour events as the campaign layer takes them, and the real-time names they give.

A :class:`BehaviourEvent` is one row of the ``events`` table of the data contract
(docs/CONTRACT.md), posted to ``POST /events``. Triggers read, beside the event's own
fields, real-time counters from the event store (:func:`realtime_names`), so they never wait
for a batch features build.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from campaigns.definitions import REALTIME_NAMES, WINDOWS
from campaigns.store import CampaignStore
from decisions.policy import RequestContext

FIRST_YEAR, LAST_YEAR = 1970, 2999


def _plausible(ts: datetime) -> datetime:
    """Refuse a time outside the years FIRST_YEAR..LAST_YEAR (in UTC): the windows counted
    back from an event, and its epoch seconds, must exist."""
    try:
        year = (ts.astimezone(UTC) if ts.tzinfo else ts).year
    except OverflowError:  # the offset takes it past year 1 or 9999
        year = ts.year
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"a time in the years {FIRST_YEAR} to {LAST_YEAR} is expected, "
                         f"got {ts.isoformat()}")
    return ts


# The time of something that happened (an event, a receipt): naive means UTC.
EventTime = Annotated[datetime, AfterValidator(_plausible)]

EventType = Literal["view", "favorite", "add_to_cart", "search", "follow", "login", "share",
                    "review", "purchase", "listing_started"]


class BehaviourEvent(BaseModel):
    """One behaviour event of a user (the ``events`` table of the data contract)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"examples": [
                                  {"user_id": "u000042", "type": "view",
                                   "ts": "2025-12-30T20:15:00Z", "item_id": "i981",
                                   "category": "bags", "price": 820.0}]})

    user_id: str = Field(min_length=1, max_length=200)
    type: EventType
    ts: EventTime
    item_id: str | None = Field(None, max_length=200)
    category: str | None = Field(None, max_length=100)
    price: float | None = Field(None, ge=0)
    seller_id: str | None = Field(None, max_length=200, description="the seller followed "
                                  "(follow events) or selling the item")

    def context(self, campaign: str) -> RequestContext:
        """The request context a campaign decision for this event is made in."""
        return RequestContext(channel="campaign", page=campaign, item_id=self.item_id,
                              item_price=self.price, category=self.category, hour=self.ts.hour)

    def names(self) -> dict[str, Any]:
        """The event's own names a condition may read."""
        return {"type": self.type, "item_id": self.item_id, "category": self.category,
                "price": self.price, "seller_id": self.seller_id, "hour": self.ts.hour}


def _hours_since(then: datetime | None, now: datetime) -> float | None:
    return None if then is None else (now - then).total_seconds() / 3600


def realtime_names(store: CampaignStore, event: BehaviourEvent,
                   wanted: Collection[str]) -> dict[str, Any]:
    """The real-time counters of ``event``'s user among ``wanted`` (only those are
    queried), counted from the kept events in the windows ending at the event's own time
    (so a backfill of old events counts as it happened)."""
    out: dict[str, Any] = {}
    now = event.ts if event.ts.tzinfo else event.ts.replace(tzinfo=UTC)
    for days in WINDOWS:
        since = now - timedelta(days=days)
        if f"category_views_{days}d" in wanted:
            out[f"category_views_{days}d"] = (
                store.count_events(event.user_id, "view", since, now, category=event.category)
                if event.category is not None else None)
        if f"purchases_{days}d" in wanted:
            out[f"purchases_{days}d"] = store.count_events(event.user_id, "purchase", since,
                                                           now)
    if "open_carts" in wanted:
        out["open_carts"] = store.open_carts(event.user_id)
    if "hours_since_purchase" in wanted:
        out["hours_since_purchase"] = _hours_since(
            store.last_event_ts(event.user_id, "purchase", now), now)
    if "hours_since_login" in wanted:
        out["hours_since_login"] = _hours_since(store.last_event_ts(event.user_id, "login", now),
                                                now)
    assert set(out) <= set(REALTIME_NAMES)
    return out
