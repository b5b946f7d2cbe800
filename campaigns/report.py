"""What a campaign did: its funnel and its lift over its own holdout.

The funnel counts the campaign's firings through the outbox, the receipts and the
conversions: fired, suppressed (by reason), scheduled, sent, delivered, opened, clicked,
converted, with revenue and arm cost.

Lift is measured intention-to-treat, so consent, caps and send failures cannot bias it:
every firing outside the holdout is "treated" (whatever happened to its message), every
holdout firing is "control", and a firing converts when the user bought anything (a
``purchase`` event) within the campaign's attribution window after it fired. Conversion rates
are compared with an Agresti-Caffo interval and revenue per firing with Welch's interval
(:mod:`nextbest.stats`); ROI = (incremental revenue - arm cost) / arm cost. The same for
each arm (its firings against the whole holdout) and each tier.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np
from pydantic import BaseModel, Field

from campaigns.store import CampaignStore
from features.segmentation import tier_order
from nextbest.config import Settings
from nextbest.stats import Interval, two_proportion, welch

FUNNEL = ("fired", "suppressed", "scheduled", "sent", "delivered", "opened", "clicked",
          "converted")


class Lift(BaseModel):
    """One group of firings against the campaign's holdout."""

    group: str
    n: int
    n_holdout: int
    conversion: Interval | None  # None: one side is empty
    revenue_per_firing: Interval | None
    incremental_revenue: float
    arm_cost: float
    roi: float | None


class CampaignReport(BaseModel):
    """The ``campaigns report`` of one campaign."""

    campaign: str
    generated: datetime
    attribution_hours: float
    funnel: dict[str, int]
    suppressed: dict[str, int] = Field(default_factory=dict)
    revenue: float            # attributed to delivered messages
    arm_cost: float           # revenue minus reward of the attributed conversions
    overall: Lift
    per_arm: list[Lift]
    per_tier: list[Lift]


def _outcomes(rows: list[dict], purchases: dict[str, list[tuple[float, float]]],
              window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per firing: did the user buy within the window after it, and for how much."""
    converted = np.zeros(len(rows), dtype=bool)
    revenue = np.zeros(len(rows))
    for i, row in enumerate(rows):
        start = row["created"]
        bought = [price for ts, price in purchases.get(row["user_id"], [])
                  if start <= ts <= start + window_s]
        converted[i] = bool(bought)
        revenue[i] = sum(bought)
    return converted, revenue


def _lift(group: str, treated: np.ndarray, holdout: np.ndarray, converted: np.ndarray,
          revenue: np.ndarray, cost: float, alpha: float) -> Lift:
    n, m = int(treated.sum()), int(holdout.sum())
    if n == 0 or m == 0:
        return Lift(group=group, n=n, n_holdout=m, conversion=None, revenue_per_firing=None,
                    incremental_revenue=0.0, arm_cost=cost, roi=None)
    conversion = two_proportion(int(converted[treated].sum()), n,
                                int(converted[holdout].sum()), m, alpha)
    money = welch(revenue[treated], revenue[holdout], alpha) if min(n, m) >= 2 else None
    incremental = float(revenue[treated].sum() - n * revenue[holdout].mean())
    roi = (incremental - cost) / cost if cost > 0 else None
    return Lift(group=group, n=n, n_holdout=m, conversion=conversion,
                revenue_per_firing=money, incremental_revenue=incremental, arm_cost=cost,
                roi=roi)


def campaign_report(settings: Settings, store: CampaignStore, name: str, *,
                    now: datetime, alpha: float = 0.05) -> CampaignReport:
    """The report of campaign ``name`` (module docstring)."""
    config = settings.campaigns.campaign(name)
    rows = store.campaign_rows(name)
    purchases = store.purchases([r["user_id"] for r in rows])
    converted, revenue = _outcomes(rows, purchases, config.attribution_hours * 3600)
    held = np.array([r["reason"] == "holdout" for r in rows], dtype=bool)
    treated = ~held
    receipts = Counter(status for r in rows for status in (r["receipts"] or "")
                       .split(",") if status)
    statuses = Counter(r["status"] for r in rows)
    reasons = Counter(str(r["reason"]).split(":")[0] for r in rows if r["status"] == "suppressed")
    attributed = [r for r in rows if r["revenue"] is not None]
    cost = float(sum(r["revenue"] - r["reward"] for r in attributed))
    funnel = {"fired": len(rows), "suppressed": statuses["suppressed"],
              "scheduled": sum(statuses[s] for s in ("pending", "sending", "sent", "dead")),
              "sent": statuses["sent"], "delivered": receipts["delivered"],
              "opened": receipts["opened"], "clicked": receipts["clicked"],
              "converted": len(attributed)}
    per_arm = []
    for arm in sorted({r["arm"] for r in rows if r["arm"]}):
        mask = np.array([r["arm"] == arm for r in rows], dtype=bool)
        arm_cost = float(sum(r["revenue"] - r["reward"] for r in attributed if r["arm"] == arm))
        per_arm.append(_lift(arm, mask & treated, held, converted, revenue, arm_cost, alpha))
    per_tier = []
    for tier in sorted({r["tier"] for r in rows if r["tier"]}, key=tier_order):
        mask = np.array([r["tier"] == tier for r in rows], dtype=bool)
        tier_cost = float(sum(r["revenue"] - r["reward"] for r in attributed
                              if r["tier"] == tier))
        per_tier.append(_lift(tier, mask & treated, mask & held, converted, revenue, tier_cost,
                              alpha))
    return CampaignReport(
        campaign=name, generated=now, attribution_hours=config.attribution_hours,
        funnel=funnel, suppressed=dict(reasons),
        revenue=float(sum(r["revenue"] for r in attributed)), arm_cost=cost,
        overall=_lift("all", treated, held, converted, revenue, cost, alpha),
        per_arm=per_arm, per_tier=per_tier)


def format_report(report: CampaignReport) -> str:
    """The report as text for the terminal."""
    lines = [f"campaign {report.campaign} (attribution {report.attribution_hours:g} h)",
             "funnel: " + ", ".join(f"{k} {report.funnel.get(k, 0):,}" for k in FUNNEL)]
    if report.suppressed:
        lines.append("suppressed: " + ", ".join(f"{k} {v:,}"
                                                for k, v in sorted(report.suppressed.items())))
    lines.append(f"attributed revenue {report.revenue:,.2f}, arm cost {report.arm_cost:,.2f}")
    lines.append(f"{'group':<16}{'firings':>9}{'holdout':>9}{'conv':>9}{'holdout':>9}"
                 f"{'lift (95% CI)':>28}{'ROI':>9}")
    for lift in [report.overall, *report.per_arm, *report.per_tier]:
        if lift.conversion is None:
            lines.append(f"{lift.group:<16}{lift.n:>9,}{lift.n_holdout:>9,}   (no comparison)")
            continue
        c = lift.conversion
        roi = "n/a" if lift.roi is None else f"{lift.roi:.0%}"
        lines.append(f"{lift.group:<16}{lift.n:>9,}{lift.n_holdout:>9,}{c.treatment:>9.1%}"
                     f"{c.control:>9.1%}{c.diff * 100:>+9.1f} pp [{c.low * 100:+.1f}, "
                     f"{c.high * 100:+.1f}]{roi:>9}")
    return "\n".join(lines)

