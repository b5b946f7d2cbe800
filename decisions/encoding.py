"""How a decision is described to a chooser: the features of one decision as namespaces.

One example per decision: a ``shared`` part with the user and the request context, and one
part per eligible arm. Namespaces (their first letter is what VW's ``-q`` interactions refer
to):

- ``S`` segmentation: tier, segment, tags, known;
- ``U`` user scores: churn and propensity bins, and bins of the store record's behaviour
  columns (``FEATURE_BINS``: RFM, aov, coupon share, category entropy, cart abandonments,
  return rate, spend trend): what a platform knows about price sensitivity, brand focus
  and appetite for financing; for a seller (``UserView.subject``) the seller churn bin and
  the seller columns (``SELLER_FEATURE_BINS``, and ``SELLER_LOG_FEATURES`` as
  numbers) instead;
- ``C`` context: channel, page, category (only the configured values, else ``other``: free
  text never reaches the bandit), luxury or not, item price bin, the item price relative to
  the user's aov, hour bin;
- ``N`` (buyers) numbers read from the store record beside U's bins (:func:`encode_numbers`):
  the coupon share smoothed by the number of orders, category entropy (and crossed with the
  log of the order count), log carts, log views, log aov (and its square), log orders: one
  slope per arm (``NA``) where U's bins need a weight per bin, so fewer weights to learn;
- ``I`` (buyers) the item as numbers: ``luxury``, ``log_price`` and ``log_relative_price``
  (against the user's aov); ``NIA`` crosses them with N and the arm (brand focus matters
  on luxury items, financing on expensive ones);
- ``P`` price: ``value:<item price / 100>`` (the user's aov when the request has no item);
- ``A`` arm: ``arm=<name>`` plus the arm's own features from ``ArmConfig.features``.

An arm's tokens come from its configuration only, never from the user: one public offer per
arm. No name in ``policy.forbidden_features`` may be read (:func:`check_encoder`).

The example is also what the decision log keeps, so a logged decision can be learned from
and re-scored offline exactly as it was seen. Every number written into the text goes
through :func:`vw_number` (a numpy float's ``repr`` is ``np.float64(..)``).
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, Field

from decisions.policy import ContextValues, RequestContext, UserView, default_context_values
from features.contract import LUXURY_CATEGORIES
from nextbest.config import ArmConfig, BanditConfig, PolicyConfig

_UNSAFE = re.compile(r"[\s|:]+")

# Bin edges: a value gets the number of edges it is >= to; a missing value gets "na".
SCORE_EDGES = (0.1, 0.25, 0.5, 0.75)
# The store record columns (CONTRACT.md) the bandit reads, and their bin edges.
FEATURE_BINS: dict[str, tuple[float, ...]] = {
    "recency_days": (7, 30, 90, 180),
    "frequency_total": (1, 2, 4, 8),
    "monetary_365d": (1, 100, 500, 1000, 5000),
    "aov": (25, 50, 100, 250, 500),
    "coupon_share": (0.1, 0.25, 0.4, 0.55, 0.7, 0.85),
    "category_entropy": (0.3, 0.6, 0.9, 1.2, 1.5),
    "cart_abandonments_30d": (1, 2, 3, 5, 8),
    "return_rate": (0.05, 0.1, 0.2, 0.35),
    "spend_trend": (-100, -1, 1, 100),
}
# The seller-side columns a seller decision point reads (``UserView.subject == "seller"``):
# seller R, F and M, sell-through, days to sell and the listing pipeline.
SELLER_FEATURE_BINS: dict[str, tuple[float, ...]] = {
    "seller_recency_days": (7, 30, 90, 180, 365),
    "listings_90d": (1, 2, 5, 10),
    "sales_365d": (1, 3, 10, 30),
    "sold_value_365d": (1, 100, 500, 2000, 10000),
    "sell_through_rate": (0.2, 0.4, 0.6, 0.8),
    "days_to_sell": (7, 14, 30, 60),
    "stale_listings": (1, 2, 5),
    "unfinished_listings": (1, 2),
    "resellable_items": (1, 3, 6),
}
# Seller columns also written as a number, ``log_<name>:log(1 + x)``, beside their bins: a
# seller decision's reward grows with the seller's volume, and one slope per arm (with
# ``UA``) carries what is learned about volume to the largest sellers (hundreds of sales a
# year, all in the top bin). Finer bins did worse on the seller simulator: a top seller's
# own bin x arm weight is never learned for the arms the learner stopped trying there.
SELLER_LOG_FEATURES: tuple[str, ...] = ("sales_365d",)
PRICE_EDGES = (25, 50, 100, 250, 500, 1000)
RELATIVE_PRICE_EDGES = (0.5, 0.8, 1.25, 2.0, 4.0)  # item price / the user's aov
PRICE_UNIT = 100.0  # namespace P carries the price in hundreds
HOUR_PARTS = ("night",) * 6 + ("morning",) * 6 + ("afternoon",) * 6 + ("evening",) * 6
OTHER = "other"  # a context value outside the configured ones
# What the shared namespaces read besides FEATURE_BINS: the user's segmentation and scores,
# the request's context.
ENCODED_NAMES = ("tier", "segment", "known", "tags", "churn_probability",
                 "purchase_propensity", "channel", "page", "category", "item_price", "hour",
                 "aov")
# The store columns namespace N reads as numbers (buyers; besides FEATURE_BINS').
NUMBER_COLUMNS = ("frequency_total", "coupon_share", "category_entropy", "carts_30d",
                  "views_30d", "aov")
# A typical item price: log prices and log aov are taken relative to it, so their slopes
# and the squared log aov are centred near zero.
TYPICAL_PRICE = 180.0


class BanditExample(BaseModel):
    """The features of one decision exactly as sent to VW (also what the decision log keeps).

    ``shared`` maps a namespace to its feature tokens; ``arms`` maps each eligible arm, in
    the order VW saw them, to its tokens.
    """

    shared: dict[str, list[str]] = Field(default_factory=dict)
    arms: dict[str, list[str]] = Field(default_factory=dict)
    # What a conversion is worth before arm costs: the item price, else the user's aov
    # (None when neither is known; the margin then uses reward.scale).
    value: float | None = None


def _token(value: object) -> str:
    """A VW-safe token: no whitespace, ``|`` or ``:``."""
    return _UNSAFE.sub("_", str(value)) or "_"


def _bin(name: str, value: float | None, edges: tuple[float, ...]) -> str:
    """``name=k`` where k counts the edges ``value`` reaches; ``name=na`` when missing."""
    if value is None:
        return f"{name}=na"
    return f"{name}={bisect.bisect_right(edges, value)}"


def check_encoder(config: BanditConfig, policy: PolicyConfig) -> None:
    """Refuse (ConfigError) an encoder that would read one of ``policy.forbidden_features``:
    a store column in ``FEATURE_BINS``, a context field, or an arm feature in config."""
    policy.refuse_forbidden([*FEATURE_BINS, *SELLER_FEATURE_BINS, *ENCODED_NAMES,
                             *NUMBER_COLUMNS],
                            "the bandit's encoder")
    for arm in config.arms:
        policy.refuse_forbidden(arm.features, f"bandit.arms {arm.name!r} features")


def encode_shared(user: UserView, context: RequestContext,
                  values: ContextValues | None = None) -> dict[str, list[str]]:
    """The shared namespaces S, U and C of one decision (``values``: the configured context
    values, default the built-in ones)."""
    segmentation = [f"tier={_token(user.tier)}", f"segment={_token(user.segment)}",
                    f"known={int(user.known)}"]
    segmentation += [f"tag={_token(tag)}" for tag in sorted(user.tags)]
    scores = [_bin("churn", user.churn_probability, SCORE_EDGES)]
    if user.subject == "seller":
        bins = SELLER_FEATURE_BINS
    else:
        bins = FEATURE_BINS
        scores.append(_bin("propensity", user.purchase_propensity, SCORE_EDGES))
    scores += [_bin(name, user.features.get(name), edges) for name, edges in bins.items()]
    if user.subject == "seller":
        scores += [f"log_{name}:{vw_number(math.log1p(max(value, 0.0)))}"
                   for name in SELLER_LOG_FEATURES
                   if (value := user.features.get(name)) is not None and math.isfinite(value)]
    shared = {"S": segmentation, "U": scores, "C": encode_context(user, context, values)}
    if user.subject != "seller":
        shared["N"] = encode_numbers(user)
        item = encode_item(user, context)
        if item:
            shared["I"] = item
    value = context.item_price if context.item_price is not None else user.features.get("aov")
    if value is not None:
        shared["P"] = [f"value:{vw_number(value / PRICE_UNIT)}"]
    return shared


def _number(user: UserView, name: str) -> float:
    """A store column as a number: missing (or not finite) reads as 0."""
    value = user.features.get(name)
    return value if value is not None and math.isfinite(value) else 0.0


def encode_numbers(user: UserView) -> list[str]:
    """Namespace N of a buyer: store columns as numbers (missing reads as 0).

    ``coupon_smooth`` is the share of orders with a coupon smoothed towards 1/2 by the
    number of orders, ``(coupons + 1) / (orders + 2)``: one order with a coupon says less
    than ten; ``entropy_x_orders`` and ``few_orders`` tell a focused buyer from one with
    too few orders to spread over categories; ``has_aov`` marks a known aov.
    """
    orders = max(_number(user, "frequency_total"), 0.0)
    share = min(max(_number(user, "coupon_share"), 0.0), 1.0)
    entropy = max(_number(user, "category_entropy"), 0.0)
    aov = _number(user, "aov")
    log_orders = math.log1p(orders)
    log_aov = math.log(aov / TYPICAL_PRICE) if aov > 0 else 0.0
    numbers = {
        "coupon_smooth": (share * orders + 1) / (orders + 2),
        "entropy": entropy,
        "log_carts": math.log1p(max(_number(user, "carts_30d"), 0.0)),
        "log_aov": log_aov,
        "has_aov": float(aov > 0),
        "log_orders": log_orders,
        "entropy_x_orders": entropy * log_orders,
        "few_orders": float(orders < 2),
        "log_aov_sq": min(max(log_aov, -1.0), 1.0) ** 2,
        "log_views": math.log1p(max(_number(user, "views_30d"), 0.0)),
    }
    return [f"{name}:{vw_number(value)}" for name, value in numbers.items()]


def encode_item(user: UserView, context: RequestContext) -> list[str]:
    """Namespace I of a buyer: the item as numbers, ``luxury`` (a luxury category),
    ``log_price`` (against a typical price) and ``log_relative_price`` (against the user's
    aov); each left out when unknown (no item, no aov)."""
    tokens = ["luxury"] if context.category in LUXURY_CATEGORIES else []
    price = context.item_price
    if price is not None and price > 0 and math.isfinite(price):
        tokens.append(f"log_price:{vw_number(math.log(price / TYPICAL_PRICE))}")
        aov = _number(user, "aov")
        if aov > 0:
            tokens.append(f"log_relative_price:{vw_number(math.log(price / aov))}")
    return tokens


def _known(value: str | None, allowed: frozenset[str]) -> str:
    """``value`` when it is one of ``allowed``, ``na`` when missing, else ``other``."""
    if value is None:
        return "na"
    return _token(value) if value in allowed else OTHER


def encode_context(user: UserView, context: RequestContext,
                   values: ContextValues | None = None) -> list[str]:
    """Namespace C: where the user is, what the item costs, absolutely and against their aov.

    Channel, page and category are written only when they are configured values
    (``values``), else as ``other``."""
    values = values or default_context_values()
    hour = "na" if context.hour is None else HOUR_PARTS[context.hour]
    category = context.category
    aov = user.features.get("aov")
    relative = (context.item_price / aov if context.item_price is not None and aov
                else None)
    return [f"channel={_known(context.channel, values.channels)}",
            f"page={_known(context.page, values.pages)}",
            f"category={_known(category, values.categories)}",
            f"luxury={int(category in LUXURY_CATEGORIES)}",
            _bin("price", context.item_price, PRICE_EDGES),
            _bin("relative_price", relative, RELATIVE_PRICE_EDGES), f"hour={hour}"]


def vw_number(value: float) -> str:
    """A number as VW text: a plain decimal (``repr`` of a numpy float is not one)."""
    return f"{float(value):.9g}"


def encode_arm(arm: ArmConfig) -> list[str]:
    """``arm=<name>`` plus the arm's features: strings as ``key=value``, numbers as ``key:x``."""
    tokens = [f"arm={_token(arm.name)}"]
    for key, value in sorted(arm.features.items()):
        if isinstance(value, str):
            tokens.append(f"{_token(key)}={_token(value)}")
        else:
            tokens.append(f"{_token(key)}:{vw_number(value)}")
    return tokens


def encode_arms(config: BanditConfig) -> dict[str, list[str]]:
    """The tokens of every configured arm, computed once per engine."""
    return {arm.name: encode_arm(arm) for arm in config.arms}


def build_example(arm_tokens: dict[str, list[str]], user: UserView, context: RequestContext,
                  eligible: list[str], values: ContextValues | None = None) -> BanditExample:
    """The VW example for choosing among ``eligible`` (``arm_tokens`` from encode_arms;
    ``values``: the configured context values)."""
    value = context.item_price if context.item_price is not None else user.features.get("aov")
    return BanditExample(shared=encode_shared(user, context, values),
                         arms={name: arm_tokens[name] for name in eligible},
                         value=None if value is None or not math.isfinite(value) else value)



def example_value(example: BanditExample) -> float | None:
    """The decision's value: ``example.value``, else (a log written before it was kept) the
    price namespace ``P``, else None."""
    if example.value is not None:
        return example.value
    for token in example.shared.get("P", []):
        if token.startswith("value:"):
            return float(token[len("value:"):]) * PRICE_UNIT
    return None


@dataclass(frozen=True)
class DecisionInput:
    """What a chooser sees of one decision: the user, the request and its encoded example.

    The eligible arms are the example's arms, in order (``arms``).
    """

    user: UserView
    context: RequestContext
    example: BanditExample

    @property
    def arms(self) -> list[str]:
        """The eligible arms, in the order every pmf lists them."""
        return list(self.example.arms)
