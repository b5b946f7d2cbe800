"""The segments report: tier sizes, shares and ARPU, segments, tier migration and alerts.

``nextbest segments report`` (:mod:`training.cli_segments`) reads the features of one ``as_of`` (and
optionally a second date to compare with) from ``paths.features_dir``, summarises them as a
:class:`SegmentsReport`, prints it as a table or JSON and writes ``report.json`` and a PNG
chart (tier shares and the migration heat map).

Platinum churn risk comes from the champion churn model when the caller passes its scorer
(:func:`training.loader.load_churn_scorer`), else from recency: a Platinum user who has not bought for more
than ``alerts.platinum_recency_risk_days``.

The seller side: users, GMV and commission (365 days) per seller tier, the seller tier
migration between the two dates, and an alert naming VIP sellers who turned sleeping.

The report also counts users per lifecycle stage (with the churn model's probability when
there is one, as the ``churn_probability`` lifecycle rules read it) and per tag, and, when
the platform supplies ``users.acquisition_cost`` and the caller passes the LTV champion
(:func:`training.loader.load_ltv_scorer`), LTV against acquisition cost per channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from features.build import available_as_of, load_features
from features.engines import raw_path
from features.segmentation import (
    LIFECYCLE_STAGES,
    SELLER_TIERS,
    TIERS,
    assign_lifecycle,
    assign_tiers,
)
from nextbest.config import AlertConfig, Settings
from nextbest.errors import DataError, NextbestError, NotFound

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

NOT_PRESENT = "(not present)"
REPORT_FILE = "report.json"
CHART_FILE = "segments.png"
REQUIRED_COLUMNS = ("user_id", "tier", "segment", "monetary_30d", "monetary_365d",
                    "recency_days")

# Maps a features frame (one row per user) to each user's churn probability, same index.
ChurnScorer = Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class LtvScorer:
    """The LTV champion for the report: ``score`` maps a features frame to each user's
    forecast spend over ``horizon_days`` (same index)."""

    horizon_days: int
    version: str
    score: Callable[[pd.DataFrame], pd.Series]


class TierSummary(BaseModel):
    """One tier: its users, their share of all users and revenue per user (ARPU)."""

    tier: str
    users: int
    share: float
    arpu_365d: float
    arpu_30d: float


class SellerTierSummary(BaseModel):
    """One seller tier: its users, their share of all users, and the gross merchandise value
    they sold and the commission they paid over the last 365 days (total and per user)."""

    seller_tier: str
    users: int
    share: float
    gmv_365d: float
    commission_365d: float
    gmv_per_user: float
    commission_per_user: float


class SegmentSummary(BaseModel):
    segment: str
    users: int
    share: float


class StageSummary(BaseModel):
    """Users in one lifecycle stage."""

    stage: str
    users: int
    share: float


class TagSummary(BaseModel):
    """Users carrying one tag (risk tags included)."""

    tag: str
    users: int
    share: float


class ChannelValue(BaseModel):
    """One acquisition channel: its users, their mean acquisition cost (users with a cost)
    and forecast spend over the LTV horizon, and the ratio of the two (None without cost)."""

    channel: str
    users: int
    acquisition_cost: float | None
    ltv: float
    ltv_to_cac: float | None


class Migration(BaseModel):
    """Tier migration from ``from_as_of`` (rows) to ``to_as_of`` (columns).

    ``counts[i][j]`` users were in ``tiers_from[i]`` and then in ``tiers_to[j]``; users
    missing at one date are counted under ``(not present)``. ``row_shares`` divides each
    row by its total (0 for an empty row).
    """

    from_as_of: date
    to_as_of: date
    tiers_from: list[str]
    tiers_to: list[str]
    counts: list[list[int]]
    row_shares: list[list[float]]


class Alert(BaseModel):
    kind: Literal["platinum_churn_risk", "dormant_share", "tier_share_shift",
                  "vip_sellers_sleeping"]
    message: str
    value: float
    threshold: float
    tier: str | None = None
    user_ids: list[str] = []


class SegmentsReport(BaseModel):
    """The whole report; ``compare_*`` fields are set only with a comparison date."""

    as_of: date
    users: int
    tiers: list[TierSummary]
    segments: list[SegmentSummary]
    compare_to: date | None = None
    compare_tiers: list[TierSummary] | None = None
    migration: Migration | None = None
    churn_risk_source: Literal["churn_model", "recency"]
    alerts: list[Alert]
    lifecycle: list[StageSummary] = []
    lifecycle_source: Literal["rules", "rules_and_churn_model"] = "rules"
    tags: list[TagSummary] = []
    ltv_horizon_days: int | None = None
    ltv_version: str | None = None
    channels: list[ChannelValue] = []
    # What ranks buyers into Platinum and Gold: the tiers' value column, or the LTV forecast.
    tier_by: Literal["value", "ltv"] = "value"
    sellers: list[SellerTierSummary] = []
    seller_migration: Migration | None = None


def resolve_as_of(settings: Settings, as_of: date | None,
                  features_dir: Path | None = None) -> date:
    """``as_of`` if its features exist, else the latest built date when ``as_of`` is None.

    Raises :class:`NotFound` naming the date and listing the dates that exist.
    """
    root = Path(features_dir or settings.paths.features_dir)
    available = available_as_of(settings, root)
    listed = ", ".join(d.isoformat() for d in available) or "none"
    if as_of is None:
        if not available:
            raise NotFound(f"no features have been built in {root}; run `nextbest features "
                           "build` first", field="as_of")
        return available[-1]
    if as_of not in available:
        raise NotFound(f"no features for as_of {as_of.isoformat()} in {root}; available "
                       f"as_of dates: {listed}", field="as_of")
    return as_of


def read_features(settings: Settings, as_of: date,
                  features_dir: Path | None = None) -> pd.DataFrame:
    """The features of ``as_of``, checked for the columns the report needs."""
    frame = load_features(settings, as_of, features_dir)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"the features of as_of {as_of.isoformat()} lack the column(s) "
                        f"{', '.join(missing)} the segments report needs", field=missing[0])
    return frame


def _ordered(labels: pd.Index | list[str], first: tuple[str, ...]) -> list[str]:
    """``first`` (all of it), then any other labels in ``labels`` sorted."""
    return list(first) + sorted(str(x) for x in set(labels) - set(first))


def tier_summary(frame: pd.DataFrame) -> list[TierSummary]:
    """Users, share and ARPU (365 and 30 days) of every tier, in tier order.

    Every known tier appears, with zeros when empty, so shares always sum to 1 (for a
    non-empty frame).
    """
    grouped = frame.groupby("tier", observed=True).agg(
        users=("user_id", "size"), m365=("monetary_365d", "sum"), m30=("monetary_30d", "sum"))
    total = len(frame)
    rows = []
    for tier in _ordered(grouped.index, TIERS):
        users = int(grouped["users"].get(tier, 0))
        rows.append(TierSummary(
            tier=tier, users=users, share=users / total if total else 0.0,
            arpu_365d=float(grouped["m365"].get(tier, 0.0)) / users if users else 0.0,
            arpu_30d=float(grouped["m30"].get(tier, 0.0)) / users if users else 0.0))
    return rows


def seller_tier_summary(frame: pd.DataFrame) -> list[SellerTierSummary]:
    """Users, share of all users, GMV and commission (365 days) of every seller tier, in
    tier order (every tier listed); empty for features without seller tiers."""
    if "seller_tier" not in frame.columns:
        return []
    value = frame.get("sold_value_365d", pd.Series(0.0, index=frame.index))
    commission = frame.get("commission_365d", pd.Series(0.0, index=frame.index))
    grouped = pd.DataFrame({"tier": frame["seller_tier"], "gmv": value,
                            "commission": commission}).dropna(subset=["tier"]).groupby(
        "tier").agg(users=("gmv", "size"), gmv=("gmv", "sum"), commission=("commission", "sum"))
    total = len(frame)
    rows = []
    for tier in _ordered(grouped.index, SELLER_TIERS):
        users = int(grouped["users"].get(tier, 0))
        gmv = float(grouped["gmv"].get(tier, 0.0))
        paid = float(grouped["commission"].get(tier, 0.0))
        rows.append(SellerTierSummary(
            seller_tier=tier, users=users, share=users / total if total else 0.0,
            gmv_365d=gmv, commission_365d=paid, gmv_per_user=gmv / users if users else 0.0,
            commission_per_user=paid / users if users else 0.0))
    return rows


def segment_summary(frame: pd.DataFrame) -> list[SegmentSummary]:
    """Users and share of every segment present, largest first."""
    counts = frame["segment"].fillna("unknown").astype(str).value_counts()
    total = len(frame)
    return [SegmentSummary(segment=seg, users=int(n), share=int(n) / total)
            for seg, n in counts.sort_index().sort_values(ascending=False, kind="stable").items()]


def lifecycle_summary(frame: pd.DataFrame, settings: Settings, scorer: ChurnScorer | None
                      ) -> tuple[list[StageSummary], Literal["rules", "rules_and_churn_model"]]:
    """Users per lifecycle stage, every stage listed; with a churn scorer the stages are
    assigned again with each user's churn probability (rules reading it then apply)."""
    stages, source = frame.get("lifecycle_stage"), "rules"
    if scorer is not None and len(frame):
        try:
            churn = scorer(frame)
            stages, source = assign_lifecycle(frame, settings.features.lifecycle, churn), \
                "rules_and_churn_model"
        except (NextbestError, KeyError) as exc:
            log.warning("the churn model could not score the features (%s); lifecycle "
                        "stages from the rules alone", exc)
    if stages is None:
        return [], "rules"
    counts = stages.astype(str).value_counts()
    total = len(frame)
    return [StageSummary(stage=stage, users=int(counts.get(stage, 0)),
                         share=int(counts.get(stage, 0)) / total if total else 0.0)
            for stage in _ordered(counts.index, LIFECYCLE_STAGES)], source  # type: ignore[return-value]


def tag_summary(frame: pd.DataFrame) -> list[TagSummary]:
    """Users per tag, most common first."""
    if "tags" not in frame.columns or frame.empty:
        return []
    counts = frame["tags"].explode().dropna().astype(str).value_counts()
    return [TagSummary(tag=tag, users=int(n), share=int(n) / len(frame))
            for tag, n in counts.sort_index().sort_values(ascending=False, kind="stable").items()]


def channel_value(settings: Settings, frame: pd.DataFrame, ltv: LtvScorer) -> list[ChannelValue]:
    """LTV (forecast spend) against acquisition cost per channel, from the raw users table's
    ``acquisition_cost``; empty when the platform does not supply it."""
    path = raw_path(Path(settings.paths.raw_dir), "users")
    if not path.is_file():
        return []
    users = pd.read_parquet(path)
    if "acquisition_cost" not in users.columns or users["acquisition_cost"].isna().all():
        return []
    joined = frame[["user_id", "channel"]].assign(ltv=ltv.score(frame).to_numpy()).merge(
        users[["user_id", "acquisition_cost"]], on="user_id", how="left")
    joined["channel"] = joined["channel"].fillna("unknown").astype(str)
    rows = []
    for channel, group in joined.groupby("channel", sort=True):
        cost = group["acquisition_cost"].mean()
        value = float(group["ltv"].mean())
        known = not pd.isna(cost)
        rows.append(ChannelValue(channel=str(channel), users=len(group),
                                 acquisition_cost=float(cost) if known else None, ltv=value,
                                 ltv_to_cac=value / float(cost) if known and cost > 0
                                 else None))
    return rows


def tier_migration(earlier: pd.DataFrame, later: pd.DataFrame, from_as_of: date,
                   to_as_of: date, column: str = "tier",
                   order: tuple[str, ...] = TIERS) -> Migration:
    """The migration matrix of ``column`` (tiers, or seller tiers with ``order``
    :data:`SELLER_TIERS`); every user of either date is counted exactly once (a user
    without a value at a date, or absent from it, under ``(not present)``)."""
    joined = pd.merge(earlier[["user_id", column]], later[["user_id", column]], on="user_id",
                      how="outer", suffixes=("_from", "_to"))
    before = joined[f"{column}_from"].astype(object)
    after = joined[f"{column}_to"].astype(object)
    before = before.where(before.notna(), NOT_PRESENT)
    after = after.where(after.notna(), NOT_PRESENT)
    table = pd.crosstab(before.astype(str), after.astype(str))
    labels = (*order, NOT_PRESENT)
    rows = _ordered(table.index, labels)
    cols = _ordered(table.columns, labels)
    # Keep NOT_PRESENT last, after any unexpected tier names.
    rows = [r for r in rows if r != NOT_PRESENT] + [NOT_PRESENT]
    cols = [c for c in cols if c != NOT_PRESENT] + [NOT_PRESENT]
    counts = table.reindex(index=rows, columns=cols, fill_value=0).to_numpy(dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return Migration(from_as_of=from_as_of, to_as_of=to_as_of, tiers_from=rows,
                     tiers_to=cols, counts=counts.tolist(), row_shares=shares.tolist())


def vip_sellers_sleeping(earlier: pd.DataFrame, later: pd.DataFrame,
                         from_as_of: date, to_as_of: date) -> Alert | None:
    """An alert naming the sellers who were VIP at ``from_as_of`` and are sleeping at
    ``to_as_of`` (None when there are none, or without seller tiers)."""
    if "seller_tier" not in earlier.columns or "seller_tier" not in later.columns:
        return None
    joined = earlier[["user_id", "seller_tier"]].merge(
        later[["user_id", "seller_tier"]], on="user_id", suffixes=("_from", "_to"))
    gone = joined[(joined["seller_tier_from"] == "vip") & (joined["seller_tier_to"] == "sleeping")]
    if gone.empty:
        return None
    return Alert(kind="vip_sellers_sleeping", tier="vip", value=len(gone), threshold=0,
                 user_ids=sorted(gone["user_id"].astype(str)),
                 message=f"{len(gone)} VIP seller(s) of {from_as_of} are sleeping at "
                         f"{to_as_of}: no listing or sale for the seller active window")


def platinum_at_risk(frame: pd.DataFrame, cfg: AlertConfig, scorer: ChurnScorer | None,
                     ) -> tuple[pd.DataFrame, Literal["churn_model", "recency"]]:
    """The Platinum users at high churn risk and which rule found them.

    With a scorer: churn probability >= ``platinum_churn_risk``. Without one, or when the
    model cannot score these features: recency above ``platinum_recency_risk_days``.
    """
    platinum = frame[frame["tier"] == "platinum"]
    if scorer is not None:
        if platinum.empty:
            return platinum, "churn_model"
        try:
            risk = scorer(platinum)
            return platinum[risk >= cfg.platinum_churn_risk], "churn_model"
        except (NextbestError, KeyError) as exc:
            log.warning("the churn model could not score the features (%s); using recency",
                        exc)
    return platinum[platinum["recency_days"] > cfg.platinum_recency_risk_days], "recency"


def tier_alerts(tiers: list[TierSummary], compare_tiers: list[TierSummary] | None,
                cfg: AlertConfig, compare_to: date | None) -> list[Alert]:
    """Dormant share over its limit; any tier share moving more than its limit."""
    alerts = []
    share = {t.tier: t.share for t in tiers}
    dormant = share.get("dormant", 0.0)
    if dormant > cfg.dormant_share_max:
        alerts.append(Alert(kind="dormant_share", tier="dormant", value=dormant,
                            threshold=cfg.dormant_share_max,
                            message=f"dormant share {dormant:.1%} is above "
                                    f"{cfg.dormant_share_max:.1%}"))
    for old in compare_tiers or []:
        shift = share.get(old.tier, 0.0) - old.share
        if abs(shift) > cfg.tier_share_shift_max:
            alerts.append(Alert(kind="tier_share_shift", tier=old.tier, value=shift,
                                threshold=cfg.tier_share_shift_max,
                                message=f"{old.tier} share moved {shift:+.1%} since "
                                        f"{compare_to} (limit {cfg.tier_share_shift_max:.1%})"))
    return alerts


def ltv_tiers(frame: pd.DataFrame, settings: Settings, ltv: LtvScorer) -> pd.DataFrame:
    """``frame`` with its tiers re-ranked by the LTV forecast instead of past value: the
    top ``platinum_share`` of buyers by forecast spend (with a recent purchase) are
    Platinum, and so on with the same recency rules (``features.tiers``)."""
    config = settings.features.tiers.model_copy(update={"value_column": "ltv_forecast"})
    scored = frame.assign(ltv_forecast=ltv.score(frame).to_numpy())
    return frame.assign(tier=assign_tiers(scored, config).to_numpy())


def build_report(settings: Settings, as_of: date | None = None, compare_to: date | None = None,
                 *, scorer: ChurnScorer | None = None, ltv: LtvScorer | None = None,
                 features_dir: Path | None = None,
                 tier_by: Literal["value", "ltv"] = "value") -> SegmentsReport:
    """The segments report of ``as_of`` (default: latest built), compared to ``compare_to``.

    ``scorer`` gives churn probabilities for the Platinum alert and the lifecycle stages;
    None uses recency and the rules alone. ``ltv`` (the LTV champion) adds LTV / CAC per
    acquisition channel; with ``tier_by="ltv"`` it also ranks the tiers (:func:`ltv_tiers`).
    """
    if tier_by == "ltv" and ltv is None:
        raise NotFound("tiers by LTV need an LTV model: run `nextbest train ltv`",
                       field="tier_by")
    as_of = resolve_as_of(settings, as_of, features_dir)
    frame = read_features(settings, as_of, features_dir)
    if tier_by == "ltv":
        frame = ltv_tiers(frame, settings, ltv)
    cfg = settings.features.alerts
    tiers = tier_summary(frame)
    compare_tiers = migration = seller_migration = sellers_gone = None
    if compare_to is not None:
        compare_to = resolve_as_of(settings, compare_to, features_dir)
        other = read_features(settings, compare_to, features_dir)
        if tier_by == "ltv":
            other = ltv_tiers(other, settings, ltv)
        compare_tiers = tier_summary(other)
        earlier, later = sorted([(compare_to, other), (as_of, frame)], key=lambda p: p[0])
        migration = tier_migration(earlier[1], later[1], earlier[0], later[0])
        if "seller_tier" in frame.columns and "seller_tier" in other.columns:
            seller_migration = tier_migration(earlier[1], later[1], earlier[0], later[0],
                                              column="seller_tier", order=SELLER_TIERS)
            sellers_gone = vip_sellers_sleeping(earlier[1], later[1], earlier[0], later[0])
    at_risk, source = platinum_at_risk(frame, cfg, scorer)
    alerts = []
    if len(at_risk):
        rule = (f"churn probability >= {cfg.platinum_churn_risk:.0%}" if source == "churn_model"
                else f"no purchase for more than {cfg.platinum_recency_risk_days} days")
        alerts.append(Alert(kind="platinum_churn_risk", tier="platinum", value=len(at_risk),
                            threshold=cfg.platinum_churn_risk if source == "churn_model"
                            else cfg.platinum_recency_risk_days,
                            user_ids=sorted(at_risk["user_id"].astype(str)),
                            message=f"{len(at_risk)} platinum user(s) at high churn risk "
                                    f"({rule})"))
    alerts += tier_alerts(tiers, compare_tiers, cfg, compare_to)
    alerts += [sellers_gone] if sellers_gone is not None else []
    stages, stage_source = lifecycle_summary(frame, settings, scorer)
    return SegmentsReport(as_of=as_of, users=len(frame), tiers=tiers,
                          segments=segment_summary(frame), compare_to=compare_to,
                          compare_tiers=compare_tiers, migration=migration,
                          churn_risk_source=source, alerts=alerts, lifecycle=stages,
                          lifecycle_source=stage_source, tags=tag_summary(frame),
                          ltv_horizon_days=ltv.horizon_days if ltv else None,
                          ltv_version=ltv.version if ltv else None,
                          channels=channel_value(settings, frame, ltv) if ltv else [],
                          tier_by=tier_by, sellers=seller_tier_summary(frame),
                          seller_migration=seller_migration)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), *(line(r) for r in rows)])


def render_text(report: SegmentsReport) -> str:
    """The report as human-readable text tables."""
    previous = {t.tier: t.share for t in report.compare_tiers or []}
    header = ["tier", "users", "share", "ARPU 365d", "ARPU 30d"]
    if report.compare_to:
        header += [f"share {report.compare_to}", "change"]
    rows = []
    for t in report.tiers:
        row = [t.tier, f"{t.users:,}", f"{t.share:.1%}", f"{t.arpu_365d:,.2f}",
               f"{t.arpu_30d:,.2f}"]
        if report.compare_to:
            old = previous.get(t.tier, 0.0)
            row += [f"{old:.1%}", f"{t.share - old:+.1%}"]
        rows.append(row)
    by = (f"; tiers ranked by the {report.ltv_horizon_days}-day LTV forecast (ltv "
          f"v{report.ltv_version})" if report.tier_by == "ltv" else "")
    parts = [f"Segments report, as_of {report.as_of} ({report.users:,} users{by})", "",
             _table(header, rows), "",
             _table(["segment", "users", "share"],
                    [[s.segment, f"{s.users:,}", f"{s.share:.1%}"] for s in report.segments])]
    if report.migration:
        m = report.migration
        parts += ["", f"Tier migration {m.from_as_of} (rows) -> {m.to_as_of} (columns), users",
                  _table(["from \\ to", *m.tiers_to],
                         [[name, *(f"{n:,}" for n in counts)]
                          for name, counts in zip(m.tiers_from, m.counts, strict=True)])]
    if report.sellers:
        parts += ["", _table(["seller tier", "users", "share", "GMV 365d", "commission 365d",
                              "GMV / user", "commission / user"],
                             [[t.seller_tier, f"{t.users:,}", f"{t.share:.1%}",
                               f"{t.gmv_365d:,.2f}", f"{t.commission_365d:,.2f}",
                               f"{t.gmv_per_user:,.2f}", f"{t.commission_per_user:,.2f}"]
                              for t in report.sellers])]
    if report.seller_migration:
        m = report.seller_migration
        parts += ["", f"Seller tier migration {m.from_as_of} (rows) -> {m.to_as_of} "
                      "(columns), users",
                  _table(["from \\ to", *m.tiers_to],
                         [[name, *(f"{n:,}" for n in counts)]
                          for name, counts in zip(m.tiers_from, m.counts, strict=True)])]
    if report.lifecycle:
        parts += ["", f"Lifecycle stages ({report.lifecycle_source.replace('_', ' ')})",
                  _table(["stage", "users", "share"],
                         [[s.stage, f"{s.users:,}", f"{s.share:.1%}"] for s in report.lifecycle])]
    if report.tags:
        parts += ["", _table(["tag", "users", "share"],
                             [[t.tag, f"{t.users:,}", f"{t.share:.1%}"] for t in report.tags])]
    if report.channels:
        parts += ["", f"LTV ({report.ltv_horizon_days}-day forecast spend, ltv v"
                      f"{report.ltv_version}) against acquisition cost per channel",
                  _table(["channel", "users", "CAC", "LTV", "LTV / CAC"],
                         [[c.channel, f"{c.users:,}", _money(c.acquisition_cost),
                           f"{c.ltv:,.2f}",
                           "-" if c.ltv_to_cac is None else f"{c.ltv_to_cac:.2f}"]
                          for c in report.channels])]
    parts += ["", f"Alerts (platinum risk from {report.churn_risk_source}):"]
    parts += [f"  ! {a.message}" for a in report.alerts] or ["  none"]
    return "\n".join(parts)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def render_chart(report: SegmentsReport, path: Path) -> Path:
    """Write the tier-share bar chart (and the migration heat map) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if report.migration else 1
    fig = Figure(figsize=(6.5 * panels, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    names = [t.tier for t in report.tiers]
    x = np.arange(len(names))
    if report.compare_tiers is not None:
        old = {t.tier: t.share for t in report.compare_tiers}
        ax.bar(x - 0.2, [old.get(n, 0.0) for n in names], 0.4, label=str(report.compare_to))
        ax.bar(x + 0.2, [t.share for t in report.tiers], 0.4, label=str(report.as_of))
        ax.legend()
    else:
        ax.bar(x, [t.share for t in report.tiers], 0.6)
    ax.set_xticks(x, names, rotation=30)
    ax.set_ylabel("share of users")
    ax.set_title(f"Tier shares, as_of {report.as_of}")
    if report.migration:
        _heat_map(fig.add_subplot(1, 2, 2), report.migration)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


def _heat_map(ax: Axes, m: Migration) -> None:
    """Row shares as colours, user counts as the cell labels."""
    shares = np.asarray(m.row_shares)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.figure.colorbar(image, ax=ax, label="share of the row")
    ax.set_xticks(range(len(m.tiers_to)), m.tiers_to, rotation=30)
    ax.set_yticks(range(len(m.tiers_from)), m.tiers_from)
    ax.set_xlabel(f"tier at {m.to_as_of}")
    ax.set_ylabel(f"tier at {m.from_as_of}")
    ax.set_title("Tier migration")
    for (i, j), n in np.ndenumerate(np.asarray(m.counts)):
        ax.text(j, i, f"{n:,}", ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black")


def default_out_dir(settings: Settings, report: SegmentsReport) -> Path:
    return Path(settings.paths.reports_dir) / f"segments_{report.as_of.isoformat()}"


def write_report(report: SegmentsReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and the PNG chart into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / REPORT_FILE
    json_path.write_text(report.model_dump_json(indent=2) + "\n")
    return json_path, render_chart(report, out_dir / CHART_FILE)
