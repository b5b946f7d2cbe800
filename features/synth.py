"""A synthetic consignment marketplace: the five raw tables plus the latent user traits.

Why: every later stage (features, models, bandit simulator) needs realistic data with known
ground truth, at sizes from a unit test (2,000 users) to the 1M-user benchmark.

How it behaves:

- Users sign up over the whole period (a platform that grows); about 15% are consignors.
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

Everything is vectorised numpy over chunks of users, written as Parquet row groups, so 1M
users x 730 days fits in bounded memory. The same seed gives the same files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from features.contract import LUXURY_CATEGORIES
from nextbest.errors import ValidationFailed

TABLES = ("users", "orders", "listings", "events", "preferences")
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

EVENT_TYPES = np.array(["view", "favorite", "add_to_cart", "search", "follow", "login", "share",
                        "review"])
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
SELLER_PARETO_ALPHA = 1.16  # the Pareto index that gives the 80/20 rule
QUIET_DAYS = 60
QUIET_KEEP = 0.35
UNSOLD_PER_SOLD = 0.5


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


@dataclass
class Sellers:
    """Consignors sorted by signup, with cumulative Pareto weights for sampling."""

    user_index: np.ndarray
    signup_h: np.ndarray
    cum_weight: np.ndarray


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


def _draw_population(n: int, days: int, rng: np.random.Generator) -> Population:
    """Every user's signup, traits, churn time and rates (vectorised over users)."""
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
    return Population(
        user_id=_ids("u", np.arange(n), width),
        signup_h=signup_h, churn_h=churn_h,
        region=_pick(rng, REGION_SHARE, n), channel=_pick(rng, CHANNEL_SHARE, n),
        price_sensitivity=price_sensitivity, brand_focus=brand_focus,
        installment_affinity=installment_affinity, spend_level=spend_level,
        engagement=engagement, return_propensity=return_propensity, is_seller=is_seller,
        favorite_category=_pick(rng, CATEGORY_SHARE, n), order_rate=order_rate,
    )


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


def _draw_orders(rng: np.random.Generator, clock: Clock, pop: Population, sellers: Sellers,
                 lo: int, hi: int) -> OrderDraw:
    """Orders of users ``lo:hi``: times, categories, prices, coupons, status and seller."""
    row, t = _poisson_times(rng, clock, pop.signup_h[lo:hi], pop.churn_h[lo:hi],
                            pop.order_rate[lo:hi])
    buyer = row + lo
    category = _categories(rng, pop, buyer)
    price = _prices(rng, pop, buyer, category)
    coupon = rng.random(buyer.size) < 0.03 + 0.5 * pop.price_sensitivity[buyer] ** 2
    discount = np.where(coupon, rng.choice([0.10, 0.15, 0.20], buyer.size), 0.0)
    amount = np.round(price * (1 - discount), 2)
    u = rng.random(buyer.size)
    status = np.where(u < pop.return_propensity[buyer], 1,
                      np.where(u > 0.98, 2, 0))
    seller = _draw_seller(rng, sellers, t, buyer)
    return OrderDraw(buyer=buyer, t=t, category=category, price=price, amount=amount,
                     seller=seller, status=status, coupon=coupon)


def _draw_seller(rng: np.random.Generator, sellers: Sellers, t: np.ndarray,
                 buyer: np.ndarray) -> np.ndarray:
    """A seller for each order, by Pareto weight among sellers signed up before it."""
    eligible = np.maximum(np.searchsorted(sellers.signup_h, t, side="right"), 1)
    total = sellers.cum_weight[eligible - 1]
    pos = np.searchsorted(sellers.cum_weight, rng.random(t.size) * total, side="right")
    pos = np.minimum(pos, eligible - 1)
    own = sellers.user_index[pos] == buyer
    pos = np.where(own & (eligible > 1), (pos + 1) % eligible, pos)
    return sellers.user_index[pos]


@dataclass
class Counters:
    """Global id counters, so ids stay unique across chunks."""

    orders: int = 0
    items: int = 0


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
    })
    return table, item_ids


def _listings_table(rng: np.random.Generator, draw: OrderDraw, sold_items: pa.Array,
                    pop: Population, clock: Clock, counters: Counters, lo: int, hi: int
                    ) -> pa.Table:
    """Listings of a chunk: the items its orders bought, plus unsold items of its sellers.

    A sold item was listed by its seller after their signup and some days before the sale; a
    cancelled sale leaves the item unsold. Each seller of the chunk lists at least one item,
    and sellers list about ``UNSOLD_PER_SOLD`` unsold items per sale.
    """
    days_to_sell = rng.gamma(1.2, 18.0, draw.t.size)
    listed_h = np.maximum(draw.t - days_to_sell * 24, pop.signup_h[draw.seller])
    sold_us = np.where(draw.status == 2, 0, clock.to_us(draw.t))
    own = np.flatnonzero(pop.is_seller[lo:hi]) + lo
    owner = np.concatenate([np.repeat(own, 1 + rng.poisson(pop.engagement[own])),
                            draw.seller[rng.random(draw.seller.size) < UNSOLD_PER_SOLD]])
    end_h = np.minimum(pop.churn_h[owner], clock.hours)
    unsold_h = pop.signup_h[owner] + rng.random(owner.size) * (end_h - pop.signup_h[owner])
    unsold_cat = _categories(rng, pop, owner)
    unsold_price = _prices(rng, pop, owner, unsold_cat)
    unsold_ids = _ids("i", np.arange(counters.items, counters.items + owner.size), 9)
    counters.items += owner.size
    seller = np.concatenate([draw.seller, owner])
    sold_ts = np.concatenate([sold_us, np.zeros(owner.size, np.int64)])
    stock = np.where(rng.random(seller.size) < 0.05, rng.integers(2, 6, seller.size), 1)
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


def _purchase_events(rng: np.random.Generator, draw: OrderDraw, items: pa.Array,
                     pop: Population, hours: int) -> dict[str, np.ndarray | pa.Array]:
    """Events leading to each order: login, 1-3 views of the item, add_to_cart; some reviews."""
    n = draw.t.size
    views = 1 + rng.poisson(0.6, n)
    per_order = views + 2
    row = np.repeat(np.arange(n), per_order)
    first = np.repeat(np.cumsum(per_order) - per_order, per_order)
    pos = np.arange(row.size) - first
    last = pos == per_order[row] - 1
    kind = np.where(pos == 0, 5, np.where(last, 2, 0))
    back_minutes = (per_order[row] - pos) * rng.exponential(3.0, n)[row]
    t = np.maximum(draw.t[row] - back_minutes / 60.0, pop.signup_h[draw.buyer[row]])
    review_t = draw.t + 24 * rng.uniform(3, 20, n)
    reviewed = np.flatnonzero((draw.status == 0) & (rng.random(n) < 0.1) & (review_t < hours))
    row = np.concatenate([row, reviewed])
    kind = np.concatenate([kind, np.full(reviewed.size, 7)])
    t = np.concatenate([t, review_t[reviewed]])
    login = kind == 5
    item = pc.if_else(pa.array(login), pa.scalar(None, pa.string()), items.take(pa.array(row)))
    return {"user": draw.buyer[row], "t": t, "kind": kind, "item": item,
            "category": np.where(login, -1, draw.category[row]),
            "price": np.where(login, np.nan, draw.price[row])}


def _browse_events(rng: np.random.Generator, clock: Clock, pop: Population, lo: int, hi: int
                   ) -> dict[str, np.ndarray | pa.Array]:
    """Browsing sessions that mostly end without a purchase (carts left, items favourited)."""
    rate = SESSION_RATE * pop.engagement[lo:hi] + 0.5 * pop.order_rate[lo:hi]
    s_row, s_t = _poisson_times(rng, clock, pop.signup_h[lo:hi], pop.churn_h[lo:hi], rate)
    size = 1 + rng.poisson(0.8, s_row.size)
    row = np.repeat(np.arange(s_row.size), size)
    first = np.repeat(np.cumsum(size) - size, size)
    pos = np.arange(row.size) - first
    kind = np.where(pos == 0, 5, BROWSE_TYPES[_pick(rng, BROWSE_ODDS, row.size)])
    t = s_t[row] + pos * rng.exponential(2.0, row.size) / 60.0
    user = s_row[row] + lo
    category = _categories(rng, pop, user)
    price = _prices(rng, pop, user, category)
    with_item = np.isin(kind, [0, 1, 2])
    return {"user": user, "t": t, "kind": kind,
            "item": pa.nulls(row.size, pa.string()),
            "category": np.where(with_item, category, -1),
            "price": np.where(with_item, price, np.nan)}


def _events_table(parts: list[dict[str, np.ndarray | pa.Array]], pop: Population,
                  clock: Clock) -> pa.Table:
    """Join event parts into one table sorted by user then time."""
    user = np.concatenate([p["user"] for p in parts])
    t = np.concatenate([p["t"] for p in parts])
    kind = np.concatenate([p["kind"] for p in parts])
    category = np.concatenate([p["category"] for p in parts])
    price = np.concatenate([p["price"] for p in parts])
    item = pa.concat_arrays([p["item"] for p in parts])
    order = np.lexsort((t, user))
    order = order[t[order] < clock.hours]  # sessions running past the end are cut there
    category = category[order]
    price = price[order]
    no_item = np.isnan(price)
    return pa.table({
        "user_id": pop.user_id.take(pa.array(user[order])),
        "ts": pa.array(clock.to_us(t[order]), pa.timestamp("us")),
        "type": _labels(EVENT_TYPES, kind[order]),
        "item_id": item.take(pa.array(order)),
        "category": pc.if_else(pa.array(category < 0), pa.scalar(None, pa.string()),
                               _labels(CATEGORIES, np.maximum(category, 0))),
        "price": pa.array(np.where(no_item, 0.0, price), pa.float64(), mask=no_item),
    })


def _users_table(pop: Population, clock: Clock) -> pa.Table:
    return pa.table({
        "user_id": pop.user_id,
        "signup_ts": pa.array(clock.to_us(pop.signup_h), pa.timestamp("us")),
        "region": _labels(REGIONS, pop.region),
        "channel": _labels(CHANNELS, pop.channel),
        "timezone": _labels(REGION_TZ, pop.region),
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
    pop = _draw_population(n_users, days, rng)
    sellers = _draw_sellers(pop, rng)
    writers = _Writers(raw_dir)
    counters = Counters()
    try:
        writers.write("users", _users_table(pop, clock))
        writers.write("preferences", _preferences_table(rng, pop, clock))
        for chunk, lo in enumerate(range(0, n_users, CHUNK_USERS)):
            hi = min(lo + CHUNK_USERS, n_users)
            crng = np.random.default_rng(np.random.SeedSequence([seed, 1, chunk]))
            draw = _draw_orders(crng, clock, pop, sellers, lo, hi)
            orders, items = _orders_table(draw, pop, clock, counters)
            writers.write("orders", orders)
            writers.write("listings",
                          _listings_table(crng, draw, items, pop, clock, counters, lo, hi))
            parts = [_purchase_events(crng, draw, items, pop, clock.hours),
                     _browse_events(crng, clock, pop, lo, hi)]
            writers.write("events", _events_table(parts, pop, clock))
    finally:
        writers.close()
    pq.write_table(_traits_table(pop, clock), latent_dir / "user_traits.parquet")
    return SynthSummary(n_users=n_users, days=days, seed=seed, start=start, raw_dir=raw_dir,
                        latent_dir=latent_dir, rows={t: writers.rows[t] for t in TABLES},
                        seconds=round(time.perf_counter() - began, 3))
