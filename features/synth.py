"""A synthetic consignment marketplace: the five raw tables plus the latent user traits.

Why: every later stage (features, models, bandit simulator) needs realistic data with known
ground truth, at sizes from a unit test (2,000 users) to the 1M-user benchmark.

How it behaves:

- Users sign up over the whole period (a platform that grows); about 15% are consignors,
  about 8% students and 2% have excluded themselves from credit (``users.is_student``,
  ``users.self_excluded_from_credit``: what the platform knows of them).
- Each user has hidden traits (price sensitivity, brand focus, installment affinity, spend
  level, engagement, return propensity). They are written to ``latent_dir`` only, never to
  the raw tables a model may read.
- Orders and browsing sessions arrive as Poisson processes in continuous time whose hourly
  intensity carries a daily, a weekly and a yearly rhythm. A user is active from signup
  until they churn; the churn hazard rises with returns and price sensitivity and falls with
  engagement and spend. Activity fades ("goes quiet") in the 60 days before churn.
- About 30% of users never buy; most sessions end without a purchase; some carts are left.
- Spend is lognormal, scaled by ``spend_level`` and by category; coupons go with price
  sensitivity; about 8% of orders are returned (far more for a few users).
- Sellers' sales follow Pareto weights, so about 20% of sellers bring about 80% of value.
  Every sold item is a listing of its seller, listed before the sale; sellers also hold
  unsold listings.
- Sellers have latent traits of their own (``seller_traits.parquet``, drawn from their own
  seed stream so every other draw stays what it was): commission sensitivity, responsiveness
  to guidance and a churn hazard. A seller stops consigning at their seller churn time (no
  listing and no sale after it); the hazard falls with the seller's volume (Pareto weight)
  and rises with commission sensitivity and slow sales; sellers who respond to guidance
  price right and sell faster; commission-sensitive sellers list fewer unsold items. A few
  users who never consign start a listing and abandon it (``listing_started`` events).
- Groups with a known truth (latent flags in ``user_traits.parquet``, see
  :data:`GROUP_TRAITS`): card switchers pay with a new payment fingerprint on most of their
  frequent orders; IP jumpers come from ever new IP prefixes and countries; perk abusers
  are rings of accounts sharing one card that each take the new-user perk once and never
  buy again; impulse buyers buy minutes after first seeing an item (others saw it hours or
  days before); comparison shoppers view several items of the category in the session
  before buying; re-readers keep opening their order history; cart hoarders fill carts
  they never buy; fans rate high and share, critics rate low, the silent never review;
  complainers complain about most orders.
- Every purchase is a session (login, views, add_to_cart, a ``purchase`` event at the order
  time); every session has one IP prefix (/24) and country. Reviews carry a rating (1-5)
  and often a short text; some texts come without a rating.

Everything is vectorised numpy over chunks of users, written as Parquet row groups, so 1M
users x 730 days fits in bounded memory. The same seed gives the same files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from features.contract import LUXURY_CATEGORIES
from nextbest.errors import ValidationFailed

TABLES = ("users", "orders", "listings", "events", "preferences")
USER_TRAITS_FILE = "user_traits.parquet"
SELLER_TRAITS_FILE = "seller_traits.parquet"
CHUNK_USERS = 100_000
US_PER_HOUR = 3_600_000_000

CATEGORIES = np.array(["apparel", "shoes", "bags", "jewelry", "electronics", "home", "watches",
                       "art"])
CATEGORY_SHARE = np.array([0.25, 0.15, 0.15, 0.10, 0.12, 0.10, 0.06, 0.07])
CATEGORY_MEDIAN_PRICE = np.array([90.0, 150.0, 700.0, 400.0, 300.0, 120.0, 1300.0, 600.0])
CATEGORY_COMMISSION = np.array([0.30, 0.25, 0.20, 0.20, 0.15, 0.25, 0.15, 0.20])
LUXURY = np.isin(CATEGORIES, sorted(LUXURY_CATEGORIES))

REGIONS = np.array(["northeast", "southeast", "midwest", "southwest", "west"])
REGION_TZ = np.array(["America/New_York", "America/New_York", "America/Chicago",
                      "America/Denver", "America/Los_Angeles"])
REGION_SHARE = np.array([0.25, 0.20, 0.20, 0.12, 0.23])
CHANNELS = np.array(["organic", "invite", "ads", "social", "partner"])
CHANNEL_SHARE = np.array([0.45, 0.12, 0.25, 0.13, 0.05])
CHANNEL_COST = np.array([2.0, 10.0, 35.0, 20.0, 25.0])  # mean acquisition cost per user

EVENT_TYPES = np.array(["view", "favorite", "add_to_cart", "search", "follow", "login", "share",
                        "review", "purchase", "complaint", "order_history"])
VIEW, FAVORITE, CART, LOGIN, SHARE, REVIEW, PURCHASE, COMPLAINT, HISTORY = 0, 1, 2, 5, 6, 7, 8, 9, 10
# Types of the events after the first one in a browsing session, and their odds.
BROWSE_TYPES = np.array([0, 3, 1, 2, 4, 6])
BROWSE_ODDS = np.array([0.55, 0.12, 0.08, 0.20, 0.03, 0.02])
STATUSES = np.array(["completed", "returned", "cancelled"])

# Share of activity per hour of the day (evening peak) and per weekday (Monday first).
HOURLY = np.array([2, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 5, 5, 5, 6, 7, 8, 9, 9, 7, 4],
                  dtype=float)
WEEKDAY = np.array([0.90, 0.92, 0.95, 0.97, 1.05, 1.12, 1.10])

ORDER_RATE = 0.015  # orders per active day of an average buyer
SESSION_RATE = 0.016  # browsing sessions per active day of an average user
NEVER_BUY_SHARE = 0.30
SELLER_SHARE = 0.15
STUDENT_SHARE = 0.08
SELF_EXCLUDED_SHARE = 0.02
SELLER_PARETO_ALPHA = 1.16  # the Pareto index that gives the 80/20 rule
QUIET_DAYS = 60
QUIET_KEEP = 0.35
UNSOLD_PER_SOLD = 0.5
# Seller traits (_draw_seller_traits): yearly seller churn hazard of a weight-1 seller with
# median traits; redraws of a sale whose seller had stopped; users who never consign but
# start a listing once and leave it.
SELLER_HAZARD_PER_YEAR = 0.9
SELLER_REDRAWS = 8
PROSPECT_SHARE = 0.04
BROWSE_ITEMS_PER_USER = 20  # distinct items a browsing user may come across, per user

# Latent group flags (user_traits.parquet) and the share of users drawn into each.
GROUP_TRAITS = ("card_switcher", "ip_jumper", "perk_abuser", "serial_returner", "impulse_buyer",
                "comparison_shopper", "history_rereader", "cart_hoarder", "fan", "critic",
                "silent", "complainer")
GROUP_SHARE = {"card_switcher": 0.02, "ip_jumper": 0.02, "perk_abuser": 0.02,
               "serial_returner": 0.03,
               "impulse_buyer": 0.15, "comparison_shopper": 0.15, "history_rereader": 0.03,
               "cart_hoarder": 0.03, "complainer": 0.08}
SENTIMENT_SHARE = {"fan": 0.15, "critic": 0.10, "silent": 0.40}  # the rest review sometimes
SWITCHER_EXTRA_ORDERS = 7.0  # card switchers order this many times more often
SWITCHER_NEW_CARD = 0.8  # chance a card switcher's order uses a fresh fingerprint
SECOND_CARD_SHARE, SECOND_CARD_USE = 0.2, 0.3
PERK_SHARE = 0.5  # share of ordinary first orders that take the new-user perk
RING_SIZES = (3, 6)  # perk-abuse rings: accounts per shared card (inclusive)
JUMPER_EXTRA_SESSIONS = 0.4  # extra sessions per day of an IP jumper
TRAVEL_SESSION = 0.01  # chance an ordinary session comes from abroad
MOBILE_SESSION = 0.3  # chance an ordinary session comes from a mobile carrier's prefix
REREAD_RATE = 0.4  # order-history looks per day of a re-reader
SERIAL_RETURNS = 0.9  # chance a serial returner sends an order back
HOARD_RATE = 0.25  # carts per day of a cart hoarder
COUNTRIES = np.array(["US", "CA", "MX", "GB", "DE", "FR", "NL", "BR", "IN", "NG", "RU", "CN",
                      "TR", "VN", "ID", "AR"])
# Review texts per sentiment: 0 negative, 1 neutral, 2 positive.
PHRASES = (
    ("arrived damaged", "not as described", "smells of smoke", "looks fake",
     "very disappointed", "poor condition", "seller never answered", "would not buy again"),
    ("it is ok", "as expected", "fine for the price", "average condition", "took a while",
     "does the job", "nothing special", "fair deal"),
    ("love it", "exactly as described", "beautiful piece", "fast shipping",
     "authentic and well packed", "like new", "great seller", "will buy again"),
)


class SynthSummary(BaseModel):
    """What :func:`synthesize` wrote: rows per table, where, and how long it took."""

    n_users: int
    days: int
    seed: int
    start: date
    raw_dir: Path
    latent_dir: Path
    rows: dict[str, int]
    seconds: float

    def line(self) -> str:
        """One-line summary for the CLI."""
        counts = ", ".join(f"{name} {count:,}" for name, count in self.rows.items())
        return f"synth: {counts} rows in {self.seconds:.1f} s -> {self.raw_dir}"


@dataclass
class Population:
    """Per-user arrays for the whole population (times in hours since ``start``)."""

    user_id: pa.Array
    signup_h: np.ndarray
    churn_h: np.ndarray
    region: np.ndarray
    channel: np.ndarray
    price_sensitivity: np.ndarray
    brand_focus: np.ndarray
    installment_affinity: np.ndarray
    spend_level: np.ndarray
    engagement: np.ndarray
    return_propensity: np.ndarray
    is_seller: np.ndarray
    favorite_category: np.ndarray
    order_rate: np.ndarray
    groups: dict[str, np.ndarray]
    ring_card: np.ndarray
    second_card: np.ndarray
    acquisition_cost: np.ndarray
    # What the platform knows of the user's vulnerability to credit (_draw_credit_flags).
    is_student: np.ndarray | None = None
    self_excluded_from_credit: np.ndarray | None = None
    seller_traits: SellerTraits | None = None


@dataclass
class Sellers:
    """Consignors sorted by signup, with cumulative Pareto weights for sampling."""

    user_index: np.ndarray
    signup_h: np.ndarray
    cum_weight: np.ndarray


@dataclass
class SellerTraits:
    """Latent seller traits of every user (meaningful for consignors; ``volume`` 0 and no
    churn time for the others), from the seller stream ``SeedSequence([seed, 5])``.

    ``stop_h``: the hour the seller stops consigning (inf: never in the data). ``prospect``:
    users who never consign but start a listing once, at ``prospect_h``.
    """

    commission_sensitivity: np.ndarray
    guidance_response: np.ndarray
    churn_hazard: np.ndarray
    volume: np.ndarray
    stop_h: np.ndarray
    prospect: np.ndarray
    prospect_h: np.ndarray

    def sell_speed(self, seller: np.ndarray) -> np.ndarray:
        """Scale of the days-to-sell of each seller's items: guided sellers price right."""
        return 1.4 - 0.8 * self.guidance_response[seller]

    def unsold_keep(self, seller: np.ndarray) -> np.ndarray:
        """Share of their unsold listings a seller makes: commission-sensitive sellers list
        only what they expect to sell."""
        return 1.0 - 0.6 * self.commission_sensitivity[seller]


@dataclass
class Clock:
    """Hourly activity intensity and its integral, in expected-days units."""

    start_us: int
    hours: int
    grid: np.ndarray
    cum: np.ndarray

    def to_us(self, t_hours: np.ndarray) -> np.ndarray:
        """Hours since start -> naive UTC microseconds, clipped into [start, end)."""
        us = (t_hours * US_PER_HOUR).astype(np.int64)
        return np.clip(us, 0, self.hours * US_PER_HOUR - 1) + self.start_us


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded numbers as an Arrow string array (no Python loop)."""
    digits = pc.utf8_lpad(pa.array(numbers.astype(np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _labels(values: np.ndarray, index: np.ndarray) -> pa.Array:
    """Strings ``values[index]`` as an Arrow string array."""
    return pa.array(values.tolist(), pa.string()).take(pa.array(index.astype(np.int32)))


def _pick(rng: np.random.Generator, odds: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn with probabilities ``odds`` (normalised)."""
    cum = np.cumsum(odds / odds.sum())
    return np.minimum(np.searchsorted(cum, rng.random(size), side="right"), len(odds) - 1)


def make_clock(start: date, days: int) -> Clock:
    """The hourly intensity: hour of day x weekday x a yearly peak before Christmas.

    Normalised so that integrating it over ``days`` days gives ``days`` expected days.
    """
    hours = days * 24
    h = np.arange(hours)
    day = h // 24
    weekday = (np.datetime64(start, "D") + day).astype("datetime64[D]").view("int64")
    weekday = (weekday + 3) % 7  # 1970-01-01 was a Thursday
    doy = (np.datetime64(start, "D") + day - np.datetime64(start, "Y").astype("datetime64[D]"))
    doy = doy.astype(np.int64) % 365
    yearly = 1.0 + 0.25 * np.cos(2 * np.pi * (doy - 345) / 365.0)
    intensity = HOURLY[h % 24] * WEEKDAY[weekday] * yearly
    intensity = intensity / intensity.mean() / 24.0
    cum = np.concatenate([[0.0], np.cumsum(intensity)])
    start_us = int(np.datetime64(start, "us").astype(np.int64))
    return Clock(start_us=start_us, hours=hours, grid=np.arange(hours + 1, dtype=float), cum=cum)


def _draw_population(n: int, days: int, rng: np.random.Generator,
                     grng: np.random.Generator) -> Population:
    """Every user's signup, traits, churn time and rates (vectorised over users); the group
    flags come from their own stream ``grng``."""
    hours = days * 24
    early = rng.random(n) < 0.2
    signup_h = np.where(early, rng.random(n) * min(60, days) * 24,
                        hours * rng.random(n) ** (1 / 1.5))
    price_sensitivity = rng.beta(2.0, 3.0, n)
    brand_focus = rng.beta(2.0, 2.0, n)
    installment_affinity = rng.beta(1.5, 4.0, n)
    sigma = 0.8
    spend_level = rng.lognormal(-sigma**2 / 2, sigma, n)
    engagement = rng.gamma(1.5, 1 / 1.5, n)
    heavy_returner = rng.random(n) < 0.08
    return_propensity = np.where(heavy_returner, rng.beta(3.0, 5.0, n), rng.beta(1.0, 12.0, n))
    is_seller = rng.random(n) < SELLER_SHARE
    # Churn hazard: engaged big spenders stay, returners and deal-seekers leave sooner.
    log_life = (np.log(450.0) + 0.6 * np.log(engagement) + 0.3 * np.log(spend_level)
                - 3.0 * (return_propensity - 0.08) - 0.8 * (price_sensitivity - 0.4))
    churn_h = signup_h + rng.exponential(1.0, n) * np.exp(log_life) * 24
    never_buy = rng.random(n) < NEVER_BUY_SHARE
    order_rate = np.where(never_buy, 0.0,
                          ORDER_RATE * engagement * spend_level**0.3 / (1 - NEVER_BUY_SHARE))
    width = max(6, len(str(n - 1)))
    region, channel = _pick(rng, REGION_SHARE, n), _pick(rng, CHANNEL_SHARE, n)
    favorite_category = _pick(rng, CATEGORY_SHARE, n)
    # Group flags from their own stream, so the draws above stay what they always were.
    groups = {name: grng.random(n) < share for name, share in GROUP_SHARE.items()}
    mood = grng.random(n)
    groups["fan"] = mood < SENTIMENT_SHARE["fan"]
    groups["critic"] = (mood >= SENTIMENT_SHARE["fan"]) & (
        mood < SENTIMENT_SHARE["fan"] + SENTIMENT_SHARE["critic"])
    groups["silent"] = mood >= 1 - SENTIMENT_SHARE["silent"]
    groups["complainer"] &= ~groups["silent"]
    abuser = groups["perk_abuser"]
    groups["card_switcher"] &= ~abuser
    # Serial returners send most orders back (their churn was drawn from their other traits).
    return_propensity = np.where(groups["serial_returner"], SERIAL_RETURNS, return_propensity)
    order_rate = np.where(abuser, 0.0, order_rate)  # one perk order each, added explicitly
    ring_card = _rings(grng, abuser, signup_h)
    return Population(
        user_id=_ids("u", np.arange(n), width),
        signup_h=signup_h, churn_h=churn_h, region=region, channel=channel,
        price_sensitivity=price_sensitivity, brand_focus=brand_focus,
        installment_affinity=installment_affinity, spend_level=spend_level,
        engagement=engagement, return_propensity=return_propensity, is_seller=is_seller,
        favorite_category=favorite_category, order_rate=order_rate,
        groups={name: groups[name] for name in GROUP_TRAITS}, ring_card=ring_card,
        second_card=grng.random(n) < SECOND_CARD_SHARE,
        acquisition_cost=np.round(CHANNEL_COST[channel] * grng.gamma(4.0, 0.25, n), 2),
    )


def _rings(rng: np.random.Generator, abuser: np.ndarray, signup_h: np.ndarray) -> np.ndarray:
    """The shared card of each perk abuser (-1 for everyone else): abusers in signup order
    form rings of RING_SIZES accounts, each ring paying with one card."""
    ring_card = np.full(abuser.size, -1, dtype=np.int64)
    members = np.flatnonzero(abuser)
    members = members[np.argsort(signup_h[members], kind="stable")]
    sizes = rng.integers(RING_SIZES[0], RING_SIZES[1] + 1, members.size // RING_SIZES[0] + 1)
    ring = np.repeat(np.arange(sizes.size), sizes)[:members.size]
    ring_card[members] = ring
    return ring_card


def _draw_credit_flags(pop: Population, seed: int) -> None:
    """Students (``STUDENT_SHARE``) and users who excluded themselves from credit
    (``SELF_EXCLUDED_SHARE``), from their own generator so every other draw stays as it was.
    The simulator's students respond best to installments (experiments/simulator.py)."""
    n = pop.signup_h.size
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    pop.is_student = rng.random(n) < STUDENT_SHARE
    pop.self_excluded_from_credit = rng.random(n) < SELF_EXCLUDED_SHARE


def _draw_sellers(pop: Population, rng: np.random.Generator) -> Sellers:
    """Sellers sorted by signup with Pareto weights; the first one exists from the start."""
    index = np.flatnonzero(pop.is_seller)
    if index.size == 0:
        index = np.array([0])
    order = np.argsort(pop.signup_h[index], kind="stable")
    index = index[order]
    pop.is_seller[index] = True
    pop.signup_h[index[0]] = 0.0
    weight = rng.pareto(SELLER_PARETO_ALPHA, index.size) + 1.0
    return Sellers(user_index=index, signup_h=pop.signup_h[index], cum_weight=np.cumsum(weight))


def _draw_seller_traits(pop: Population, sellers: Sellers, seed: int) -> SellerTraits:
    """Every user's seller traits, from their own stream (every other draw stays as it was).

    Seller churn hazard per year: ``SELLER_HAZARD_PER_YEAR`` x a lognormal factor x (0.5 +
    commission sensitivity) x the seller's sell speed / sqrt(volume): big, well-guided,
    commission-indifferent sellers stay longest.
    """
    n = pop.signup_h.size
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    sensitivity = rng.beta(2.0, 3.0, n)
    guidance = rng.beta(2.0, 2.0, n)
    factor = rng.lognormal(0.0, 0.5, n)
    life = rng.exponential(1.0, n)
    prospect = ~pop.is_seller & (rng.random(n) < PROSPECT_SHARE)
    prospect_at = rng.random(n)
    volume = np.zeros(n)
    volume[sellers.user_index] = np.diff(sellers.cum_weight, prepend=0.0)
    hazard = (SELLER_HAZARD_PER_YEAR * factor * (0.5 + sensitivity) * (1.4 - 0.8 * guidance)
              / np.sqrt(np.maximum(volume, 1.0)))
    stop_h = np.where(pop.is_seller, pop.signup_h + life / hazard * 365.0 * 24.0, np.inf)
    end_h = np.minimum(pop.churn_h, pop.signup_h + 400.0 * 24.0)
    prospect_h = pop.signup_h + prospect_at * np.maximum(end_h - pop.signup_h, 1.0)
    return SellerTraits(commission_sensitivity=sensitivity, guidance_response=guidance,
                        churn_hazard=hazard, volume=volume, stop_h=stop_h, prospect=prospect,
                        prospect_h=prospect_h)


def _poisson_times(rng: np.random.Generator, clock: Clock, begin_h: np.ndarray,
                   churn_h: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times of one Poisson process per row, with the clock's seasonality.

    Row i has ``rate[i]`` expected arrivals per (average) day on ``[begin_h[i], churn_h[i])``
    cut at the clock's end. Returns (row index, time in hours), sorted by row then time;
    arrivals in the last ``QUIET_DAYS`` before churn are thinned so users go quiet first.
    """
    end_h = np.clip(churn_h, begin_h, clock.hours)
    c0 = np.interp(begin_h, clock.grid, clock.cum)
    c1 = np.interp(end_h, clock.grid, clock.cum)
    counts = rng.poisson(rate * (c1 - c0))
    row = np.repeat(np.arange(rate.size), counts)
    u = c0[row] + rng.random(row.size) * (c1 - c0)[row]
    t = np.interp(u, clock.cum, clock.grid)
    keep = (t < churn_h[row] - QUIET_DAYS * 24) | (rng.random(row.size) < QUIET_KEEP)
    row, t = row[keep], t[keep]
    order = np.lexsort((t, row))
    return row[order], t[order]


def _prices(rng: np.random.Generator, pop: Population, users: np.ndarray,
            category: np.ndarray) -> np.ndarray:
    """Lognormal item prices by category, shifted by the user's spend and taste."""
    log_price = (np.log(CATEGORY_MEDIAN_PRICE[category]) + 0.6 * np.log(pop.spend_level[users])
                 - 0.4 * (pop.price_sensitivity[users] - 0.4)
                 + 0.3 * pop.brand_focus[users] * LUXURY[category]
                 + 0.2 * pop.installment_affinity[users] + rng.normal(0.0, 0.6, users.size))
    return np.round(np.exp(log_price), 2)


def _categories(rng: np.random.Generator, pop: Population, users: np.ndarray) -> np.ndarray:
    """The user's favourite category, more often for brand-focused users, else any."""
    loyal = rng.random(users.size) < 0.35 + 0.4 * pop.brand_focus[users]
    return np.where(loyal, pop.favorite_category[users], _pick(rng, CATEGORY_SHARE, users.size))


@dataclass
class OrderDraw:
    """One chunk's orders as arrays (``buyer`` indexes the population)."""

    buyer: np.ndarray
    t: np.ndarray
    category: np.ndarray
    price: np.ndarray
    amount: np.ndarray
    seller: np.ndarray
    status: np.ndarray
    coupon: np.ndarray
    card: np.ndarray
    perk: np.ndarray


def _group_orders(grng: np.random.Generator, clock: Clock, pop: Population, lo: int, hi: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Orders only groups place: card switchers' extra orders and each perk abuser's one
    order within two days of signup. Returns (buyer, time in hours)."""
    switcher = pop.groups["card_switcher"][lo:hi]
    rate = np.where(switcher, pop.order_rate[lo:hi] * SWITCHER_EXTRA_ORDERS, 0.0)
    row, t = _poisson_times(grng, clock, pop.signup_h[lo:hi], pop.churn_h[lo:hi], rate)
    abusers = np.flatnonzero(pop.groups["perk_abuser"][lo:hi])
    perk_t = pop.signup_h[lo + abusers] + grng.uniform(1.0, 48.0, abusers.size)
    made = perk_t < np.minimum(pop.churn_h[lo + abusers], clock.hours)
    return (np.concatenate([row, abusers[made]]) + lo, np.concatenate([t, perk_t[made]]))


def _payment(grng: np.random.Generator, pop: Population, buyer: np.ndarray, first: np.ndarray,
             counters: Counters) -> tuple[np.ndarray, np.ndarray]:
    """The card number (an integer behind the fingerprint) and new-user perk of each order.

    Cards: a user's own card is their index, a second card (some users) ``n + index``, a
    ring's shared card ``2n + ring``, a card switcher's fresh cards ``3n + k``."""
    n = pop.signup_h.size
    card = buyer.astype(np.int64)
    second = pop.second_card[buyer] & (grng.random(buyer.size) < SECOND_CARD_USE)
    card = np.where(second, n + buyer, card)
    fresh = pop.groups["card_switcher"][buyer] & (grng.random(buyer.size) < SWITCHER_NEW_CARD)
    card[fresh] = 3 * n + counters.cards + np.arange(int(fresh.sum()))
    counters.cards += int(fresh.sum())
    abuser = pop.groups["perk_abuser"][buyer]
    card = np.where(abuser, 2 * n + pop.ring_card[buyer], card)
    perk = first & (abuser | (grng.random(buyer.size) < PERK_SHARE))
    return card, perk


def _draw_orders(rng: np.random.Generator, grng: np.random.Generator, clock: Clock,
                 pop: Population, sellers: Sellers, counters: Counters, lo: int, hi: int,
                 srng: np.random.Generator | None = None) -> OrderDraw:
    """Orders of users ``lo:hi``: times, categories, prices, coupons, status, seller, card
    and new-user perk."""
    row, t = _poisson_times(rng, clock, pop.signup_h[lo:hi], pop.churn_h[lo:hi],
                            pop.order_rate[lo:hi])
    extra_buyer, extra_t = _group_orders(grng, clock, pop, lo, hi)
    buyer = np.concatenate([row + lo, extra_buyer])
    t = np.concatenate([t, extra_t])
    order = np.lexsort((t, buyer))
    buyer, t = buyer[order], t[order]
    first = np.r_[True, buyer[1:] != buyer[:-1]] if buyer.size else np.zeros(0, bool)
    category = _categories(rng, pop, buyer)
    price = _prices(rng, pop, buyer, category)
    coupon = rng.random(buyer.size) < 0.03 + 0.5 * pop.price_sensitivity[buyer] ** 2
    discount = np.where(coupon, rng.choice([0.10, 0.15, 0.20], buyer.size), 0.0)
    amount = np.round(price * (1 - discount), 2)
    u = rng.random(buyer.size)
    status = np.where(u < pop.return_propensity[buyer], 1,
                      np.where(u > 0.98, 2, 0))
    status = np.where(pop.groups["perk_abuser"][buyer], 0, status)
    seller = _draw_seller(rng, sellers, t, buyer, pop.seller_traits, srng)
    card, perk = _payment(grng, pop, buyer, first, counters)
    return OrderDraw(buyer=buyer, t=t, category=category, price=price, amount=amount,
                     seller=seller, status=status, coupon=coupon, card=card, perk=perk)


def _draw_seller(rng: np.random.Generator, sellers: Sellers, t: np.ndarray,
                 buyer: np.ndarray, traits: SellerTraits | None = None,
                 srng: np.random.Generator | None = None) -> np.ndarray:
    """A seller for each order, by Pareto weight among sellers signed up before it.

    A seller who had stopped consigning by then (``traits.stop_h``) is drawn again from the
    seller stream ``srng``, up to ``SELLER_REDRAWS`` times (so ``rng`` draws the same
    numbers whatever the seller traits are).
    """
    eligible = np.maximum(np.searchsorted(sellers.signup_h, t, side="right"), 1)
    total = sellers.cum_weight[eligible - 1]
    pos = _seller_position(sellers, rng.random(t.size) * total, eligible)
    if traits is not None and srng is not None:
        for _ in range(SELLER_REDRAWS):
            stopped = np.flatnonzero(traits.stop_h[sellers.user_index[pos]] <= t)
            if not stopped.size:
                break
            pos[stopped] = _seller_position(
                sellers, srng.random(stopped.size) * total[stopped], eligible[stopped])
    own = sellers.user_index[pos] == buyer
    pos = np.where(own & (eligible > 1), (pos + 1) % eligible, pos)
    return sellers.user_index[pos]


def _seller_position(sellers: Sellers, draw: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """The position (in signup order) of the seller whose cumulative weight covers ``draw``."""
    pos = np.searchsorted(sellers.cum_weight, draw, side="right")
    return np.minimum(pos, eligible - 1)


@dataclass
class Counters:
    """Global id counters, so ids stay unique across chunks."""

    orders: int = 0
    items: int = 0
    sessions: int = 0
    cards: int = 0


def _orders_table(draw: OrderDraw, pop: Population, clock: Clock, counters: Counters
                  ) -> tuple[pa.Table, pa.Array]:
    """The orders Arrow table of a chunk, and the item ids it sold."""
    n = draw.buyer.size
    order_ids = _ids("o", np.arange(counters.orders, counters.orders + n), 9)
    item_ids = _ids("i", np.arange(counters.items, counters.items + n), 9)
    counters.orders += n
    counters.items += n
    table = pa.table({
        "order_id": order_ids,
        "buyer_id": pop.user_id.take(pa.array(draw.buyer)),
        "ts": pa.array(clock.to_us(draw.t), pa.timestamp("us")),
        "amount": pa.array(draw.amount, pa.float64()),
        "seller_id": pop.user_id.take(pa.array(draw.seller)),
        "item_id": item_ids,
        "category": _labels(CATEGORIES, draw.category),
        "commission": pa.array(np.round(draw.amount * CATEGORY_COMMISSION[draw.category], 2)),
        "status": _labels(STATUSES, draw.status),
        "coupon_used": pa.array(draw.coupon, pa.bool_()),
        "payment_fingerprint": _ids("pf_", draw.card, 10),
        "new_user_perk": pa.array(draw.perk, pa.bool_()),
    })
    return table, item_ids


def _listings_table(rng: np.random.Generator, draw: OrderDraw, sold_items: pa.Array,
                    pop: Population, clock: Clock, counters: Counters, lo: int, hi: int,
                    srng: np.random.Generator | None = None) -> pa.Table:
    """Listings of a chunk: the items its orders bought, plus unsold items of its sellers.

    A sold item was listed by its seller after their signup and some days before the sale; a
    cancelled sale leaves the item unsold. Each seller of the chunk lists at least one item,
    and sellers list about ``UNSOLD_PER_SOLD`` unsold items per sale. With seller traits,
    days to sell scale with the seller's sell speed, unsold items are listed before the
    seller stops, and a commission-sensitive seller keeps fewer of them (thinned with the
    seller stream ``srng``; ``rng`` draws the same numbers either way).
    """
    traits = pop.seller_traits
    scale = 18.0 * traits.sell_speed(draw.seller) if traits is not None else 18.0
    days_to_sell = rng.gamma(1.2, scale, draw.t.size)
    listed_h = np.maximum(draw.t - days_to_sell * 24, pop.signup_h[draw.seller])
    sold_us = np.where(draw.status == 2, 0, clock.to_us(draw.t))
    own = np.flatnonzero(pop.is_seller[lo:hi]) + lo
    owner = np.concatenate([np.repeat(own, 1 + rng.poisson(pop.engagement[own])),
                            draw.seller[rng.random(draw.seller.size) < UNSOLD_PER_SOLD]])
    end_h = np.minimum(pop.churn_h[owner], clock.hours)
    if traits is not None:
        end_h = np.maximum(np.minimum(end_h, traits.stop_h[owner]), pop.signup_h[owner])
    unsold_h = pop.signup_h[owner] + rng.random(owner.size) * (end_h - pop.signup_h[owner])
    unsold_cat = _categories(rng, pop, owner)
    unsold_price = _prices(rng, pop, owner, unsold_cat)
    seller = np.concatenate([draw.seller, owner])
    stock = np.where(rng.random(seller.size) < 0.05, rng.integers(2, 6, seller.size), 1)
    if traits is not None and srng is not None:  # after the last draw of ``rng``
        first = np.r_[True, owner[1:] != owner[:-1]] if owner.size else np.zeros(0, bool)
        keep = first | (srng.random(owner.size) < traits.unsold_keep(owner))
        owner, unsold_h = owner[keep], unsold_h[keep]
        unsold_cat, unsold_price = unsold_cat[keep], unsold_price[keep]
        seller, stock = seller[np.r_[np.ones(draw.seller.size, bool), keep]], \
            stock[np.r_[np.ones(draw.seller.size, bool), keep]]
    unsold_ids = _ids("i", np.arange(counters.items, counters.items + owner.size), 9)
    counters.items += owner.size
    sold_ts = np.concatenate([sold_us, np.zeros(owner.size, np.int64)])
    return pa.table({
        "item_id": pa.concat_arrays([sold_items, unsold_ids]),
        "seller_id": pop.user_id.take(pa.array(seller)),
        "listed_ts": pa.array(clock.to_us(np.concatenate([listed_h, unsold_h])),
                              pa.timestamp("us")),
        "category": _labels(CATEGORIES, np.concatenate([draw.category, unsold_cat])),
        "price": pa.array(np.concatenate([draw.price, unsold_price]), pa.float64()),
        "stock": pa.array(stock.astype(np.int64)),
        "sold_ts": pa.array(sold_ts, pa.timestamp("us"), mask=sold_ts == 0),
    })


Part = dict[str, np.ndarray | pa.Array]


def _part(user: np.ndarray, t: np.ndarray, kind: np.ndarray | int, session: np.ndarray, *,
          item: pa.Array | None = None, category: np.ndarray | None = None,
          price: np.ndarray | None = None, rating: np.ndarray | None = None,
          text: np.ndarray | None = None) -> Part:
    """Events as arrays; absent fields are null (-1 category or text, NaN price or rating)."""
    n = user.size
    return {"user": user, "t": t, "kind": np.broadcast_to(np.asarray(kind), n),
            "session": session,
            "item": item if item is not None else pa.nulls(n, pa.string()),
            "category": category if category is not None else np.full(n, -1),
            "price": price if price is not None else np.full(n, np.nan),
            "rating": rating if rating is not None else np.full(n, np.nan),
            "text": text if text is not None else np.full(n, -1)}


def _sessions(counters: Counters, n: int) -> np.ndarray:
    """``n`` new session numbers, unique over the whole data set."""
    numbers = np.arange(counters.sessions, counters.sessions + n, dtype=np.int64)
    counters.sessions += n
    return numbers


def _browsed_items(rng: np.random.Generator, n: int) -> pa.Array:
    """Ids of items someone looked at that this data set's listings do not hold."""
    return _ids("v", rng.integers(0, 10**9, n), 9)


def _back_times(gaps: np.ndarray, starts: np.ndarray, size: np.ndarray, row: np.ndarray
                ) -> np.ndarray:
    """Minutes before the last event of its group for each event, from the gap after it.

    Events of group ``row[i]`` are contiguous from ``starts[g]`` for ``size[g]`` events;
    ``gaps[i]`` separates event i from event i + 1 (the last event's gap is ignored)."""
    last = starts + size - 1
    gaps = gaps.copy()
    gaps[last] = 0.0
    suffix = np.cumsum(gaps[::-1])[::-1]
    return suffix - suffix[last[row]]


def _purchase_events(rng: np.random.Generator, grng: np.random.Generator, draw: OrderDraw,
                     items: pa.Array, pop: Population, counters: Counters) -> list[Part]:
    """The session of each order: login, views of other items of the category (many for
    comparison shoppers), views of the item, add_to_cart and ``purchase`` at the order time.

    Everyone but impulse buyers first saw the item hours or days before, in a session of
    its own."""
    n = draw.t.size
    buyer = draw.buyer
    views = 1 + rng.poisson(0.6, n)
    compare = np.where(pop.groups["comparison_shopper"][buyer], 4 + grng.poisson(3.0, n),
                       grng.poisson(0.7, n))
    size = compare + views + 3
    starts = np.cumsum(size) - size
    row = np.repeat(np.arange(n), size)
    pos = np.arange(row.size) - starts[row]
    from_end = size[row] - 1 - pos
    kind = np.select([from_end == 0, from_end == 1, pos == 0], [PURCHASE, CART, LOGIN], VIEW)
    own_item = (from_end <= views[row] + 1) & (pos > 0)
    back_minutes = _back_times(grng.exponential(1.5, row.size), starts, size, row)
    t = np.maximum(draw.t[row] - back_minutes / 60.0, pop.signup_h[buyer[row]])
    item = pc.if_else(pa.array(own_item), items.take(pa.array(row)),
                      _browsed_items(grng, row.size))
    item = pc.if_else(pa.array(kind == LOGIN), pa.scalar(None, pa.string()), item)
    login = kind == LOGIN
    session = _sessions(counters, n)[row]
    parts = [_part(buyer[row], t, kind, session, item=item,
                   category=np.where(login, -1, draw.category[row]),
                   price=np.where(login | ~own_item, np.nan, draw.price[row]))]
    seen = ~pop.groups["impulse_buyer"][buyer]
    earlier = draw.t - np.exp(np.log(20.0) + 1.2 * grng.standard_normal(n))
    seen &= earlier > pop.signup_h[buyer]
    idx = np.flatnonzero(seen)
    parts.append(_part(buyer[idx], earlier[idx], VIEW, _sessions(counters, idx.size),
                       item=items.take(pa.array(idx)), category=draw.category[idx],
                       price=draw.price[idx]))
    return parts


def _texts() -> pa.Array:
    """Every review text: two different phrases of one sentiment, negative ones first."""
    texts = [f"{a}, {b}" for phrases in PHRASES for a in phrases for b in phrases if a != b]
    return pa.array(texts, pa.string())


def _texts_per_sentiment() -> int:
    return len(PHRASES[0]) * (len(PHRASES[0]) - 1)


def _after_order_events(grng: np.random.Generator, draw: OrderDraw, pop: Population,
                        hours: int, counters: Counters) -> list[Part]:
    """What follows orders: reviews (ratings by sentiment, often a text, some texts without
    a rating), complaints, shares, and a few looks at the order history."""
    n = draw.t.size
    buyer = draw.buyer
    g = pop.groups
    done = draw.status == 0
    p_review = np.select([g["silent"][buyer], g["fan"][buyer] | g["critic"][buyer]],
                         [0.0, 0.85], 0.7)
    review_t = draw.t + 24 * grng.uniform(3, 20, n)
    reviewed = np.flatnonzero(done & (grng.random(n) < p_review) & (review_t < hours))
    who = buyer[reviewed]
    stars = np.select([g["fan"][who], g["critic"][who]],
                      [_stars(grng, (0, 0, 0, 0.15, 0.85), who.size),
                       _stars(grng, (0.5, 0.4, 0.1, 0, 0), who.size)],
                      _stars(grng, (0, 0.05, 0.2, 0.4, 0.35), who.size))
    mood = np.select([stars <= 2, stars == 3], [0, 1], 2)
    texted = grng.random(who.size) < 0.6
    text = np.where(texted, mood * _texts_per_sentiment()
                    + grng.integers(0, _texts_per_sentiment(), who.size), -1)
    rating = np.where(texted & (grng.random(who.size) < 0.15), np.nan, stars.astype(float))
    parts = [_part(who, review_t[reviewed], REVIEW, _sessions(counters, who.size),
                   item=pa.nulls(who.size, pa.string()), rating=rating, text=text)]
    p_complain = np.where(g["complainer"][buyer], 0.6, 0.005)
    complain_t = draw.t + 24 * grng.uniform(1, 10, n)
    complained = np.flatnonzero((draw.status < 2) & (grng.random(n) < p_complain)
                                & (complain_t < hours))
    parts.append(_part(buyer[complained], complain_t[complained], COMPLAINT,
                       _sessions(counters, complained.size)))
    share_t = draw.t + 24 * grng.uniform(0, 5, n)
    shared = np.flatnonzero(done & (grng.random(n) < np.where(g["fan"][buyer], 0.7, 0.03))
                            & (share_t < hours))
    parts.append(_part(buyer[shared], share_t[shared], SHARE, _sessions(counters, shared.size)))
    looks = grng.poisson(0.3, n)
    row = np.repeat(np.arange(n), looks)
    look_t = draw.t[row] + 24 * grng.uniform(0, 7, row.size)
    row, look_t = row[look_t < hours], look_t[look_t < hours]
    parts.append(_part(buyer[row], look_t, HISTORY, _sessions(counters, row.size)))
    return parts


def _stars(rng: np.random.Generator, odds: tuple[float, ...], n: int) -> np.ndarray:
    """Ratings 1-5 drawn with ``odds``."""
    return 1 + _pick(rng, np.asarray(odds), n)


def _habit_events(grng: np.random.Generator, clock: Clock, pop: Population, lo: int, hi: int,
                  counters: Counters) -> list[Part]:
    """Habits of groups while they are active: re-readers open their order history, cart
    hoarders fill carts they never buy, IP jumpers browse a lot (from everywhere)."""
    parts = []
    begin, end = pop.signup_h[lo:hi], np.minimum(pop.churn_h[lo:hi], clock.hours)
    for group, rate, kind in (("history_rereader", REREAD_RATE, HISTORY),
                              ("cart_hoarder", HOARD_RATE, CART),
                              ("ip_jumper", JUMPER_EXTRA_SESSIONS, VIEW)):
        member = pop.groups[group][lo:hi]
        days = np.where(member, np.maximum(end - begin, 0.0) / 24.0, 0.0)
        count = grng.poisson(rate * days)
        row = np.repeat(np.arange(hi - lo), count)
        t = begin[row] + grng.random(row.size) * (end - begin)[row]
        user = row + lo
        category = np.where(kind == HISTORY, -1, _pick(grng, CATEGORY_SHARE, row.size))
        with_item = kind != HISTORY
        parts.append(_part(
            user, t, kind, _sessions(counters, row.size),
            item=_browsed_items(grng, row.size) if with_item else None,
            category=category,
            price=_prices(grng, pop, user, np.maximum(category, 0)) if with_item else None))
    return parts


def _browse_events(rng: np.random.Generator, grng: np.random.Generator, clock: Clock,
                   pop: Population, lo: int, hi: int, counters: Counters) -> list[Part]:
    """Browsing sessions that mostly end without a purchase (carts left, items favourited)."""
    rate = SESSION_RATE * pop.engagement[lo:hi] + 0.5 * pop.order_rate[lo:hi]
    s_row, s_t = _poisson_times(rng, clock, pop.signup_h[lo:hi], pop.churn_h[lo:hi], rate)
    size = 1 + rng.poisson(0.8, s_row.size)
    row = np.repeat(np.arange(s_row.size), size)
    first = np.repeat(np.cumsum(size) - size, size)
    pos = np.arange(row.size) - first
    kind = np.where(pos == 0, LOGIN, BROWSE_TYPES[_pick(rng, BROWSE_ODDS, row.size)])
    t = s_t[row] + pos * rng.exponential(2.0, row.size) / 60.0
    user = s_row[row] + lo
    category = _categories(rng, pop, user)
    price = _prices(rng, pop, user, category)
    with_item = np.isin(kind, [VIEW, FAVORITE, CART])
    item = pc.if_else(pa.array(with_item), _browsed_items(grng, row.size),
                      pa.scalar(None, pa.string()))
    return [_part(user, t, kind, _sessions(counters, s_row.size)[row], item=item,
                  category=np.where(with_item, category, -1),
                  price=np.where(with_item, price, np.nan))]


def _network(grng: np.random.Generator, pop: Population, user: np.ndarray,
             session: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each event's IP prefix (a /24 as an integer ``a << 16 | b << 8 | c``) and country
    index, drawn once per session: ordinary users come from home, a mobile carrier or (rarely)
    abroad; IP jumpers from anywhere."""
    sessions, first = np.unique(session, return_index=True)
    owner = user[first]
    u = grng.random(sessions.size)
    jumper = pop.groups["ip_jumper"][owner]
    away = jumper | (u < TRAVEL_SESSION)
    mobile = ~away & (u < TRAVEL_SESSION + MOBILE_SESSION)
    anywhere = grng.integers(0x200000, 0xDF0000, sessions.size)
    # A carrier hands each user one of a few prefixes of its pool.
    carrier = 0xAC1000 + (owner * 7919 + grng.integers(0, 3, sessions.size)) % 4096
    prefix = np.select([away, mobile], [anywhere, carrier], 0x0A0000 + owner)
    abroad = 1 + grng.integers(0, COUNTRIES.size - 1, sessions.size)
    country = np.where(jumper, grng.integers(0, COUNTRIES.size, sessions.size),
                       np.where(away, abroad, 0))
    at = np.searchsorted(sessions, session)
    return prefix[at], country[at]


def _prefix_text(prefix: np.ndarray) -> pa.Array:
    """``a.b.c.0/24`` for each integer prefix."""
    octets = [pa.array(((prefix >> shift) & 255).astype(np.int64)).cast(pa.string())
              for shift in (16, 8, 0)]
    return pc.binary_join_element_wise(*octets, pa.scalar("0/24"), ".")


def _events_table(grng: np.random.Generator, parts: list[Part], pop: Population,
                  clock: Clock) -> pa.Table:
    """Join event parts into one table sorted by user then time."""
    def cat(key: str) -> np.ndarray:
        return np.concatenate([np.asarray(p[key]) for p in parts])

    user, t, kind = cat("user"), cat("t"), cat("kind")
    order = np.lexsort((t, user))
    order = order[t[order] < clock.hours]  # sessions running past the end are cut there
    user, session = user[order], cat("session")[order]
    category, price = cat("category")[order], cat("price")[order]
    rating, text = cat("rating")[order], cat("text")[order]
    item = pa.concat_arrays([p["item"] for p in parts]).take(pa.array(order))
    prefix, country = _network(grng, pop, user, session)
    no_item = np.isnan(price)
    return pa.table({
        "user_id": pop.user_id.take(pa.array(user)),
        "ts": pa.array(clock.to_us(t[order]), pa.timestamp("us")),
        "type": _labels(EVENT_TYPES, kind[order]),
        "item_id": item,
        "category": pc.if_else(pa.array(category < 0), pa.scalar(None, pa.string()),
                               _labels(CATEGORIES, np.maximum(category, 0))),
        "price": pa.array(np.where(no_item, 0.0, price), pa.float64(), mask=no_item),
        "session_id": _ids("s", session, 10),
        "ip_prefix": _prefix_text(prefix),
        "country": _labels(COUNTRIES, country),
        "rating": pa.array(rating, pa.float64(), mask=np.isnan(rating)),
        "text": pc.if_else(pa.array(text < 0), pa.scalar(None, pa.string()),
                           _texts().take(pa.array(np.maximum(text, 0)))),
    })


def _listing_starts_table(pop: Population, clock: Clock, counters: Counters, lo: int, hi: int
                          ) -> pa.Table:
    """The ``listing_started`` events of the chunk's prospects (one each, never finished),
    in the events table's schema, from home (no draw of any stream)."""
    traits = pop.seller_traits
    user = np.flatnonzero(traits.prospect[lo:hi]) + lo
    user = user[traits.prospect_h[user] < clock.hours]
    n = user.size
    return pa.table({
        "user_id": pop.user_id.take(pa.array(user)),
        "ts": pa.array(clock.to_us(traits.prospect_h[user]), pa.timestamp("us")),
        "type": pa.array(["listing_started"] * n, pa.string()),
        "item_id": pa.nulls(n, pa.string()),
        "category": pa.nulls(n, pa.string()),
        "price": pa.nulls(n, pa.float64()),
        "session_id": _ids("s", _sessions(counters, n), 10),
        "ip_prefix": _prefix_text(0x0A0000 + user),
        "country": _labels(COUNTRIES, np.zeros(n, np.int64)),
        "rating": pa.nulls(n, pa.float64()),
        "text": pa.nulls(n, pa.string()),
    })


def _seller_traits_table(pop: Population, clock: Clock) -> pa.Table:
    """Latent seller traits of the consignors and the prospects (never a model input)."""
    traits = pop.seller_traits
    rows = np.flatnonzero(pop.is_seller | traits.prospect)
    stop = traits.stop_h[rows]
    return pa.table({
        "user_id": pop.user_id.take(pa.array(rows)),
        "is_seller": pa.array(pop.is_seller[rows]),
        "prospect": pa.array(traits.prospect[rows]),
        "commission_sensitivity": pa.array(traits.commission_sensitivity[rows]),
        "guidance_response": pa.array(traits.guidance_response[rows]),
        "churn_hazard": pa.array(np.where(pop.is_seller[rows], traits.churn_hazard[rows],
                                          np.nan)),
        "volume": pa.array(traits.volume[rows]),
        "seller_churn_ts": pa.array(clock.to_us(np.where(stop < clock.hours, stop, 0.0)),
                                    pa.timestamp("us"), mask=stop >= clock.hours),
    })


def _users_table(pop: Population, clock: Clock) -> pa.Table:
    return pa.table({
        "user_id": pop.user_id,
        "signup_ts": pa.array(clock.to_us(pop.signup_h), pa.timestamp("us")),
        "region": _labels(REGIONS, pop.region),
        "channel": _labels(CHANNELS, pop.channel),
        "timezone": _labels(REGION_TZ, pop.region),
        "acquisition_cost": pa.array(pop.acquisition_cost, pa.float64()),
        "is_student": pa.array(pop.is_student),
        "self_excluded_from_credit": pa.array(pop.self_excluded_from_credit),
    })


def _preferences_table(rng: np.random.Generator, pop: Population, clock: Clock) -> pa.Table:
    """Consent flags: most users allow personalisation, fewer allow each marketing channel."""
    n = pop.signup_h.size
    updated_h = pop.signup_h + rng.exponential(30.0, n) * 24
    return pa.table({
        "user_id": pop.user_id,
        "personalization": pa.array(rng.random(n) >= 0.07),
        "marketing_email": pa.array(rng.random(n) < 0.70),
        "marketing_sms": pa.array(rng.random(n) < 0.30),
        "marketing_push": pa.array(rng.random(n) < 0.50),
        "updated_ts": pa.array(clock.to_us(np.minimum(updated_h, clock.hours - 1e-3)),
                               pa.timestamp("us")),
    })


def _traits_table(pop: Population, clock: Clock) -> pa.Table:
    """Latent traits (ground truth for the simulator; never a model input)."""
    return pa.table({
        "user_id": pop.user_id,
        "price_sensitivity": pa.array(pop.price_sensitivity),
        "brand_focus": pa.array(pop.brand_focus),
        "installment_affinity": pa.array(pop.installment_affinity),
        "spend_level": pa.array(pop.spend_level),
        "is_seller": pa.array(pop.is_seller),
        "engagement": pa.array(pop.engagement),
        "return_propensity": pa.array(pop.return_propensity),
        **{name: pa.array(flags) for name, flags in pop.groups.items()},
        "churn_ts": pa.array(clock.to_us(pop.churn_h), pa.timestamp("us"),
                             mask=pop.churn_h >= clock.hours),
    })


class _Writers:
    """One Parquet writer per chunked table; each chunk becomes a row group."""

    def __init__(self, raw_dir: Path):
        self.raw_dir = raw_dir
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.rows: dict[str, int] = {}

    def write(self, name: str, table: pa.Table) -> None:
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(self.raw_dir / f"{name}.parquet", table.schema)
            self.rows[name] = 0
        self.writers[name].write_table(table)
        self.rows[name] += table.num_rows

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _check_args(n_users: int, days: int) -> None:
    if n_users < 1:
        raise ValidationFailed(f"users must be at least 1, got {n_users}", field="users")
    if days < 1:
        raise ValidationFailed(f"days must be at least 1, got {days}", field="days")


def synthesize(n_users: int, days: int, seed: int, raw_dir: Path, latent_dir: Path,
               start: date = date(2024, 1, 1)) -> SynthSummary:
    """Write the five raw tables to ``raw_dir`` and the latent traits to ``latent_dir``.

    All timestamps fall in ``[start, start + days)``. The same arguments give the same files.
    """
    _check_args(n_users, days)
    began = time.perf_counter()
    raw_dir, latent_dir = Path(raw_dir), Path(latent_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    latent_dir.mkdir(parents=True, exist_ok=True)
    clock = make_clock(start, days)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    pop = _draw_population(n_users, days, rng,
                           np.random.default_rng(np.random.SeedSequence([seed, 2])))
    _draw_credit_flags(pop, seed)
    sellers = _draw_sellers(pop, rng)
    pop.seller_traits = _draw_seller_traits(pop, sellers, seed)
    writers = _Writers(raw_dir)
    counters = Counters()
    try:
        writers.write("users", _users_table(pop, clock))
        writers.write("preferences", _preferences_table(rng, pop, clock))
        for chunk, lo in enumerate(range(0, n_users, CHUNK_USERS)):
            hi = min(lo + CHUNK_USERS, n_users)
            crng = np.random.default_rng(np.random.SeedSequence([seed, 1, chunk]))
            grng = np.random.default_rng(np.random.SeedSequence([seed, 3, chunk]))
            srng = np.random.default_rng(np.random.SeedSequence([seed, 5, chunk]))
            draw = _draw_orders(crng, grng, clock, pop, sellers, counters, lo, hi, srng)
            orders, items = _orders_table(draw, pop, clock, counters)
            writers.write("orders", orders)
            writers.write("listings", _listings_table(crng, draw, items, pop, clock, counters,
                                                      lo, hi, srng))
            parts = [*_purchase_events(crng, grng, draw, items, pop, counters),
                     *_browse_events(crng, grng, clock, pop, lo, hi, counters),
                     *_after_order_events(grng, draw, pop, clock.hours, counters),
                     *_habit_events(grng, clock, pop, lo, hi, counters)]
            writers.write("events", _events_table(grng, parts, pop, clock))
            writers.write("events", _listing_starts_table(pop, clock, counters, lo, hi))
    finally:
        writers.close()
    pq.write_table(_traits_table(pop, clock), latent_dir / USER_TRAITS_FILE)
    pq.write_table(_seller_traits_table(pop, clock), latent_dir / SELLER_TRAITS_FILE)
    return SynthSummary(n_users=n_users, days=days, seed=seed, start=start, raw_dir=raw_dir,
                        latent_dir=latent_dir, rows={t: writers.rows[t] for t in TABLES},
                        seconds=round(time.perf_counter() - began, 3))


# What each group's tag (config features.tags / features.risk_rules) should find, and how
# much of it a user must have shown before as_of for the group to be recoverable at all.
GROUP_TAGS = {
    "card_switching": "card_switcher", "ip_jumping": "ip_jumper", "perk_abuser": "perk_abuser",
    "serial_returner": "serial_returner", "impulse_buyer": "impulse_buyer",
    "comparison_shopper": "comparison_shopper", "order_history_rereader": "history_rereader",
    "cart_hoarder": "cart_hoarder", "fan": "fan", "critic": "critic",
    "silent_majority": "silent", "complaint_escalation": "complainer",
    "high_spend_and_complaining": "complainer",
}
EVIDENCE = {
    "card_switching": "3 or more orders in the 30 days before as_of",
    "ip_jumping": "3 or more sessions in the 30 days before as_of",
    "perk_abuser": "the perk order 30 or more days before as_of",
    "serial_returner": "4 or more completed or returned orders before as_of",
    "impulse_buyer": "2 or more purchases in the 365 days before as_of",
    "comparison_shopper": "2 or more purchases in the 365 days before as_of",
    "order_history_rereader": "signed up 30 or more days before as_of, still active",
    "cart_hoarder": "signed up 60 or more days before as_of, still active",
    "fan": "3 or more completed orders in the 365 days before as_of",
    "critic": "3 or more completed orders in the 365 days before as_of",
    "silent_majority": "3 or more completed orders in the 365 days before as_of",
    "complaint_escalation": "4 or more completed or returned orders in the 365 days before "
                            "as_of",
    "high_spend_and_complaining": "as complaint_escalation, and 1,000 or more spent in the 365 "
                                  "days before as_of",
}


def group_truth(raw_dir: Path, latent_dir: Path, as_of: date) -> tuple[pd.DataFrame,
                                                                       pd.DataFrame]:
    """The latent truth of every group tag at ``as_of`` for the users signed up before it.

    Returns ``(trait, evidence)``: boolean frames indexed by user_id with one column per tag
    of :data:`GROUP_TAGS`. ``trait`` is the latent flag (a tagged user with it is right);
    ``trait & evidence`` is who the tag should find (:data:`EVIDENCE` says what a user must
    have shown before as_of, e.g. a card switcher who ordered once in the month cannot be
    seen switching).
    """
    end = pd.Timestamp(as_of)
    users = pd.read_parquet(Path(raw_dir) / "users.parquet", columns=["user_id", "signup_ts"])
    traits = pd.read_parquet(Path(latent_dir) / USER_TRAITS_FILE).set_index("user_id")
    users = users[users["signup_ts"] < end].set_index("user_id")
    orders = pd.read_parquet(Path(raw_dir) / "orders.parquet",
                             columns=["buyer_id", "ts", "amount", "status", "new_user_perk"])
    orders = orders[orders["ts"] < end]
    events = pd.read_parquet(Path(raw_dir) / "events.parquet",
                             columns=["user_id", "ts", "type", "session_id"])
    events = events[(events["ts"] < end) & (events["ts"] >= end - pd.Timedelta(days=365))]

    def count(frame: pd.DataFrame, key: str, days: int | None = None) -> pd.Series:
        if days is not None:
            frame = frame[frame["ts"] >= end - pd.Timedelta(days=days)]
        return frame.groupby(key).size().reindex(users.index, fill_value=0)

    done = orders[orders["status"] == "completed"]
    kept = orders[orders["status"] != "cancelled"]
    spend = done[done["ts"] >= end - pd.Timedelta(days=365)].groupby("buyer_id")["amount"] \
        .sum().reindex(users.index, fill_value=0.0)
    perk_ts = orders[orders["new_user_perk"]].groupby("buyer_id")["ts"].min() \
        .reindex(users.index)
    sessions = events[events["ts"] >= end - pd.Timedelta(days=30)] \
        .groupby("user_id")["session_id"].nunique().reindex(users.index, fill_value=0)
    purchases = count(events[events["type"] == "purchase"], "user_id")
    tenure = end - users["signup_ts"]
    churn = traits["churn_ts"].reindex(users.index)
    active = churn.isna() | (churn > end)
    complaints_seen = count(kept, "buyer_id", 365) >= 4
    evidence = pd.DataFrame({
        "card_switching": count(orders, "buyer_id", 30) >= 3,
        "ip_jumping": sessions >= 3,
        "perk_abuser": perk_ts <= end - pd.Timedelta(days=30),
        "serial_returner": count(kept, "buyer_id") >= 4,
        "impulse_buyer": purchases >= 2,
        "comparison_shopper": purchases >= 2,
        "order_history_rereader": (tenure >= pd.Timedelta(days=30)) & active,
        "cart_hoarder": (tenure >= pd.Timedelta(days=60)) & active,
        "fan": count(done, "buyer_id", 365) >= 3,
        "critic": count(done, "buyer_id", 365) >= 3,
        "silent_majority": count(done, "buyer_id", 365) >= 3,
        "complaint_escalation": complaints_seen,
        "high_spend_and_complaining": complaints_seen & (spend >= 1000),
    }, index=users.index)
    flags = traits.reindex(users.index)
    trait = pd.DataFrame({tag: flags[name].astype(bool) for tag, name in GROUP_TAGS.items()},
                         index=users.index)
    trait["high_spend_and_complaining"] &= spend >= 1000
    return trait, evidence.fillna(False).astype(bool)
