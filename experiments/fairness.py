"""Who gets offers, and how much they are worth, per tier, region and segment of a decision log.

For each attribute the decisions outside the control group (which gets no action by design)
are grouped by the user's value of it, and each group gets (fairlearn's ``MetricFrame``):

- ``offer_rate``: the share of its decisions that showed an *offer*, an arm whose terms have
  a value (``ArmConfig.features.value`` > 0: a discount, installment terms); a trust message
  such as certification (value 0) is not an offer;
- ``mean_offer_value``: what the offers shown were worth, in the platform's currency: the
  arm's cost at the decision's item price (``cost + cost_rate x item price``: the discount
  given, the installment fee paid), averaged over the offers with a known price.

The attribute's ``ratio`` is the lowest offer rate over the highest (fairlearn's
``between_groups`` ratio), over the groups with at least ``min_decisions`` decisions and a
known value; below 0.8 it is flagged (the four-fifths rule of adverse impact).

Attributes come from the log itself (``tier`` as logged; ``segment`` from the logged bandit
features) and, where the log lacks them, from a users table joined on ``user_id``: by
default the latest features build, or any table with ``user_id`` and the attribute columns
(``simulate --keep-logs DIR`` writes ``DIR/users.parquet`` for its simulated users).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from pydantic import BaseModel

from decisions.reward import arm_cost
from features.segmentation import SEGMENTS, TIERS
from nextbest.config import Settings
from nextbest.errors import DataError

ATTRIBUTES = ("tier", "region", "segment")
FOUR_FIFTHS = 0.8
MIN_DECISIONS = 30
UNKNOWN = "unknown"  # a decision whose user has no value of the attribute
# Groups in their natural order where there is one; others alphabetically after them.
ORDER = {"tier": TIERS, "segment": (*SEGMENTS, "no_purchase")}


class GroupFairness(BaseModel):
    """One group of an attribute (e.g. tier ``gold``)."""

    group: str
    decisions: int
    offers: int
    offer_rate: float
    mean_offer_value: float | None  # None: no offer with a known price


class AttributeFairness(BaseModel):
    """The groups of one attribute and the four-fifths check of their offer rates."""

    attribute: str
    groups: list[GroupFairness]
    ratio: float | None  # lowest / highest offer rate; None: fewer than two groups to compare
    lowest: str | None
    highest: str | None
    flagged: bool
    compared: list[str]  # the groups the ratio covers (known, >= min_decisions)


class FairnessReport(BaseModel):
    """``nextbest audit fairness``: offer rate and value by tier, region and segment."""

    n_decisions: int
    n_control: int
    offer_arms: list[str]
    threshold: float = FOUR_FIFTHS
    min_decisions: int = MIN_DECISIONS
    users_source: str
    attributes: list[AttributeFairness]
    warnings: list[str]


def offer_values(log: pd.DataFrame, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Whether each logged decision showed an offer, and what it was worth (NaN: no offer,
    or no item price to value it at); shapes ``(n,)``."""
    offered = np.zeros(len(log), dtype=bool)
    value = np.full(len(log), np.nan)
    price = (pd.to_numeric(log["item_price"], errors="coerce").to_numpy(float)
             if "item_price" in log.columns else np.full(len(log), np.nan))
    for arm in settings.bandit.arms:
        terms = arm.features.get("value")
        if not isinstance(terms, int | float) or terms <= 0:
            continue
        mask = (log["action"] == arm.name).to_numpy(bool)
        offered |= mask
        value[mask] = arm_cost(arm, price[mask], np.nan)
    return offered, value


def user_attributes(settings: Settings, users: Path | None) -> tuple[pd.DataFrame | None, str]:
    """The table joined on ``user_id`` for attributes the log lacks, and where it came from:
    ``users`` (Parquet or CSV, ``--attributes``), else the latest features build, else none."""
    if users is not None:
        path = Path(users)
        if not path.is_file():
            raise DataError(f"users table {path} is not a file", field="attributes")
        if path.suffix.lower() not in (".csv", ".parquet"):
            raise DataError(f"users table {path}: use a .parquet or .csv file", field="attributes")
        try:
            table = (pd.read_csv(path) if path.suffix.lower() == ".csv"
                     else pd.read_parquet(path))
        except (OSError, ValueError) as exc:  # empty, truncated, not a table
            raise DataError(f"users table {path}: cannot read it ({exc})",
                            field="attributes") from exc
        if "user_id" not in table.columns:
            raise DataError(f"{path}: a users table needs a user_id column",
                            field="attributes")
        return table, str(path)
    from features.build import available_as_of, load_features

    dates = available_as_of(settings)
    if not dates:
        return None, "none (no features built)"
    columns = ["user_id", *ATTRIBUTES]
    frame = load_features(settings, dates[-1])
    return frame[[c for c in columns if c in frame.columns]], f"features as_of {dates[-1]}"


def _with_attributes(log: pd.DataFrame, users: pd.DataFrame | None) -> pd.DataFrame:
    """The log with every attribute: its own values first, the users table's where missing."""
    out = log.copy()
    table = None
    if users is not None and "user_id" in out.columns:
        table = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id")
        table = table.set_index("user_id")
    for attribute in ATTRIBUTES:
        own = (out[attribute].astype("object") if attribute in out.columns
               else pd.Series(None, index=out.index, dtype="object"))
        own = own.where(~own.isin(["", "na", UNKNOWN]) & own.notna(), None)
        if table is not None and attribute in table.columns:
            joined = out["user_id"].astype(str).map(table[attribute].astype("object"))
            own = own.where(own.notna(), joined)
        out[attribute] = own.where(own.notna(), UNKNOWN).astype(str)
    return out


def _rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of decisions that showed an offer (``y_pred``: 1 where one was shown)."""
    return float(np.mean(y_pred)) if len(y_pred) else float("nan")


def _mean_value(y_true: np.ndarray, y_pred: np.ndarray, value: np.ndarray) -> float:
    """Mean worth of the offers shown (NaN: none with a known price)."""
    shown = np.asarray(value, dtype=float)[np.asarray(y_pred, dtype=bool)]
    shown = shown[~np.isnan(shown)]
    return float(shown.mean()) if shown.size else float("nan")


def _metrics(offered: np.ndarray, value: np.ndarray, groups: pd.Series) -> MetricFrame:
    """Offer rate, mean offer value and counts per group."""
    return MetricFrame(
        metrics={"offer_rate": _rate, "mean_offer_value": _mean_value,
                 "decisions": lambda y_true, y_pred: len(y_pred),
                 "offers": lambda y_true, y_pred: int(np.sum(y_pred))},
        y_true=offered.astype(int), y_pred=offered.astype(int),
        sensitive_features=groups.rename("group"),
        sample_params={"mean_offer_value": {"value": value}})


def _ordered(attribute: str, groups: Sequence[str]) -> list[str]:
    """Groups in the attribute's natural order (tiers best first), others alphabetically,
    ``unknown`` last."""
    natural = ORDER.get(attribute, ())

    def key(group: str) -> tuple[int, int, str]:
        if group == UNKNOWN:
            return (2, 0, group)
        return (0, natural.index(group), "") if group in natural else (1, 0, group)

    return sorted(groups, key=key)


def _attribute(attribute: str, frame: pd.DataFrame, offered: np.ndarray, value: np.ndarray,
               min_decisions: int) -> AttributeFairness:
    """The groups of one attribute and the ratio of their lowest to highest offer rate."""
    by_group = _metrics(offered, value, frame[attribute]).by_group
    groups = [GroupFairness(
        group=str(name), decisions=int(row["decisions"]), offers=int(row["offers"]),
        offer_rate=float(row["offer_rate"]),
        mean_offer_value=None if pd.isna(row["mean_offer_value"])
        else float(row["mean_offer_value"]))
        for name, row in by_group.iterrows()]
    order = _ordered(attribute, [g.group for g in groups])
    groups.sort(key=lambda g: order.index(g.group))
    compared = [g.group for g in groups
                if g.group != UNKNOWN and g.decisions >= min_decisions]
    ratio = lowest = highest = None
    if len(compared) >= 2:
        rows = frame[attribute].isin(compared).to_numpy()
        ratio = float(_metrics(offered[rows], value[rows], frame.loc[rows, attribute])
                      .ratio(method="between_groups")["offer_rate"])
        rates = {g.group: g.offer_rate for g in groups if g.group in compared}
        lowest, highest = min(rates, key=rates.get), max(rates, key=rates.get)
        ratio = 1.0 if np.isnan(ratio) else ratio  # nobody got an offer: all treated alike
    return AttributeFairness(attribute=attribute, groups=groups, ratio=ratio, lowest=lowest,
                             highest=highest, flagged=ratio is not None and ratio < FOUR_FIFTHS,
                             compared=compared)


def fairness(log: pd.DataFrame, settings: Settings, users: pd.DataFrame | None = None, *,
             users_source: str = "none", min_decisions: int = MIN_DECISIONS) -> FairnessReport:
    """The fairness report of a normalised decision log (:func:`experiments.logs.read_log`);
    ``users``: the table joined on ``user_id`` for attributes the log lacks."""
    treated = log[~log["control"].to_numpy(bool)].reset_index(drop=True)
    if treated.empty:
        raise DataError(f"the log holds no decision outside the control group ({len(log)} "
                        "in all): there is nothing to compare", field="logs")
    frame = _with_attributes(treated, users)
    offered, value = offer_values(frame, settings)
    attributes = [_attribute(a, frame, offered, value, min_decisions) for a in ATTRIBUTES]
    warnings = []
    for result in attributes:
        if result.flagged:
            warnings.append(
                f"{result.attribute}: {result.lowest} get offers at {result.ratio:.0%} of the "
                f"rate of {result.highest}, below the four-fifths rule")
        elif result.ratio is None:
            warnings.append(f"{result.attribute}: fewer than two groups with {min_decisions} "
                            "or more decisions and a known value; nothing to compare")
    arms = [arm.name for arm in settings.bandit.arms
            if isinstance(arm.features.get("value"), int | float)
            and float(arm.features["value"]) > 0]
    return FairnessReport(n_decisions=len(log), n_control=int(log["control"].sum()),
                          offer_arms=arms, min_decisions=min_decisions,
                          users_source=users_source, attributes=attributes, warnings=warnings)


def format_report(report: FairnessReport) -> str:
    """The report as text: one table per attribute, its ratio and whether it is flagged."""
    lines = [f"{report.n_decisions:,} decisions ({report.n_control:,} in the control group, "
             f"left out); offers: {', '.join(report.offer_arms) or 'none'}; users joined "
             f"from {report.users_source}.",
             f"ratio: the lowest offer rate over the highest, among groups with "
             f"{report.min_decisions}+ decisions; flagged below {report.threshold:.0%} (the "
             "four-fifths rule)."]
    for result in report.attributes:
        ratio = "n/a" if result.ratio is None else f"{result.ratio:.2f}"
        flag = "  FLAGGED" if result.flagged else ""
        lines += ["", f"{result.attribute}: ratio {ratio}{flag}",
                  f"  {'group':<20}{'decisions':>10}{'offers':>9}{'offer rate':>12}"
                  f"{'mean value':>12}"]
        for g in result.groups:
            mean = "-" if g.mean_offer_value is None else f"{g.mean_offer_value:,.2f}"
            lines.append(f"  {g.group:<20}{g.decisions:>10,}{g.offers:>9,}"
                         f"{g.offer_rate:>12.1%}{mean:>12}")
    return "\n".join(lines)
