"""A/B and holdout analysis: each policy or campaign against the global control group.

The control group (decisions with ``control`` true: no action) is the holdout. For every
policy/campaign, overall and per tier, we report conversion (difference with a normal
interval and a two-proportion z-test), revenue and profit per decision (difference with a
Welch interval and Welch's t-test), and for every arm the ROI of its spend::

    incremental revenue = n_arm x (mean revenue of the arm - mean revenue of control)
    ROI                 = (incremental revenue - spend) / spend

Profit is revenue minus the arm cost paid (control pays nothing).
"""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from nextbest.errors import DataError
from nextbest.stats import Interval, two_proportion, welch


class GroupComparison(BaseModel):
    """One policy/campaign (optionally within one tier) against the control group."""

    group: str
    tier: str
    n: int
    n_control: int
    conversion: Interval
    revenue: Interval
    profit: Interval


class ArmRoi(BaseModel):
    """Return on one arm's spend, measured against the control group's revenue."""

    arm: str
    n: int
    spend: float
    revenue: float
    incremental_revenue: float
    roi: float | None


class AbTestReport(BaseModel):
    """Everything ``nextbest abtest`` prints."""

    alpha: float
    n_decisions: int
    n_control: int
    overall: list[GroupComparison]
    per_tier: list[GroupComparison]
    arms: list[ArmRoi]


def compare(treated: pd.DataFrame, control: pd.DataFrame, *, group: str, tier: str,
            alpha: float) -> GroupComparison:
    """Compare one treated slice of the log to a control slice."""
    conv = two_proportion(int(treated["converted"].sum()), len(treated),
                          int(control["converted"].sum()), len(control), alpha)
    revenue_t = treated["revenue"].to_numpy(float)
    revenue_c = control["revenue"].to_numpy(float)
    # What the platform keeps of the revenue (all of it; at a seller decision point its
    # commission: experiments/logs.py ``earned``) minus the arms' costs.
    kept = "earned" if "earned" in treated.columns else "revenue"
    profit_t = treated[kept].to_numpy(float) - treated["cost"].to_numpy(float)
    profit_c = control[kept].to_numpy(float) - control["cost"].to_numpy(float)
    return GroupComparison(group=group, tier=tier, n=len(treated), n_control=len(control),
                           conversion=conv, revenue=welch(revenue_t, revenue_c, alpha),
                           profit=welch(profit_t, profit_c, alpha))


def arm_roi(log: pd.DataFrame, control: pd.DataFrame) -> list[ArmRoi]:
    """ROI of each arm's spend against the control group's revenue per decision."""
    base = float(control["revenue"].mean())
    out = []
    for arm, rows in log[~log["control"] & log["action"].notna()].groupby("action"):
        spend = float(rows["cost"].sum())
        revenue = float(rows["revenue"].sum())
        incremental = revenue - base * len(rows)
        roi = (incremental - spend) / spend if spend > 0 else None
        out.append(ArmRoi(arm=str(arm), n=len(rows), spend=spend, revenue=revenue,
                          incremental_revenue=incremental, roi=roi))
    return out


def analyse(log: pd.DataFrame, *, alpha: float = 0.05, min_group: int = 2) -> AbTestReport:
    """The full A/B report of a normalised log (:func:`experiments.logs.read_log`).

    Groups are the ``policy`` column (policy version or campaign) of non-control decisions;
    a tier comparison is made when both sides have at least ``min_group`` decisions.
    """
    control = log[log["control"]]
    if len(control) < min_group:
        raise DataError(f"the log has {len(control)} control-group decisions; an A/B analysis "
                        "needs a control group (decisions with control=true / no action)",
                        field="control")
    treated = log[~log["control"]]
    if treated.empty:
        raise DataError("the log holds only control-group decisions", field="control")
    overall, per_tier = [], []
    for group, rows in treated.groupby("policy", sort=True):
        if len(rows) >= min_group:
            overall.append(compare(rows, control, group=str(group), tier="all", alpha=alpha))
        for tier, tier_rows in rows.groupby("tier", sort=True):
            tier_control = control[control["tier"] == tier]
            if len(tier_rows) >= min_group and len(tier_control) >= min_group:
                per_tier.append(compare(tier_rows, tier_control, group=str(group),
                                        tier=str(tier), alpha=alpha))
    return AbTestReport(alpha=alpha, n_decisions=len(log), n_control=len(control),
                        overall=overall, per_tier=per_tier, arms=arm_roi(log, control))


def format_report(report: AbTestReport) -> str:
    """A readable table of the report for the terminal."""
    lines = [f"{report.n_decisions} decisions, {report.n_control} in the control group "
             f"(alpha={report.alpha})", "",
             f"{'group':<22}{'tier':<10}{'n':>7}  {'conv lift':>22}  {'revenue/dec lift':>26}"
             f"  {'profit/dec lift':>26}  p(conv)"]
    for row in report.overall + report.per_tier:
        c, r, p = row.conversion, row.revenue, row.profit
        lines.append(
            f"{row.group:<22}{row.tier:<10}{row.n:>7}  "
            f"{c.diff:+.4f} [{c.low:+.4f},{c.high:+.4f}]  "
            f"{r.diff:+8.2f} [{r.low:+8.2f},{r.high:+8.2f}]  "
            f"{p.diff:+8.2f} [{p.low:+8.2f},{p.high:+8.2f}]  {c.p_value:.3g}"
            + (" *" if c.significant else ""))
    lines += ["", f"{'arm':<16}{'n':>7}{'spend':>12}{'incr. revenue':>16}{'ROI':>8}"]
    for arm in report.arms:
        roi = "n/a" if arm.roi is None else f"{arm.roi:+.2f}"
        lines.append(f"{arm.arm:<16}{arm.n:>7}{arm.spend:>12.2f}"
                     f"{arm.incremental_revenue:>16.2f}{roi:>8}")
    return "\n".join(lines)
