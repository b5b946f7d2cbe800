"""Tiers, RFM segments, clusters, seller tiers and tags over a feature frame.

Pure pandas/numpy/scikit-learn, run after an engine computed the features, so every engine
gets the same segmentation. Each function takes the feature frame (one row per user) and
returns new columns aligned with its index; :func:`segment` adds them all.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from features.definitions import GROUP_FEATURES, model_inputs, seller_inputs
from features.expressions import compile_expression
from nextbest.config import (
    ClusterConfig,
    FeaturesConfig,
    PolicyConfig,
    RiskRule,
    StageRule,
    TagRule,
    TierConfig,
)
from nextbest.errors import ConfigError

# Tiers in their natural order, best first; ``new`` is also every unknown user's tier.
TIERS = ("platinum", "gold", "silver", "dormant", "churned", "new")
NEW_TIER = TIERS[-1]


def tier_order(tier: str) -> tuple[int, str]:
    """A sort key for tiers in their natural order (:data:`TIERS`), unknown tiers after
    them alphabetically."""
    return (TIERS.index(tier), "") if tier in TIERS else (len(TIERS), tier)
SELLER_TIERS = ("vip", "potential", "sleeping", "prospective")
PROSPECTIVE = SELLER_TIERS[-1]  # never consigned, but started a listing or holds resellables
# Lifecycle stages in their natural order; ``mature`` is the stage when no rule holds.
LIFECYCLE_STAGES = ("new", "growth", "mature", "decline", "churned")
DEFAULT_STAGE = "mature"
# Columns the lifecycle rules may read besides the features (given by a churn model).
SCORE_COLUMNS = ("churn_probability",)
NO_PURCHASE = "no_purchase"  # the segment of users without a completed order

# The R x F grid (rows: recency score 1-5, columns: frequency score 1-5). Every cell holds
# exactly one segment and each of the ten segments holds at least one cell.
RF_GRID: dict[str, tuple[tuple[int, int], ...]] = {
    "hibernating": tuple((r, f) for r in (1, 2) for f in (1, 2)),
    "at_risk": tuple((r, f) for r in (1, 2) for f in (3, 4)),
    "cant_lose": ((1, 5), (2, 5)),
    "about_to_sleep": ((3, 1), (3, 2)),
    "need_attention": ((3, 3),),
    "loyal": ((3, 4), (3, 5), (4, 4), (4, 5)),
    "promising": ((4, 1),),
    "potential_loyalist": ((4, 2), (4, 3), (5, 2), (5, 3)),
    "new_customers": ((5, 1),),
    "champions": ((5, 4), (5, 5)),
}
SEGMENTS = tuple(RF_GRID)
_CELL_SEGMENT = {cell: name for name, cells in RF_GRID.items() for cell in cells}

# Features K-Means sees (log1p, then standardised) and the profile reports.
CLUSTER_FEATURES = ("recency_days", "frequency_total", "monetary_total", "views_30d",
                    "carts_30d", "items_listed")


def segment_of(r_score: int, f_score: int) -> str:
    """The RFM segment of one R x F cell (scores 1-5)."""
    return _CELL_SEGMENT[(r_score, f_score)]


def is_buyer(frame: pd.DataFrame) -> pd.Series:
    """Users with at least one completed order before ``as_of``."""
    return frame["frequency_total"].fillna(0) > 0


# ---------------------------------------------------------------- tiers
def _top_n(values: pd.Series, n: int) -> pd.Series:
    """True for the rows whose value ranks among the ``n`` highest (ties at the edge included)."""
    rank = values.fillna(-np.inf).rank(method="min", ascending=False)
    return rank <= n


def _top_share(values: pd.Series, share: float) -> pd.Series:
    """True for the rows whose value ranks in the top ``share`` of ``values``."""
    return _top_n(values, int(np.ceil(share * len(values))))


def assign_tiers(frame: pd.DataFrame, config: TierConfig) -> pd.Series:
    """One tier per user (TierConfig): value share and recency decide, ``new`` if no purchase.

    Tier sizes are shares of all buyers: platinum is the ``platinum_share`` of buyers with
    the highest ``value_column`` among those who bought in the last
    ``platinum_recency_days``; gold the next ``gold_share`` of buyers, highest value first,
    among the others who bought in the last ``gold_recency_days``; any other buyer within
    ``silver_recency_days`` is silver, then dormant (``dormant_days``), then churned.
    """
    if config.value_column not in frame.columns:
        raise ConfigError(f"tiers.value_column {config.value_column!r} is not a feature column",
                          field="features.tiers.value_column")
    buyer = is_buyer(frame)
    recency = frame["recency_days"]
    value = frame[config.value_column]
    n_buyers = int(buyer.sum())

    def top(eligible: pd.Series, share: float) -> pd.Series:
        chosen = _top_n(value[eligible], int(np.ceil(share * n_buyers)))
        return chosen.reindex(frame.index, fill_value=False)

    platinum = top(buyer & (recency <= config.platinum_recency_days), config.platinum_share)
    gold = top(buyer & ~platinum & (recency <= config.gold_recency_days), config.gold_share)
    choices = [~buyer, platinum, gold, recency <= config.silver_recency_days,
               recency <= config.dormant_days]
    tiers = np.select(choices, [NEW_TIER, "platinum", "gold", "silver", "dormant"], "churned")
    return pd.Series(tiers, index=frame.index, name="tier")


# ---------------------------------------------------------------- RFM
def quintile_scores(values: pd.Series, *, higher_is_better: bool = True) -> pd.Series:
    """Scores 1-5 by quintile of rank (5 best); equal values share a score."""
    if values.empty:
        return pd.Series(dtype="int64", index=values.index)
    pct = values.rank(method="average", pct=True, ascending=higher_is_better)
    return np.ceil(pct * 5).clip(1, 5).astype("int64")


def rfm_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """``r_score``, ``f_score``, ``m_score`` over buyers (1-5, 5 best); 0 for non-buyers."""
    buyer = is_buyer(frame)
    buyers = frame.loc[buyer]
    scores = pd.DataFrame(0, index=frame.index, columns=["r_score", "f_score", "m_score"],
                          dtype="int64")
    scores.loc[buyer, "r_score"] = quintile_scores(buyers["recency_days"], higher_is_better=False)
    scores.loc[buyer, "f_score"] = quintile_scores(buyers["frequency_total"])
    scores.loc[buyer, "m_score"] = quintile_scores(buyers["monetary_total"])
    return scores


def rfm_segments(scores: pd.DataFrame) -> pd.Series:
    """The R x F grid segment of each user; ``no_purchase`` where the scores are 0."""
    codes = scores["r_score"] * 10 + scores["f_score"]
    lookup = {r * 10 + f: name for (r, f), name in _CELL_SEGMENT.items()}
    return codes.map(lookup).fillna(NO_PURCHASE).rename("segment").astype(object)


# ---------------------------------------------------------------- seller tiers
def assign_seller_tiers(frame: pd.DataFrame, config: TierConfig,
                        policy: PolicyConfig | None = None) -> pd.Series:
    """vip / potential / sleeping for sellers by seller RFM, prospective for users who never
    consigned but for whom ``seller_prospect_when`` holds, null for everyone else.

    Active sellers listed or sold within ``seller_active_days`` (R). VIP: the top
    ``seller_vip_share`` of active sellers by ``seller_value_column`` (M) among those with
    R <= ``seller_vip_recency_days`` and ``sales_365d`` >= ``seller_vip_min_sales`` (F);
    potential: the other active sellers; sleeping: the inactive ones.
    """
    if config.seller_value_column not in frame.columns:
        raise ConfigError(f"tiers.seller_value_column {config.seller_value_column!r} is not a "
                          "feature column", field="features.tiers.seller_value_column")
    seller = frame["is_seller"].fillna(False).astype(bool)
    recency = frame["seller_recency_days"]
    active = seller & (recency <= config.seller_active_days)
    candidate = active & (recency <= config.seller_vip_recency_days) & (
        frame["sales_365d"].fillna(0) >= config.seller_vip_min_sales)
    value = frame[config.seller_value_column]
    vip = _top_n(value[candidate], int(np.ceil(config.seller_vip_share * int(active.sum()))))
    vip = vip.reindex(frame.index, fill_value=False) & candidate
    prospect = compile_expression(config.seller_prospect_when,
                                  rule="tiers.seller_prospect_when", known=_known(frame),
                                  forbidden=policy or PolicyConfig()).mask(frame)
    tiers = np.select([vip, active, seller, prospect & ~seller],
                      list(SELLER_TIERS), None)
    return pd.Series(tiers, index=frame.index, name="seller_tier", dtype=object)


# ---------------------------------------------------------------- tags
def _known(frame: pd.DataFrame) -> set[str]:
    """The names a rule may read: the frame's columns and every feature the definition
    produces, which a frame not made by ``features build`` (the simulator's population) may
    lack (a rule is then false there). A name outside both is a misspelling."""
    windows = FeaturesConfig().windows_days
    return {*frame.columns, *model_inputs(windows), *seller_inputs(windows), *GROUP_FEATURES}


def _tag_mask(frame: pd.DataFrame, rule: TagRule | RiskRule,
              policy: PolicyConfig | None) -> np.ndarray:
    """Where ``rule.when`` holds (:mod:`features.expressions`); false wherever a column it
    names is missing on that row (or from the frame, for a group feature). Any other name
    that is not a column, or one the ``policy`` forbids, is a ConfigError."""
    expression = compile_expression(rule.when, rule=f"tag {rule.name!r}", known=_known(frame),
                                    forbidden=policy or PolicyConfig())
    return expression.mask(frame)


def _masks(frame: pd.DataFrame, rules: Sequence[TagRule | RiskRule],
           policy: PolicyConfig | None = None) -> np.ndarray:
    """Shape ``(len(frame), len(rules))``: where each rule holds."""
    if not rules:
        return np.zeros((len(frame), 0), dtype=bool)
    return np.column_stack([_tag_mask(frame, rule, policy) for rule in rules])


def _lists(masks: np.ndarray, names: Sequence[str], index: pd.Index) -> list[list[str]]:
    """Per row, the names whose mask column holds (in ``names`` order)."""
    if not names:
        return [[] for _ in range(len(index))]
    # Users share few distinct combinations: build each list once, then map the codes.
    codes = masks.astype(np.int64) @ (1 << np.arange(len(names), dtype=np.int64))
    lists = {int(c): [n for i, n in enumerate(names) if c >> i & 1] for c in np.unique(codes)}
    return [lists[c] for c in codes.tolist()]


def assign_tags(frame: pd.DataFrame, rules: Sequence[TagRule],
                policy: PolicyConfig | None = None) -> pd.Series:
    """The list of tag names whose rule holds, per user (rules in config order); a rule
    reading one of ``policy.forbidden_features`` (default: the built-in list) is refused."""
    lists = _lists(_masks(frame, rules, policy), [rule.name for rule in rules], frame.index)
    return pd.Series(lists, index=frame.index, name="tags", dtype=object)


# ---------------------------------------------------------------- risk
def _reason_fields(rule: RiskRule, columns: pd.Index) -> list[str]:
    """The ``{column}`` fields of a risk reason; ConfigError for one that is no column."""
    fields = [name for _, name, _, _ in string.Formatter().parse(rule.reason) if name]
    unknown = sorted(set(fields) - _known(pd.DataFrame(columns=columns)))
    if unknown:
        raise ConfigError(f"risk rule {rule.name!r}: reason {rule.reason!r} names unknown "
                          f"column(s) {', '.join(unknown)}",
                          field="features.risk_rules")
    return fields


def _shown(value: Any) -> Any:
    """A feature value as a reason shows it: whole numbers without decimals, others rounded."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unknown"
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else round(float(value), 2)
    return value


def risk_reason(rule: RiskRule, row: Mapping[str, Any]) -> str:
    """``"name: reason"`` with the reason's fields filled from ``row``."""
    values = {name: _shown(row.get(name)) for name in _reason_fields(rule, pd.Index(row))}
    return f"{rule.name}: {rule.reason.format_map(values)}"


def assign_risk(frame: pd.DataFrame, rules: Sequence[RiskRule],
                policy: PolicyConfig | None = None) -> tuple[pd.Series, pd.Series]:
    """The risk tags of each user and, aligned with them, a readable reason per tag.

    Returns ``(risk_tags, risk_reasons)``, both lists per user (empty for most users); the
    reasons read ``"card_switching: paid with 4 different payment fingerprints in 30 days"``.
    """
    masks = _masks(frame, rules, policy)
    for rule in rules:
        _reason_fields(rule, frame.columns)
    tags = _lists(masks, [rule.name for rule in rules], frame.index)
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    flagged = np.flatnonzero(masks.any(axis=1)) if rules else np.array([], dtype=int)
    for position in flagged:
        row = frame.iloc[position].to_dict()
        reasons[position] = [risk_reason(rule, row) for i, rule in enumerate(rules)
                             if masks[position, i]]
    return (pd.Series(tags, index=frame.index, name="risk_tags", dtype=object),
            pd.Series(reasons, index=frame.index, name="risk_reasons", dtype=object))


# ---------------------------------------------------------------- lifecycle
def assign_lifecycle(frame: pd.DataFrame, rules: Sequence[StageRule],
                     churn_probability: pd.Series | None = None) -> pd.Series:
    """Each user's lifecycle stage: the stage of the first rule that holds, else ``mature``.

    ``churn_probability`` (aligned with ``frame``), when a churn model scored the users,
    lets rules that read it apply; without it those rules never hold.
    """
    data = frame if churn_probability is None else frame.assign(
        churn_probability=churn_probability)
    known = [*_known(frame), *SCORE_COLUMNS]
    stages = np.full(len(frame), DEFAULT_STAGE, dtype=object)
    decided = np.zeros(len(frame), dtype=bool)
    for i, rule in enumerate(rules):
        expression = compile_expression(rule.when, rule=f"lifecycle rule {i} ({rule.stage})",
                                        known=known)
        hit = expression.mask(data) & ~decided
        stages[hit] = rule.stage
        decided |= hit
    return pd.Series(stages, index=frame.index, name="lifecycle_stage", dtype=object)


# ---------------------------------------------------------------- clusters
class ClusterProfile(BaseModel):
    """A readable description of one K-Means cluster."""

    cluster: int
    name: str
    size: int
    share: float
    means: dict[str, float | None]


class ClusterReport(BaseModel):
    """What clusters.json holds: the chosen k, the silhouette of each k tried, the profiles."""

    k: int
    silhouette: dict[int, float]
    features: list[str]
    sample_size: int
    clusters: list[ClusterProfile]


def _cluster_matrix(frame: pd.DataFrame) -> np.ndarray:
    """log1p of the cluster features; no purchase yet counts as the longest recency seen."""
    data = frame[list(CLUSTER_FEATURES)].astype("float64")
    longest = data["recency_days"].max()
    data["recency_days"] = data["recency_days"].fillna(0.0 if np.isnan(longest) else longest)
    return np.log1p(data.fillna(0.0).clip(lower=0.0).to_numpy())


def _choose_k(sample: np.ndarray, config: ClusterConfig) -> tuple[int, dict[int, float]]:
    """The k in [k_min, k_max] whose K-Means has the best silhouette (smallest k on ties).

    Scored on ``sample`` (at most ``silhouette_sample`` rows): silhouette is quadratic in
    rows, and the choice of k does not need more.
    """
    distinct = len(np.unique(sample, axis=0))
    scores: dict[int, float] = {}
    for k in range(config.k_min, config.k_max + 1):
        if k >= distinct:
            break
        model = KMeans(n_clusters=k, n_init=config.n_init, random_state=config.seed).fit(sample)
        scores[k] = round(float(silhouette_score(sample, model.labels_)), 6)
    best = max(scores, key=lambda k: (scores[k], -k)) if scores else 1
    return best, scores


def _cluster_name(z: pd.Series) -> str:
    """A short name from a cluster's standardised means (z-scores of the log features)."""
    if z["frequency_total"] < -0.5 and z["monetary_total"] < -0.5:
        buying = "browsing non-buyers" if z["views_30d"] > 0.5 else "quiet non-buyers"
    else:
        often = ("frequent" if z["frequency_total"] > 0.5
                 else "occasional" if z["frequency_total"] > -0.5 else "rare")
        spend = "high" if z["monetary_total"] > 0.5 else "low" if z["monetary_total"] < -0.5 else "mid"
        buying = f"{often} {spend} spenders"
    if "non-buyers" not in buying:
        if z["recency_days"] > 0.5:
            buying = f"lapsed {buying}"
        elif z["recency_days"] < -0.5:
            buying = f"active {buying}"
    if z["items_listed"] > 0.5:
        buying = f"{buying} who consign"
    return buying


def assign_clusters(frame: pd.DataFrame, config: ClusterConfig) -> tuple[pd.Series, ClusterReport]:
    """K-Means cluster ids (0 = lowest mean spend) and a readable profile of each cluster.

    k in [k_min, k_max] is chosen by silhouette on ``silhouette_sample`` users, then the
    model is fit on a seeded sample of at most ``sample_size`` users of scaled log features
    and every user is assigned to the nearest centre.
    """
    matrix = _cluster_matrix(frame)
    rng = np.random.default_rng(config.seed)
    # In random order, so that any prefix of the sample is a random sample too.
    take = rng.permutation(len(matrix))[:config.sample_size]
    scaler = StandardScaler().fit(matrix[take]) if len(take) else None
    if scaler is None:
        report = ClusterReport(k=0, silhouette={}, features=list(CLUSTER_FEATURES),
                               sample_size=0, clusters=[])
        return pd.Series(dtype="int64", index=frame.index, name="cluster"), report
    sample = scaler.transform(matrix[take])
    # These fits are small: one thread avoids OpenMP start-up and spinning, which cost
    # several times the work itself (and more on a busy machine).
    with threadpool_limits(limits=1):
        k, scores = _choose_k(sample[:config.silhouette_sample], config)
        model = KMeans(n_clusters=k, n_init=config.n_init, random_state=config.seed).fit(sample)
        raw_labels = model.predict(scaler.transform(matrix))
    # Renumber by mean spend so cluster ids read in order and stay stable across runs.
    order = np.argsort(model.cluster_centers_[:, CLUSTER_FEATURES.index("monetary_total")],
                       kind="stable")
    relabel = np.empty_like(order)
    relabel[order] = np.arange(len(order))
    labels = pd.Series(relabel[raw_labels], index=frame.index, name="cluster", dtype="int64")
    profiles = _profiles(frame, labels, scaler.transform(matrix))
    report = ClusterReport(k=int(model.n_clusters), silhouette=scores,
                           features=list(CLUSTER_FEATURES), sample_size=int(len(take)),
                           clusters=profiles)
    return labels, report


def _profiles(frame: pd.DataFrame, labels: pd.Series, scaled: np.ndarray) -> list[ClusterProfile]:
    """Size, share, feature means and a generated (unique) name per cluster."""
    means = frame[list(CLUSTER_FEATURES)].astype("float64").groupby(labels.to_numpy()).mean()
    z = pd.DataFrame(scaled, columns=list(CLUSTER_FEATURES)).groupby(labels.to_numpy()).mean()
    sizes = labels.value_counts()
    profiles, seen = [], {}
    for cluster in sorted(sizes.index):
        name = _cluster_name(z.loc[cluster])
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({seen[name]})"
        profiles.append(ClusterProfile(
            cluster=int(cluster), name=name, size=int(sizes[cluster]),
            share=round(float(sizes[cluster] / len(labels)), 6),
            means={k: (None if np.isnan(v) else round(float(v), 4))
                   for k, v in means.loc[cluster].items()}))
    return profiles


# ---------------------------------------------------------------- all together
def segment(frame: pd.DataFrame, config: FeaturesConfig,
            policy: PolicyConfig | None = None) -> tuple[pd.DataFrame, ClusterReport]:
    """Add tier, segment, r/f/m scores, cluster, seller tier and tags, lifecycle stage, tags (risk
    tags last) and risk reasons to a feature frame (no tag or risk rule may read
    ``policy.forbidden_features``)."""
    out = frame.copy(deep=False)  # copy-on-write: the input frame is never changed
    out["tier"] = assign_tiers(frame, config.tiers)
    scores = rfm_scores(frame)
    out[["r_score", "f_score", "m_score"]] = scores
    out["segment"] = rfm_segments(scores)
    out["cluster"], report = assign_clusters(frame, config.clusters)
    out["seller_tier"] = assign_seller_tiers(frame, config.tiers, policy)
    out["seller_tags"] = assign_tags(frame, config.seller_tags, policy).rename("seller_tags")
    out["lifecycle_stage"] = assign_lifecycle(frame, config.lifecycle)
    tags = assign_tags(frame, config.tags, policy)
    risk_tags, out["risk_reasons"] = assign_risk(frame, config.risk_rules, policy)
    out["tags"] = [[*t, *r] for t, r in zip(tags, risk_tags, strict=True)]
    return out, report
