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
    policy.refuse_forbidden([*FEATURE_BINS, *SELLER_FEATURE_BINS, *ENCODED_NAMES],
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
    value = context.item_price if context.item_price is not None else user.features.get("aov")
    if value is not None:
        shared["P"] = [f"value:{vw_number(value / PRICE_UNIT)}"]
    return shared


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
