"""Campaigns as the layer runs them: the configured campaigns, checked and compiled once.

:func:`compile_campaigns` turns ``settings.campaigns`` into :class:`Campaign` objects and
refuses, naming the campaign, anything that would make a rule silently never fire: an
unknown event type, a condition that reads an unknown name or tests an unknown tag, an arm
the bandit does not have, a cron schedule that does not parse.

Names a condition may read (``nextbest campaigns list`` prints them):

- every campaign: the user's store record (tier, segment, tags, feature columns of
  docs/CONTRACT.md, the seller columns: ``seller_tier``, ``seller_tags``, seller R/F/M,
  ``stale_listings``, ...), ``known``, ``churn_probability`` and ``purchase_propensity``;
- behaviour triggers (``trigger`` and ``delayed`` on an event): the event (``type``,
  ``item_id``, ``category``, ``price``, ``seller_id``, ``hour``) and the real-time counters
  from the event store (``category_views_1d|7d|30d``: views of the event's category,
  ``purchases_1d|7d|30d``, ``open_carts``, ``hours_since_purchase``, ``hours_since_login``);
- item triggers (``new_listing``, ``low_stock``): the item (``item_id``, ``category``,
  ``price``, ``seller_id``, ``stock``);
- scheduled campaigns: ``previous_tier``, ``tier_drop`` (how many steps the tier fell
  since the previous features build; negative when it rose), ``previous_churn_probability``
  and ``previous_lifecycle_stage`` (so a stage transition, e.g. mature to decline, can fire).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from features.build import (
    feature_columns,
    group_feature_columns,
    segmentation_columns,
    seller_feature_columns,
)
from features.contract import EVENT_TYPES
from features.expressions import Expression, compile_expression
from nextbest.config import CampaignConfig, Settings
from nextbest.errors import ConfigError

ITEM_EVENTS = ("new_listing", "low_stock")
WINDOWS = (1, 7, 30)
USER_NAMES = ("known", "churn_probability", "purchase_propensity")
EVENT_NAMES = ("type", "item_id", "category", "price", "seller_id", "hour")
REALTIME_NAMES = (*(f"category_views_{w}d" for w in WINDOWS),
                  *(f"purchases_{w}d" for w in WINDOWS), "open_carts", "hours_since_purchase",
                  "hours_since_login")
ITEM_NAMES = ("item_id", "category", "price", "seller_id", "stock")
TRANSITION_NAMES = ("previous_tier", "tier_drop", "previous_churn_probability",
                    "previous_lifecycle_stage")


@dataclass(frozen=True)
class Campaign:
    """A configured campaign with its compiled condition."""

    config: CampaignConfig
    condition: Expression | None

    @property
    def name(self) -> str:
        return self.config.name

    def holds(self, names: dict) -> bool:
        """Whether the condition holds on ``names`` (no condition: always)."""
        return self.condition is None or self.condition.holds(names)

    def next_slot(self, after: datetime) -> datetime:
        """The first schedule slot strictly after ``after`` (scheduled campaigns)."""
        assert self.config.schedule is not None
        return croniter(self.config.schedule, after).get_next(datetime).astimezone(UTC)

    def slot_at(self, now: datetime) -> datetime:
        """The latest schedule slot at or before ``now``."""
        assert self.config.schedule is not None
        later = now + timedelta(seconds=1)
        return croniter(self.config.schedule, later).get_prev(datetime).astimezone(UTC)


def user_names(settings: Settings) -> set[str]:
    """The names of a user that every condition may read."""
    windows = settings.features.windows_days
    return {*feature_columns(windows), *seller_feature_columns(windows), *segmentation_columns(),
            *group_feature_columns(), *USER_NAMES}


def names_for(config: CampaignConfig, settings: Settings) -> set[str]:
    """Every name the condition of ``config`` may read."""
    names = user_names(settings)
    if config.kind == "scheduled":
        return names | set(TRANSITION_NAMES)
    if config.event in ITEM_EVENTS:
        return names | set(ITEM_NAMES)
    return names | set(EVENT_NAMES) | set(REALTIME_NAMES)


def compile_campaign(config: CampaignConfig, settings: Settings) -> Campaign:
    """Check and compile one campaign; ConfigError naming it and what is wrong."""
    where = f"campaign {config.name!r}"
    events = (*EVENT_TYPES, *ITEM_EVENTS)
    if config.event is not None and config.event not in events:
        raise ConfigError(f"{where}: unknown event {config.event!r}; events are "
                          f"{', '.join(events)}", field=f"campaigns.{config.name}.event")
    cancels = (*EVENT_TYPES, "new_listing")
    if config.cancel_event is not None and config.cancel_event not in cancels:
        raise ConfigError(f"{where}: unknown cancel_event {config.cancel_event!r}; events are "
                          f"{', '.join(cancels)}", field=f"campaigns.{config.name}")
    point = settings.decision_points.get(config.decision_point)
    if point is None or not point.enabled:
        raise ConfigError(f"{where}: decision point {config.decision_point!r} is not an "
                          f"enabled decision point ({', '.join(settings.point_names)})",
                          field=f"campaigns.{config.name}.decision_point")
    arms = [arm.name for arm in point.arms]
    unknown = [arm for arm in config.arms if arm not in arms]
    if unknown:
        raise ConfigError(f"{where}: unknown arm(s) {', '.join(unknown)}; the arms of "
                          f"{config.decision_point} are {', '.join(arms)}",
                          field=f"campaigns.{config.name}.arms")
    if config.kind == "scheduled" and not (config.schedule and
                                           croniter.is_valid(config.schedule)):
        raise ConfigError(f"{where}: schedule {config.schedule!r} is not a cron expression "
                          "(e.g. '0 10 * * 1': Mondays at 10:00 UTC)",
                          field=f"campaigns.{config.name}.schedule")
    condition = None
    if config.condition.strip():
        tags = {rule.name for rule in [*settings.features.tags, *settings.features.seller_tags]}
        condition = compile_expression(config.condition, rule=where,
                                       known=names_for(config, settings),
                                       values={"tags": tags, "seller_tags": tags},
                                       forbidden=settings.policy)
    return Campaign(config=config, condition=condition)


def compile_campaigns(settings: Settings) -> dict[str, Campaign]:
    """Every enabled campaign, compiled, by name (in config order)."""
    return {c.name: compile_campaign(c, settings) for c in settings.campaigns.campaigns
            if c.enabled}
