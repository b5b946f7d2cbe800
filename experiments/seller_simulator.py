"""The seller side of the simulator: consignors with latent traits and how they respond.

The environment of a seller decision point (``seller_offer``): a population of sellers
and prospective sellers, a stream of seller requests (a seller opens their own page,
``page: account``, looking at one of their listings) and every seller's true response to
every seller arm. The policies and the runner are the buyer side's
(``experiments/policies.py``, ``experiments/runner.py``): every policy is the service's
decision engine on ``settings.for_point("seller_offer")``, whose policy layer applies the
arms' ``eligible_when``; only the world differs (:data:`SELLERS`).

Latent traits (never shown to a policy but the oracle), as the synthetic marketplace draws
them (``features/synth.py``, ``seller_traits.parquet``): commission sensitivity ``cs``
(Beta(2, 3)), response to guidance ``g`` (Beta(2, 2)), a yearly seller churn hazard ``h``
(higher for commission-sensitive, slow, small sellers) and a volume ``v`` (Pareto: a few
sellers bring most sales). What a store would record about them are noisy reflections:
commission-sensitive sellers list only what they expect to sell (higher sell-through,
fewer stale listings), guided sellers price right and sell faster (fewer days to sell),
volume shows in sales and sold value, a high hazard in a long idle time (sleeping).
Prospects (who never consigned) show only an unfinished listing (more likely the more
commission-sensitive: the fee stopped them) and resellable items they hold (more, the more
they respond to guidance).

Response model, per request of seller ``i`` and arm ``a``: ``w`` is the seller's expected
sales in a reward window without action (``weekly_sales``: from volume when active, near
zero when sleeping, small for a seller without a sale or a prospect)::

    logit p(a)   = -0.5 + 0.9 log w + lift_a
    first_order_free_commission  lift = 3.0 cs - 0.9
    commission_tier_upgrade      lift = 2.4 cs - 0.8 + 0.25 log v
    price_suggestion             lift = 2.4 g - 1.2 + 0.2 min(stale_listings, 5)
    consignment_guide            lift = 2.4 g - 1.1 (+ 0.4 for a prospect holding 3+
                                                      resellable items)
    recall_message               lift = 3.0 exp(-h) - 1.0
    vip_support                  lift = 1.6 (1 - cs) - 0.4

So the documents' rules are right on average in their tier (the guide for guided sellers,
recall for sleeping ones who only paused, support for the VIP who values service over a
rate) and wrong for the sellers of the tier whose traits say otherwise: the reason a
learner can beat them is the heterogeneity within tiers, seen through the seller columns.

Sold value of a sale within the window (the revenue the feedback reports)::

    sold(a) = listing price x (1 + w) x f_a
    f = 0.85 price_suggestion (the item sells at the suggested, lower price),
        1 + cs first_order_free_commission (a commission-sensitive newcomer consigns a
        batch once the first sale is free), 1 + 0.5 cs commission_tier_upgrade (more
        listings at the lower rate), 1 otherwise

The reward is the service's (:func:`decisions.reward.reward_of`, ``reward.kind:
commission``): ``commission_rate x sold - arm cost``, the cost being ``cost + cost_rate x
listing price`` (the waived or reduced commission on the listing at hand, or the cost of
the service), paid on a sale only. The true expected reward is ``p(a) x (commission_rate x
sold(a) - cost(a))``. Time is compressed as on the buyer side (``SimulationConfig``): a
sale is reported ``mean_delay_minutes`` after the decision on average. Drift: a competitor
cuts its commission, so commission offers pull harder and guidance less.

Shapes: ``n`` requests, ``k`` arms in ``settings.bandit.arms`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from decisions.policy import UserView, seller_view
from decisions.reward import earned
from experiments.runner import Side
from experiments.simulator import (
    CATEGORIES,
    NO_ACTION,
    SimulationConfig,
    Stream,
    arm_costs,
)
from features.segmentation import SELLER_TIERS, assign_seller_tiers, assign_tags
from nextbest.config import Settings

SELLER_TRAIT_COLUMNS = ("commission_sensitivity", "guidance_response", "churn_hazard",
                        "volume", "weekly_sales", "prospect")
SELLER_PAGE = "account"  # where a seller decision is made: the seller's own page
PROSPECT_SHARE = 0.2  # of the population: users who never consigned but might
NEW_SELLER_SHARE = 0.08  # of the sellers: listed, no sale yet
MEDIAN_LISTING_PRICE = 160.0
# The largest volume drawn: a top seller sells about 7 items a week, so a week's sold
# value stays well within seller_offer's reward.max_revenue_multiple (50) x the listing
# price (seeds 1-20 of 50,000 decisions: at most 25x, with the listing's price noise).
MAX_VOLUME = 60.0


@dataclass(frozen=True)
class SellerResponseModel:
    """Coefficients of the sellers' true response (see the module docstring)."""

    base: float = -0.5
    base_sales: float = 0.9
    free_cs: float = 3.5
    free_offset: float = -0.5
    upgrade_cs: float = 4.0
    upgrade_offset: float = -1.6
    upgrade_volume: float = 0.15
    suggestion_g: float = 2.4
    suggestion_offset: float = -1.2
    suggestion_stale: float = 0.2
    guide_g: float = 2.4
    guide_offset: float = -1.1
    guide_resellable: float = 0.4
    recall_h: float = 3.0
    recall_offset: float = -1.0
    support_cs: float = 3.0
    support_offset: float = -1.2

    def drifted(self) -> SellerResponseModel:
        """After a competitor cuts its commission: commission offers pull harder, the
        guide and the price suggestion less."""
        return replace(self, free_cs=3.6, upgrade_cs=3.2, upgrade_offset=-0.6,
                       guide_g=1.6, suggestion_g=1.6)

    def logits(self, sellers: dict[str, np.ndarray], arms: list[str]) -> np.ndarray:
        """Sale logits, shape ``(n, k)``; unknown arm names get no lift. ``sellers`` holds
        :data:`SELLER_TRAIT_COLUMNS` and ``stale_listings``, ``resellable_items``."""
        cs, g = sellers["commission_sensitivity"], sellers["guidance_response"]
        base = self.base + self.base_sales * np.log(sellers["weekly_sales"])
        prospect = sellers["prospect"].astype(float)
        stale = np.minimum(np.nan_to_num(sellers["stale_listings"]), 5)
        resellable = (np.nan_to_num(sellers["resellable_items"]) >= 3).astype(float)
        lifts = {
            "first_order_free_commission": self.free_cs * cs + self.free_offset,
            "commission_tier_upgrade": (self.upgrade_cs * cs + self.upgrade_offset
                                        + self.upgrade_volume * np.log(sellers["volume"])),
            "price_suggestion": (self.suggestion_g * g + self.suggestion_offset
                                 + self.suggestion_stale * stale),
            "consignment_guide": (self.guide_g * g + self.guide_offset
                                  + self.guide_resellable * prospect * resellable),
            "recall_message": (self.recall_h * np.exp(-sellers["churn_hazard"])
                               + self.recall_offset),
            "vip_support": self.support_cs * (1 - cs) + self.support_offset,
        }
        zero = np.zeros_like(base)
        return np.column_stack([base + lifts.get(arm, zero) for arm in arms])

    @staticmethod
    def sold_factor(sellers: dict[str, np.ndarray], arms: list[str]) -> np.ndarray:
        """Sold value of a sale under each arm as a multiple of the listing price, ``(n, k)``."""
        cs = sellers["commission_sensitivity"]
        items = 1.0 + sellers["weekly_sales"]
        factor = {"price_suggestion": np.full_like(cs, 0.85),
                  "first_order_free_commission": 1.0 + cs,
                  "commission_tier_upgrade": 1.0 + 0.3 * cs}
        one = np.ones_like(cs)
        return np.column_stack([items * factor.get(arm, one) for arm in arms])


def make_seller_stream(settings: Settings, population: pd.DataFrame, config: SimulationConfig,
                       model: SellerResponseModel | None = None) -> Stream:
    """Draw ``config.decisions`` seller requests and their true responses (seeded by
    ``config.seed``): who comes (more active sellers more often), the listing at hand (its
    price around the seller's listing price, their category) and every arm's sale
    probability, sold value, cost and expected reward."""
    rng = np.random.default_rng([config.seed, 11])
    n = config.decisions
    model = model or SellerResponseModel()
    activity = np.sqrt(population["weekly_sales"].to_numpy() + 0.1)
    user_index = rng.choice(len(population), size=n, p=activity / activity.sum())
    listing = population["listing_price"].to_numpy()[user_index]
    price = np.clip(np.round(listing * np.exp(rng.normal(0.0, 0.3, size=n)), 2), 5.0, 20_000.0)
    category = population["listing_category"].to_numpy()[user_index]
    minute = np.arange(n) / config.decisions_per_minute
    hour = ((minute // 60) % 24).astype(int)
    uniform = rng.random(n)
    delay = rng.exponential(config.mean_delay_minutes, size=n)
    arms = [arm.name for arm in settings.bandit.arms] + [NO_ACTION]
    columns = (*SELLER_TRAIT_COLUMNS, "stale_listings", "resellable_items")
    sellers = {col: population[col].to_numpy()[user_index] for col in columns}
    logits = model.logits(sellers, arms)
    drift_index = None
    if config.drift:
        drift_index = int(n * config.drift_at)
        logits[drift_index:] = model.drifted().logits(sellers, arms)[drift_index:]
    probability = 1.0 / (1.0 + np.exp(-logits))
    sold = price[:, None] * model.sold_factor(sellers, arms)
    cost = np.column_stack([arm_costs(settings, price), np.zeros(n)])
    expected = probability * (earned(settings.bandit.reward, sold) - cost)
    return Stream(user_index=user_index, page=np.full(n, SELLER_PAGE), category=category,
                  item_price=price, hour=hour, minute=minute, uniform=uniform, delay=delay,
                  probability=probability[:, :-1], cost=cost[:, :-1],
                  expected_reward=expected[:, :-1], base_probability=probability[:, -1],
                  base_expected_reward=expected[:, -1], drift_index=drift_index,
                  sold_value=sold[:, :-1], base_sold_value=sold[:, -1])


# ----------------------------------------------------------------------------- population

def synthetic_seller_population(settings: Settings, users: int, seed: int) -> pd.DataFrame:
    """A seeded population of sellers and prospective sellers: latent traits plus the
    seller columns of a store record (CONTRACT.md), seller tier and seller tags.

    Traits are drawn as the synthetic marketplace draws them; observable columns are noisy
    reflections of them (module docstring). Seller tiers and tags are assigned exactly as a
    features build assigns them (:func:`features.segmentation.assign_seller_tiers`, the
    configured ``seller_tags``). One row per user; ``user_id`` is ``seller-<i>``.
    """
    rng = np.random.default_rng([seed, 10])
    cs = rng.beta(2.0, 3.0, users)
    g = rng.beta(2.0, 2.0, users)
    volume = np.minimum(rng.pareto(1.3, users) + 1.0, MAX_VOLUME)
    hazard = (0.9 * rng.lognormal(0.0, 0.5, users) * (0.5 + cs) * (1.4 - 0.8 * g)
              / np.sqrt(volume))
    prospect = rng.random(users) < PROSPECT_SHARE
    new = ~prospect & (rng.random(users) < NEW_SELLER_SHARE)
    # A seller sleeps when they stopped consigning within the last year: more likely the
    # higher their hazard.
    sleeping = ~prospect & ~new & (rng.random(users) < 1.0 - np.exp(-0.6 * hazard))
    active = ~prospect & ~new & ~sleeping
    yearly = 6.0 * volume * np.exp(rng.normal(0.0, 0.3, users))
    recency = np.where(sleeping, 91.0 + rng.exponential(120.0, users) * (0.5 + hazard),
                       np.minimum(rng.exponential(40.0 / np.sqrt(volume), users), 89.0))
    recency = np.where(new, rng.uniform(1.0, 60.0, users), recency)
    recency = np.where(prospect, np.nan, recency)
    sales_365 = np.where(active, rng.poisson(yearly),
                         np.where(sleeping, rng.poisson(yearly * 0.3), 0)).astype(float)
    sales_30 = np.where(active & (recency <= 30), rng.poisson(yearly / 12.0), 0).astype(float)
    sales_90 = np.maximum(sales_30, np.where(active, rng.poisson(yearly / 4.0), 0))
    sold_total = sales_365 + np.where(prospect | new, 0, rng.poisson(yearly * 0.8))
    sell_through = np.clip(0.2 + 0.7 * cs + rng.normal(0.0, 0.06, users), 0.05, 1.0)
    listed = np.where(prospect, 0.0, np.ceil(sold_total / sell_through) + new)
    price = np.round(MEDIAN_LISTING_PRICE * rng.lognormal(0.0, 0.6, users)
                     * volume ** 0.1, 2)
    days_to_sell = np.where(sold_total > 0, 40.0 * (1.5 - 1.2 * g)
                            * rng.lognormal(0.0, 0.2, users), np.nan)
    stale = np.where(prospect, 0, rng.poisson((1.4 - 0.8 * g) * (1.0 - 0.6 * cs)
                                               * np.sqrt(volume) * 1.5)).astype(float)
    unfinished = np.where(prospect, rng.random(users) < 0.15 + 0.7 * cs, 0).astype(float)
    resellable = rng.poisson(0.5 + 5.0 * g).astype(float)
    # A prospect is a prospect for a reason: one without either sign started a listing.
    unfinished = np.where(prospect & (unfinished == 0) & (resellable < 3), 1.0, unfinished)
    weekly = np.select([active, sleeping, new], [yearly / 52.0, 0.01 * volume, 0.15], 0.03)
    frame = pd.DataFrame({
        "user_id": [f"seller-{i:06d}" for i in range(users)],
        "commission_sensitivity": cs, "guidance_response": g, "churn_hazard": hazard,
        "volume": volume, "weekly_sales": weekly, "prospect": prospect,
        "is_seller": ~prospect,
        "seller_recency_days": recency,
        "days_since_listing": recency,
        "listings_30d": np.where(active & (recency <= 30), rng.poisson(yearly / 12.0 / sell_through), 0).astype(float),
        "listings_90d": np.where(active, rng.poisson(yearly / 4.0 / sell_through), new * 1.0).astype(float),
        "sales_30d": sales_30, "sales_90d": sales_90.astype(float), "sales_365d": sales_365,
        "items_listed": listed, "items_sold": sold_total.astype(float),
        "sell_through_rate": np.where(listed > 0, sold_total / np.maximum(listed, 1), 0.0),
        "days_to_sell": days_to_sell,
        "sold_value_total": sold_total * price, "sold_value_365d": sales_365 * price,
        "commission_365d": 0.2 * sales_365 * price,
        "stale_listings": stale, "unfinished_listings": unfinished,
        "listings_started_365d": unfinished, "resellable_items": resellable,
        "listing_price": price,
        "listing_category": rng.choice(CATEGORIES, size=users),
    })
    frame["seller_tier"] = assign_seller_tiers(frame, settings.features.tiers, settings.policy)
    frame["seller_tags"] = assign_tags(frame, settings.features.seller_tags, settings.policy)
    # What a seller churn model would say, from the record alone (no model is trained here).
    logit = (-2.0 + 0.012 * np.nan_to_num(recency, nan=365.0)
             - 0.4 * np.log1p(sales_365))
    frame["churn_probability"] = 1.0 / (1.0 + np.exp(-logit))
    return frame


def seller_views(population: pd.DataFrame) -> list[UserView]:
    """One seller :class:`UserView` per row (:func:`decisions.policy.seller_view`): the
    seller tier, seller tags and seller columns, never the latent traits."""
    observable = population.drop(columns=[c for c in SELLER_TRAIT_COLUMNS
                                          if c in population.columns])
    return [seller_view(str(row["user_id"]), row, churn_probability=row["churn_probability"])
            for row in observable.to_dict("records")]


SELLERS = Side("seller", make_seller_stream, seller_views, "seller_tier", SELLER_TIERS)
