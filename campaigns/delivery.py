"""Where and when a campaign message goes: channel by consent, send time, quiet hours, caps.

- **Channel**: the first channel of the campaign's order the user consented to (the
  channel's ``consent`` preference flag; a user who never stated preferences has the
  ``privacy.default_consent``: ``opt_in`` = no consent until given) and that is under its
  own daily and weekly caps. None consented: ``no_consent``; all capped: ``channel_cap``.
- **Send time**: the next occurrence of the user's best local hour (``best_hour`` in their
  ``timezone``, from the features build) if it comes within the campaign's
  ``max_delay_hours``, else now; then, if that falls inside the quiet hours of the user's
  time zone (default 21:00-09:00), the end of the quiet hours.
- **Contact policy**: messages scheduled or sent to the user (any campaign, any channel) in
  the day and the week around the send time stay under ``campaigns.contact.max_per_day`` and
  ``max_per_week``, and none is closer than ``min_gap_hours`` (``contact_cap``,
  ``min_gap``).

Transactional campaigns skip consent, caps and quiet hours (not the policy layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from features.store import Preferences
from nextbest.config import CampaignConfig, ChannelConfig, QuietHoursConfig, Settings

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


class Contact(NamedTuple):
    """A message already scheduled or sent to the user."""

    channel: str | None
    arm: str | None
    scheduled: datetime


class Delivery(NamedTuple):
    """The verdict for one message: its channel and send time, or why it is not sent."""

    channel: str | None
    scheduled: datetime
    reason: str | None


def zone_of(name: Any) -> ZoneInfo:
    """The user's time zone (UTC when unknown or not a zone name)."""
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def consents(channel: ChannelConfig, preferences: Preferences, default_consent: str) -> bool:
    """Whether the user allows marketing on ``channel``."""
    if channel.consent is None:
        return True
    if preferences.updated_ts is None:  # never stated a preference
        return default_consent == "opt_out"
    return bool(getattr(preferences, channel.consent))


def in_quiet_hours(local: datetime, quiet: QuietHoursConfig) -> bool:
    """Whether a local time falls inside the quiet hours (start inclusive, end exclusive)."""
    if quiet.start == quiet.end:
        return False
    hour = local.hour
    if quiet.start < quiet.end:
        return quiet.start <= hour < quiet.end
    return hour >= quiet.start or hour < quiet.end


def next_hour(local: datetime, hour: int) -> datetime:
    """The first moment at ``hour``:00 at or after ``local`` (same zone)."""
    candidate = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    return candidate if candidate >= local else candidate + DAY


def send_time(now: datetime, names: Mapping[str, Any], campaign: CampaignConfig,
              quiet: QuietHoursConfig) -> datetime:
    """When the message goes out (UTC): the user's best hour within the campaign's max
    delay, else now; held to the end of the quiet hours (module docstring)."""
    zone = zone_of(names.get("timezone"))
    local = now.astimezone(zone)
    best = names.get("best_hour")
    chosen = local
    if isinstance(best, int | float) and best == best:  # not NaN
        candidate = next_hour(local, int(best))
        if candidate - local <= timedelta(hours=campaign.max_delay_hours):
            chosen = candidate
    if not campaign.transactional and in_quiet_hours(chosen, quiet):
        chosen = next_hour(chosen, quiet.end)
    return chosen.astimezone(UTC)


def _count(contacts: Sequence[Contact], around: datetime, span: timedelta,
           channel: str | None = None) -> int:
    """Contacts within ``span`` before ``around`` (or after it: both directions count)."""
    return sum(abs(c.scheduled - around) < span and (channel is None or c.channel == channel)
               for c in contacts)


def plan_delivery(settings: Settings, campaign: CampaignConfig, names: Mapping[str, Any],
                  preferences: Preferences, contacts: Sequence[Contact],
                  now: datetime) -> Delivery:
    """The channel and send time of one message for one user, or why it is not sent."""
    policy = settings.campaigns.contact
    scheduled = send_time(now, names, campaign, policy.quiet_hours)
    if campaign.transactional:
        return Delivery(campaign.channels[0], scheduled, None)
    channels = settings.channels
    consented = [name for name in campaign.channels
                 if channels[name].enabled and consents(
                     channels[name], preferences, settings.privacy.default_consent)]
    if not consented:
        return Delivery(None, scheduled, "no_consent")
    if policy.max_per_day is not None and _count(contacts, scheduled, DAY) >= policy.max_per_day:
        return Delivery(None, scheduled, "contact_cap: daily")
    if policy.max_per_week is not None and \
            _count(contacts, scheduled, WEEK) >= policy.max_per_week:
        return Delivery(None, scheduled, "contact_cap: weekly")
    if policy.min_gap_hours > 0 and \
            _count(contacts, scheduled, timedelta(hours=policy.min_gap_hours)):
        return Delivery(None, scheduled, "min_gap")
    for name in consented:
        config = channels[name]
        if config.max_per_day is not None and \
                _count(contacts, scheduled, DAY, name) >= config.max_per_day:
            continue
        if config.max_per_week is not None and \
                _count(contacts, scheduled, WEEK, name) >= config.max_per_week:
            continue
        return Delivery(name, scheduled, None)
    return Delivery(None, scheduled, "channel_cap")
