"""The point-in-time feature definition, written once as ibis expressions.

:func:`feature_table` turns the raw tables of one backend into one row per user with the
feature columns of docs/CONTRACT.md. It is pure ibis, so the same definition runs on DuckDB
and on Spark. Point-in-time: every table is filtered to ``ts < as_of`` before anything is
aggregated (a listing sold on or after ``as_of`` counts as unsold), so rows appended later
can never change the result.

All aggregation happens in the engine (a few grouped passes per table, then left joins on
user_id); only the one-row-per-user result reaches pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

import ibis
import ibis.expr.types as ir

from features.contract import LUXURY_CATEGORIES
from features.engines import RawTables

EPOCH = datetime(1970, 1, 1)
DAY_US = 86_400_000_000.0
COMPLETED = "completed"
RETURNED = "returned"
# More than the number of distinct categories: see _category_counts.
CATEGORY_SLOTS = 1_000_000
# Event counts per window: feature prefix -> event type.
EVENT_KINDS = {"views": "view", "favorites": "favorite", "carts": "add_to_cart",
               "searches": "search"}
# Counts of the group features (0 when the source table or column is absent).
ACTIVITY_COUNTS = ("ip_prefixes_24h", "ip_prefixes_30d", "countries_24h", "countries_30d",
                   "reviews_365d", "complaints_365d", "shares_365d", "order_history_views_30d",
                   "purchases_viewed_365d", "carted_not_bought_90d")
GROUP_FEATURES = ("payment_fingerprints_30d", "fingerprint_accounts", "new_user_perks",
                  "purchases_after_perk", "perk_age_days", "returns_total", *ACTIVITY_COUNTS,
                  "rating_mean_365d", "complaint_rate_365d", "minutes_to_buy_median",
                  "compare_items_per_purchase")

# Users' attributes that only the policy layer reads (never a model input): null when the
# platform does not say (decisions/policy.py, policy.no_credit_when).
POLICY_FLAGS = ("is_student", "self_excluded_from_credit")

CATEGORICAL = ("region", "channel", "top_category")

# Seller side (consignment). A listing unsold this many days after it was listed is stale.
STALE_LISTING_DAYS = 60
# A completed purchase in a category that holds its value (features.contract
# LUXURY_CATEGORIES), kept at least this many days, is an item its buyer could consign.
RESELLABLE_AFTER_DAYS = 90
LISTING_STARTED = "listing_started"
# Seller counts (0 without listings or sales) besides the per-window ``listings_{w}d`` and
# ``sales_{w}d``.
SELLER_COUNTS = ("stale_listings", "listings_started_365d", "unfinished_listings",
                 "resellable_items")


def seller_inputs(windows: Sequence[int]) -> list[str]:
    """The seller-side columns, which the seller churn model adds to :func:`model_inputs`
    (the buyer models keep to those): seller R (days since the last listing or sale, days
    since the last listing), F (listings and sales per window) and M (sold value and
    commission), and the listing pipeline (stale, started, unfinished, resellable)."""
    ws = with_30_days(windows)
    cols = ["seller_recency_days", "days_since_listing"]
    cols += [f"listings_{w}d" for w in ws] + [f"sales_{w}d" for w in ws]
    return cols + ["sold_value_total", "sold_value_365d", "commission_365d", *SELLER_COUNTS]


def with_30_days(windows: Sequence[int]) -> list[int]:
    """The windows to compute: the configured ones plus 30 days, which the contract needs."""
    return sorted(set(windows) | {30})


def model_inputs(windows: Sequence[int]) -> list[str]:
    """The model-input columns of :func:`feature_table` (numeric, then categorical) in a
    fixed order; the other columns it returns are :func:`seller_inputs` (model inputs of
    the seller churn model only) and :data:`GROUP_FEATURES` (no model input)."""
    ws = with_30_days(windows)
    cols = ["tenure_days", "recency_days", "frequency_total", "monetary_total"]
    cols += [f"frequency_{w}d" for w in ws] + [f"monetary_{w}d" for w in ws]
    cols += ["aov", "spend_trend", "days_since_login"]
    for kind in EVENT_KINDS:
        cols += [f"{kind}_{w}d" for w in ws]
    cols += ["browse_to_buy_30d", "cart_abandonments_30d", "category_entropy", "return_rate",
             "coupon_share", "items_listed", "items_sold", "sell_through_rate", "days_to_sell",
             "commission_paid", "is_seller", "first_purchase_days", "frequency_prev_90d"]
    return cols + list(CATEGORICAL)


def _ts(moment: datetime) -> ir.TimestampScalar:
    return ibis.timestamp(moment)


def _epoch_us(ts: ir.TimestampValue) -> ir.IntegerValue:
    """Microseconds since 1970 of a timestamp column.

    Exact on every engine (Spark's ``unix_timestamp`` would drop the fraction of a second).
    """
    return ts.delta(_ts(EPOCH), unit="microsecond")


def _as_of_us(as_of: datetime) -> int:
    """``as_of`` in microseconds since 1970."""
    return (as_of - EPOCH) // timedelta(microseconds=1)


def _days_since(as_of: datetime, epoch_us: ir.NumericValue) -> ir.FloatingValue:
    """Days from a microseconds-since-1970 column to ``as_of``."""
    return (ibis.literal(_as_of_us(as_of)) - epoch_us) / DAY_US


def _order_aggregates(orders: ir.Table, as_of: datetime, windows: Sequence[int]) -> ir.Table:
    """Per buyer: purchases over all time and per window, returns, coupons, spend trend."""
    done = orders.status == COMPLETED
    aggs: dict[str, ir.Value] = {
        "frequency_total": orders.count(where=done),
        "monetary_total": orders.amount.sum(where=done),
        "last_order_epoch": _epoch_us(orders.ts).max(where=done),
        "returned_orders": orders.count(where=orders.status == RETURNED),
        "coupon_orders": orders.count(where=done & orders.coupon_used),
        "spend_prev_30d": orders.amount.sum(
            where=done & (orders.ts >= _ts(as_of - timedelta(days=60)))
            & (orders.ts < _ts(as_of - timedelta(days=30)))),
        "frequency_prev_90d": orders.count(
            where=done & (orders.ts >= _ts(as_of - timedelta(days=180)))
            & (orders.ts < _ts(as_of - timedelta(days=90)))),
        "first_order_epoch": _epoch_us(orders.ts).min(where=done),
        "resellable_items": orders.count(
            where=done & orders.category.isin(sorted(LUXURY_CATEGORIES))
            & (orders.ts < _ts(as_of - timedelta(days=RESELLABLE_AFTER_DAYS)))),
    }
    for w in windows:
        recent = done & (orders.ts >= _ts(as_of - timedelta(days=w)))
        aggs[f"frequency_{w}d"] = orders.count(where=recent)
        aggs[f"monetary_{w}d"] = orders.amount.sum(where=recent)
    return orders.group_by(user_id=orders.buyer_id).aggregate(**aggs)


def _event_aggregates(events: ir.Table, as_of: datetime, windows: Sequence[int]) -> ir.Table:
    """Per user: the last event of any type and event counts per kind and window.

    Each event is first reduced to a small kind code and its age in microseconds, so the
    kind x window counts compare integers instead of matching strings once per count
    (about a third less work on tens of millions of events).
    """
    kinds = list(EVENT_KINDS.values())
    coded = events.select(
        "user_id", epoch_us=_epoch_us(events.ts),
        kind=events.type.cases(*[(name, code) for code, name in enumerate(kinds)], else_=-1))
    age_us = ibis.literal(_as_of_us(as_of)) - coded.epoch_us
    aggs: dict[str, ir.Value] = {"last_event_epoch": coded.epoch_us.max()}
    for code, prefix in enumerate(EVENT_KINDS):
        for w in windows:
            aggs[f"{prefix}_{w}d"] = coded.count(
                where=(coded.kind == code) & (age_us <= int(w * DAY_US)))
    return coded.group_by("user_id").aggregate(**aggs)


def _payment_aggregates(orders: ir.Table, as_of: datetime) -> ir.Table:
    """Per buyer: distinct payment fingerprints in the last 30 days, and the most accounts
    any of the buyer's fingerprints was used by (one card behind many accounts)."""
    paid = orders.filter(orders.payment_fingerprint.notnull())
    recent = paid.ts >= _ts(as_of - timedelta(days=30))
    per_user = paid.group_by(user_id=paid.buyer_id).aggregate(
        payment_fingerprints_30d=paid.payment_fingerprint.nunique(where=recent))
    accounts = paid.group_by("payment_fingerprint").aggregate(accounts=paid.buyer_id.nunique())
    used = paid.select(user_id=paid.buyer_id, fingerprint=paid.payment_fingerprint).distinct()
    shared = used.join(accounts, used.fingerprint == accounts.payment_fingerprint)
    most = shared.group_by("user_id").aggregate(fingerprint_accounts=shared.accounts.max())
    return per_user.left_join(most, "user_id").drop("user_id_right")


def _perk_aggregates(orders: ir.Table) -> ir.Table:
    """Per buyer: new-user perks taken, when the first was, and completed orders after it."""
    perks = orders.filter(orders.new_user_perk)
    first = perks.group_by(user_id=perks.buyer_id).aggregate(
        new_user_perks=perks.count(), first_perk_epoch=_epoch_us(perks.ts).min())
    done = orders.filter(orders.status == COMPLETED)
    later = done.join(first, done.buyer_id == first.user_id)
    after = later.group_by("user_id").aggregate(
        purchases_after_perk=later.count(where=_epoch_us(later.ts) > later.first_perk_epoch))
    return first.left_join(after, "user_id").drop("user_id_right")


def _activity_aggregates(events: ir.Table, as_of: datetime) -> ir.Table:
    """Per user over the last 365 days of events: where they came from (distinct IP prefixes
    and countries in 24 hours and 30 days), reviews, complaints, shares and looks at their
    order history."""
    recent = events.filter(events.ts >= _ts(as_of - timedelta(days=365)))
    day = recent.ts >= _ts(as_of - timedelta(days=1))
    month = recent.ts >= _ts(as_of - timedelta(days=30))
    review = recent.type == "review"
    return recent.group_by("user_id").aggregate(
        ip_prefixes_24h=recent.ip_prefix.nunique(where=day),
        ip_prefixes_30d=recent.ip_prefix.nunique(where=month),
        countries_24h=recent.country.nunique(where=day),
        countries_30d=recent.country.nunique(where=month),
        reviews_365d=recent.count(where=review),
        complaints_365d=recent.count(where=recent.type == "complaint"),
        shares_365d=recent.count(where=recent.type == "share"),
        order_history_views_30d=recent.count(where=month & (recent.type == "order_history")))


def _ratings(events: ir.Table, scores: ir.Table | None, as_of: datetime) -> ir.Table:
    """Per user: the mean rating of their reviews of the last 365 days, the stars they gave
    and, where a review came with a text only, the rating the sentiment model estimated."""
    since = _ts(as_of - timedelta(days=365))
    given = events.filter((events.type == "review") & events.rating.notnull()
                          & (events.ts >= since))
    ratings = given.select("user_id", rating=given.rating.cast("float64"))
    if scores is not None:
        estimated = scores.filter((scores.ts < _ts(as_of)) & (scores.ts >= since)
                                  & scores.rating.notnull())
        ratings = ratings.union(estimated.select("user_id",
                                                 rating=estimated.rating.cast("float64")),
                                distinct=False)
    return ratings.group_by("user_id").aggregate(rating_mean_365d=ratings.rating.mean())


def _purchase_paths(events: ir.Table, as_of: datetime) -> ir.Table:
    """Per user, over purchase events of the last 365 days (docs/CONTRACT.md):

    - ``purchases_viewed_365d`` / ``minutes_to_buy_median``: purchases of an item the user
      had viewed before, and the median minutes from the first view of it to the purchase;
    - ``compare_items_per_purchase``: the mean number of distinct items viewed in the
      purchased item's category in the same session before the purchase (0 for none).
    """
    bought = events.filter((events.type == "purchase") & events.item_id.notnull()
                           & (events.ts >= _ts(as_of - timedelta(days=365))))
    bought = bought.select("user_id", "session_id", "item_id", "category",
                           buy_us=_epoch_us(bought.ts))
    views = events.filter((events.type == "view") & events.item_id.notnull())
    first = views.group_by(v_user=views.user_id, v_item=views.item_id).aggregate(
        first_us=_epoch_us(views.ts).min())
    seen = bought.join(first, [bought.user_id == first.v_user, bought.item_id == first.v_item,
                               first.first_us <= bought.buy_us])
    minutes = (seen.buy_us - seen.first_us) / 60_000_000.0
    speed = seen.group_by("user_id").aggregate(purchases_viewed_365d=seen.count(),
                                               minutes_to_buy_median=minutes.median())
    in_session = views.filter(views.session_id.notnull() & views.category.notnull())
    compared = in_session.select(c_user=in_session.user_id, c_session=in_session.session_id,
                                 c_category=in_session.category, c_item=in_session.item_id,
                                 c_us=_epoch_us(in_session.ts))
    session_buys = bought.filter(bought.session_id.notnull() & bought.category.notnull())
    paths = session_buys.left_join(compared, [
        session_buys.user_id == compared.c_user, session_buys.session_id == compared.c_session,
        session_buys.category == compared.c_category, compared.c_us <= session_buys.buy_us])
    per_buy = paths.group_by("user_id", "session_id", "item_id", "buy_us").aggregate(
        items=paths.c_item.nunique())
    compare = per_buy.group_by("user_id").aggregate(
        compare_items_per_purchase=per_buy.items.mean())
    return speed.outer_join(compare, "user_id").select(
        user_id=ibis.coalesce(speed.user_id, compare.user_id),
        purchases_viewed_365d=speed.purchases_viewed_365d,
        minutes_to_buy_median=speed.minutes_to_buy_median,
        compare_items_per_purchase=compare.compare_items_per_purchase)


def _carts_not_bought(events: ir.Table, orders: ir.Table, as_of: datetime) -> ir.Table:
    """Per user: distinct items put in the cart in the last 90 days and not ordered since."""
    carts = events.filter((events.type == "add_to_cart") & events.item_id.notnull()
                          & (events.ts >= _ts(as_of - timedelta(days=90))))
    carted = carts.select("user_id", "item_id").distinct()
    ordered = orders.filter(orders.item_id.notnull()).select(
        o_user=orders.buyer_id, o_item=orders.item_id).distinct()
    open_items = carted.anti_join(ordered, [carted.user_id == ordered.o_user,
                                            carted.item_id == ordered.o_item])
    return open_items.group_by("user_id").aggregate(carted_not_bought_90d=open_items.count())


def _category_counts(table: ir.Table, user: str) -> ir.Table:
    """Rows per (user, category) with a count ``n`` and a ``key`` that orders a user's rows.

    The key is unique within a user: the count first, then the alphabetically earlier
    category (by its rank among all categories), so ``argmax(key)`` picks the most frequent
    category and breaks ties the same way on every engine. An aggregate is cheaper than a
    ranked window per user.
    """
    named = table.filter(table.category.notnull())
    counts = named.group_by(user_id=named[user], category=named.category).aggregate(n=named.count())
    names = counts.select("category").distinct()
    ranked = names.mutate(category_rank=ibis.row_number().over(order_by=names.category))
    keyed = counts.join(ranked, "category")
    return keyed.mutate(key=keyed.n * CATEGORY_SLOTS - keyed.category_rank)


def _purchase_categories(orders: ir.Table) -> ir.Table:
    """Per buyer: the top purchase category and the Shannon entropy (nats) of categories.

    Entropy of counts c_i with n = sum c_i: H = ln n - sum(c_i ln c_i) / n.
    """
    counts = _category_counts(orders.filter(orders.status == COMPLETED), "buyer_id")
    per_user = counts.group_by("user_id").aggregate(
        total=counts.n.sum(), c_log_c=(counts.n * counts.n.cast("float64").ln()).sum(),
        top_bought=counts.category.argmax(counts.key))
    return per_user.select(
        "user_id", "top_bought",
        category_entropy=per_user.total.cast("float64").ln() - per_user.c_log_c / per_user.total)


def _viewed_categories(events: ir.Table) -> ir.Table:
    """Per user: the most viewed category (the fallback of ``top_category``)."""
    counts = _category_counts(events.filter(events.type == EVENT_KINDS["views"]), "user_id")
    return counts.group_by("user_id").aggregate(top_viewed=counts.category.argmax(counts.key))


def _listing_aggregates(listings: ir.Table, as_of: datetime, windows: Sequence[int]
                        ) -> ir.Table:
    """Per seller: items listed and sold before ``as_of``, mean days to sell, last activity,
    listings per window and stale listings (unsold :data:`STALE_LISTING_DAYS` after listing)."""
    sold = listings.sold_ts.notnull() & (listings.sold_ts < _ts(as_of))
    sell_days = (_epoch_us(listings.sold_ts) - _epoch_us(listings.listed_ts)) / DAY_US
    aggs: dict[str, ir.Value] = {
        "items_listed": listings.count(), "items_sold": listings.count(where=sold),
        "days_to_sell": sell_days.mean(where=sold),
        "last_listed_epoch": _epoch_us(listings.listed_ts).max(),
        "last_sold_epoch": _epoch_us(listings.sold_ts).max(where=sold),
        "stale_listings": listings.count(
            where=~sold & (listings.listed_ts < _ts(as_of - timedelta(days=STALE_LISTING_DAYS)))),
    }
    for w in windows:
        aggs[f"listings_{w}d"] = listings.count(
            where=listings.listed_ts >= _ts(as_of - timedelta(days=w)))
    return listings.group_by(user_id=listings.seller_id).aggregate(**aggs)


def _commission_aggregates(orders: ir.Table, as_of: datetime, windows: Sequence[int]
                           ) -> ir.Table:
    """Per seller (consignor), over completed orders: commission and sold value (all time
    and 365 days), sales per window and the last sale."""
    sales = orders.filter((orders.status == COMPLETED) & orders.seller_id.notnull())
    year = sales.ts >= _ts(as_of - timedelta(days=365))
    aggs: dict[str, ir.Value] = {
        "commission_paid": sales.commission.sum(), "sales": sales.count(),
        "last_sale_epoch": _epoch_us(sales.ts).max(),
        "sold_value_total": sales.amount.sum(), "sold_value_365d": sales.amount.sum(where=year),
        "commission_365d": sales.commission.sum(where=year),
    }
    for w in windows:
        aggs[f"sales_{w}d"] = sales.count(where=sales.ts >= _ts(as_of - timedelta(days=w)))
    return sales.group_by(user_id=sales.seller_id).aggregate(**aggs)


def _listing_starts(events: ir.Table, listings: ir.Table | None, as_of: datetime) -> ir.Table:
    """Per user: ``listing_started`` events of the last 365 days, and those never finished
    (no listing of the user's after the start, over all time before ``as_of``)."""
    started = events.filter(events.type == LISTING_STARTED)
    started = started.select("user_id", start_us=_epoch_us(started.ts))
    if listings is not None:
        last = listings.group_by(l_user=listings.seller_id).aggregate(
            l_last=_epoch_us(listings.listed_ts).max())
        started = started.left_join(last, started.user_id == last.l_user)
        unfinished = started.l_last.isnull() | (started.start_us > started.l_last)
    else:
        unfinished = ibis.literal(True)
    year = started.start_us >= ibis.literal(_as_of_us(as_of - timedelta(days=365)))
    return started.group_by("user_id").aggregate(
        listings_started_365d=started.count(where=year),
        unfinished_listings=started.count(where=unfinished))


def _population(raw: RawTables, orders: ir.Table, as_of: datetime) -> ir.Table:
    """The users of ``as_of``: signed up before it, or (no users table) bought before it."""
    if raw.users is not None:
        users = raw.users.filter(raw.users.signup_ts < _ts(as_of))
        return users.select("user_id", "region", "channel", "timezone", *POLICY_FLAGS,
                            signup_epoch=_epoch_us(users.signup_ts))
    buyers = orders.select(user_id=orders.buyer_id).distinct()
    return buyers.mutate(region=ibis.null("string"), channel=ibis.null("string"),
                         timezone=ibis.null("string"), signup_epoch=ibis.null("int64"),
                         **{flag: ibis.null("boolean") for flag in POLICY_FLAGS})


def _active_hours(orders: ir.Table, events: ir.Table | None, as_of: datetime) -> ir.Table:
    """Per user: the UTC hour of day they are most active in over the last year (orders and
    events other than logins; ties go to the earlier hour) and how many such moments there
    were: what send-time optimisation starts from."""
    since = _ts(as_of - timedelta(days=365))
    moments = orders.filter(orders.ts >= since).select(user_id=orders.buyer_id, ts=orders.ts)
    if events is not None:
        active = events.filter((events.ts >= since) & (events.type != "login"))
        moments = moments.union(active.select("user_id", "ts"))
    per_hour = moments.group_by(["user_id", moments.ts.hour().name("hour")]).aggregate(
        n=moments.count())
    ranked = per_hour.mutate(
        rank=ibis.row_number().over(group_by=per_hour.user_id,
                                    order_by=[ibis.desc(per_hour.n), per_hour.hour]),
        active_events=per_hour.n.sum().over(group_by=per_hour.user_id))
    best = ranked.filter(ranked["rank"] == 0)
    return best.select("user_id", best_hour_utc=best.hour.cast("int64"),
                       active_events=best.active_events)


def _left_join(left: ir.Table, right: ir.Table | None) -> ir.Table:
    return left if right is None else left.left_join(right, "user_id").drop("user_id_right")


def _null_columns(table: ir.Table, columns: dict[str, str]) -> ir.Table:
    """Add typed null columns for aggregates whose source table is absent."""
    missing = {name: ibis.null(dtype) for name, dtype in columns.items()
               if name not in table.columns}
    return table.mutate(**missing) if missing else table


def _zero(value: ir.NumericValue) -> ir.NumericValue:
    return value.fill_null(0)


def feature_table(raw: RawTables, as_of: date, windows: Sequence[int]) -> ir.Table:
    """One row per user with the contract's feature columns (except ``as_of``) at ``as_of``.

    ``windows`` must contain 30 (spend trend, browse-to-buy and cart abandonment use it).
    Absent tables give NaN (times), 0 (counts) or null (categories) for their features.
    """
    moment = datetime(as_of.year, as_of.month, as_of.day)
    before = _ts(moment)
    orders = raw.orders.filter(raw.orders.ts < before)
    events = raw.events.filter(raw.events.ts < before) if raw.events is not None else None
    listings = (raw.listings.filter(raw.listings.listed_ts < before)
                if raw.listings is not None else None)

    joined = _population(raw, orders, moment)
    joined = _left_join(joined, _order_aggregates(orders, moment, windows))
    joined = _left_join(joined, _purchase_categories(orders))
    joined = _left_join(joined, _commission_aggregates(orders, moment, windows))
    joined = _left_join(joined, _event_aggregates(events, moment, windows) if events is not None
                        else None)
    joined = _left_join(joined, _viewed_categories(events) if events is not None else None)
    joined = _left_join(joined, _listing_aggregates(listings, moment, windows)
                        if listings is not None else None)
    joined = _left_join(joined, _active_hours(orders, events, moment))
    joined = _left_join(joined, _payment_aggregates(orders, moment))
    joined = _left_join(joined, _perk_aggregates(orders))
    if events is not None:
        joined = _left_join(joined, _activity_aggregates(events, moment))
        joined = _left_join(joined, _ratings(events, raw.review_scores, moment))
        joined = _left_join(joined, _purchase_paths(events, moment))
        joined = _left_join(joined, _carts_not_bought(events, orders, moment))
        joined = _left_join(joined, _listing_starts(events, listings, moment))
    t = _null_columns(joined, {"last_event_epoch": "int64", "top_viewed": "string",
                               "items_listed": "int64", "items_sold": "int64",
                               "days_to_sell": "float64", "last_listed_epoch": "int64",
                               "last_sold_epoch": "int64", "stale_listings": "int64",
                               "listings_started_365d": "int64", "unfinished_listings": "int64",
                               **{f"listings_{w}d": "int64" for w in windows},
                               **{f"{k}_{w}d": "int64" for k in EVENT_KINDS for w in windows},
                               **{name: "int64" for name in ACTIVITY_COUNTS},
                               "rating_mean_365d": "float64", "minutes_to_buy_median": "float64",
                               "compare_items_per_purchase": "float64"})
    return _select_features(t, moment, windows)


def _select_features(t: ir.Table, as_of: datetime, windows: Sequence[int]) -> ir.Table:
    """Derive the contract columns from the joined aggregates, in the contract's order.

    A user who sold items through orders counts as a seller even without a listings table.
    """
    freq = _zero(t.frequency_total)
    completed_or_returned = freq + _zero(t.returned_orders)
    listed = _zero(t.items_listed)
    seller_last = ibis.greatest(t.last_listed_epoch.fill_null(0), t.last_sold_epoch.fill_null(0),
                                t.last_sale_epoch.fill_null(0)).nullif(0)
    cols: dict[str, ir.Value] = {
        "user_id": t.user_id,
        "tenure_days": _days_since(as_of, t.signup_epoch),
        "recency_days": _days_since(as_of, t.last_order_epoch),
        "frequency_total": freq,
        "monetary_total": _zero(t.monetary_total),
    }
    cols.update({f"frequency_{w}d": _zero(t[f"frequency_{w}d"]) for w in windows})
    cols.update({f"monetary_{w}d": _zero(t[f"monetary_{w}d"]) for w in windows})
    cols["aov"] = _zero(t.monetary_total) / freq.nullif(0)
    cols["spend_trend"] = _zero(t.monetary_30d) - _zero(t.spend_prev_30d)
    cols["days_since_login"] = _days_since(as_of, t.last_event_epoch)
    for kind in EVENT_KINDS:
        cols.update({f"{kind}_{w}d": _zero(t[f"{kind}_{w}d"]) for w in windows})
    cols["browse_to_buy_30d"] = _zero(t.views_30d) / (_zero(t.frequency_30d) + 1)
    cols["cart_abandonments_30d"] = ibis.greatest(_zero(t.carts_30d) - _zero(t.frequency_30d), 0)
    cols["top_category"] = t.top_bought.coalesce(t.top_viewed)
    cols["category_entropy"] = _zero(t.category_entropy)
    cols["return_rate"] = _zero(_zero(t.returned_orders) / completed_or_returned.nullif(0))
    cols["coupon_share"] = _zero(_zero(t.coupon_orders) / freq.nullif(0))
    cols["items_listed"] = listed
    cols["items_sold"] = _zero(t.items_sold)
    cols["sell_through_rate"] = _zero(_zero(t.items_sold) / listed.nullif(0))
    cols["days_to_sell"] = t.days_to_sell
    cols["commission_paid"] = _zero(t.commission_paid)
    cols["region"] = t.region
    cols["channel"] = t.channel
    cols["timezone"] = t.timezone
    cols.update({flag: t[flag] for flag in POLICY_FLAGS})
    cols["best_hour_utc"] = t.best_hour_utc
    cols["active_events"] = _zero(t.active_events)
    cols["is_seller"] = (listed > 0) | (_zero(t.sales) > 0)
    cols["first_purchase_days"] = _days_since(as_of, t.first_order_epoch)
    cols["frequency_prev_90d"] = _zero(t.frequency_prev_90d)
    cols["seller_recency_days"] = _days_since(as_of, seller_last)
    cols["days_since_listing"] = _days_since(as_of, t.last_listed_epoch)
    cols.update({f"listings_{w}d": _zero(t[f"listings_{w}d"]) for w in windows})
    cols.update({f"sales_{w}d": _zero(t[f"sales_{w}d"]) for w in windows})
    cols.update({name: _zero(t[name]) for name in ("sold_value_total", "sold_value_365d",
                                                    "commission_365d", *SELLER_COUNTS)})
    cols.update(_group_features(t, as_of))
    return t.select(**cols)


def _group_features(t: ir.Table, as_of: datetime) -> dict[str, ir.Value]:
    """The risk, behaviour-path and sentiment columns (docs/CONTRACT.md), which group users
    into tags and are no model input."""
    cols: dict[str, ir.Value] = {
        "payment_fingerprints_30d": _zero(t.payment_fingerprints_30d),
        "fingerprint_accounts": _zero(t.fingerprint_accounts),
        "new_user_perks": _zero(t.new_user_perks),
        "purchases_after_perk": _zero(t.purchases_after_perk),
        "perk_age_days": _days_since(as_of, t.first_perk_epoch),
        "returns_total": _zero(t.returned_orders),
    }
    cols.update({name: _zero(t[name]) for name in ACTIVITY_COUNTS})
    cols["rating_mean_365d"] = t.rating_mean_365d
    cols["complaint_rate_365d"] = _zero(t.complaints_365d) / ibis.greatest(
        _zero(t.frequency_365d), 1)
    cols["minutes_to_buy_median"] = t.minutes_to_buy_median
    cols["compare_items_per_purchase"] = t.compare_items_per_purchase
    return cols
