"""The one validated configuration object of nextbest.

Every value has a built-in default. A YAML file (``nextbest.yaml`` in the working
directory, or the path in ``NEXTBEST_CONFIG``) overrides the defaults, and any single
value can be overridden by an environment variable named ``NEXTBEST__SECTION__KEY``
(for example ``NEXTBEST__BANDIT__CONTROL_SHARE=0.1`` or
``NEXTBEST__PATHS__DATA_DIR=/srv/data``). Values of text settings are taken as they are;
others are parsed as YAML scalars, so numbers, booleans and lists (``[a, b]``) work.

Call :func:`load_settings` once at the edge (CLI, service start-up) and pass the object
down; library code never reads ``os.environ`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nextbest.errors import ConfigError, Conflict, NotFound

ENV_PREFIX = "NEXTBEST__"
DEFAULT_CONFIG_FILE = "nextbest.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The places under ``paths.data_dir`` that follow it unless set themselves.
DATA_PLACES = {"raw_dir": "raw", "latent_dir": "latent", "features_dir": "features",
               "store_path": "online_store.sqlite", "decision_log": "decisions.sqlite",
               "bandit_dir": "bandit", "campaign_store": "campaigns.sqlite",
               "keys_file": "keys.yaml", "audit_log": "audit.sqlite"}


class PathsConfig(_Section):
    """Where data lives, relative to the working directory unless absolute; ``~`` is the
    home directory. The places under ``data_dir`` move with it unless set themselves."""

    data_dir: Path = Path("data")
    raw_dir: Path = Path("data/raw")
    latent_dir: Path = Path("data/latent")
    features_dir: Path = Path("data/features")
    store_path: Path = Path("data/online_store.sqlite")
    decision_log: Path = Path("data/decisions.sqlite")
    bandit_dir: Path = Path("data/bandit")
    # Events, items, delayed timers, the outbox and campaign runs (SQLite).
    campaign_store: Path = Path("data/campaigns.sqlite")
    # API keys (hashes only; nextbest keys create) and the hash-chained audit log.
    keys_file: Path = Path("data/keys.yaml")
    audit_log: Path = Path("data/audit.sqlite")
    reports_dir: Path = Path("reports")
    mlruns_dir: Path = Path("mlruns")

    @model_validator(mode="before")
    @classmethod
    def _follow_data_dir(cls, data: Any) -> Any:
        """Put the places not set themselves under a ``data_dir`` that was set."""
        if not isinstance(data, dict) or data.get("data_dir") in (None, ""):
            return data
        root = Path(data["data_dir"])
        return {**{key: root / name for key, name in DATA_PLACES.items()}, **data}

    @model_validator(mode="after")
    def _expand_home(self) -> PathsConfig:
        for name in type(self).model_fields:
            path = getattr(self, name)
            if str(path).startswith("~"):
                setattr(self, name, path.expanduser())
        return self


class TierConfig(_Section):
    """Tier thresholds (docs/ARCHITECTURE.md, features/).

    Platinum: the top ``platinum_share`` of buyers by ``value_column`` with a purchase in
    the last ``platinum_recency_days``. Gold: the next ``gold_share`` with a purchase in the
    last ``gold_recency_days``. Silver: any other buyer with a purchase in the last
    ``silver_recency_days``. Dormant: last purchase up to ``dormant_days`` ago. Churned:
    longer. New: no purchase yet.
    """

    value_column: str = "monetary_365d"
    platinum_share: float = Field(0.05, gt=0, lt=1)
    platinum_recency_days: int = Field(30, gt=0)
    gold_share: float = Field(0.15, gt=0, lt=1)
    gold_recency_days: int = Field(60, gt=0)
    silver_recency_days: int = Field(90, gt=0)
    dormant_days: int = Field(180, gt=0)
    # Seller tiers for consignors, by seller RFM. R: seller_recency_days (days since the
    # last listing or sale); F: sales_365d; M: seller_value_column. VIP: the top
    # ``seller_vip_share`` of active sellers by M, with R <= seller_vip_recency_days and
    # F >= seller_vip_min_sales. Potential: other sellers with R <= seller_active_days.
    # Sleeping: sellers idle longer. Prospective: users who never consigned for whom
    # ``seller_prospect_when`` holds (a listing started and not finished, or items bought
    # that they could consign).
    seller_value_column: str = "commission_365d"
    seller_vip_share: float = Field(0.2, gt=0, lt=1)
    seller_vip_recency_days: int = Field(30, gt=0)
    seller_vip_min_sales: int = Field(3, ge=0)
    seller_active_days: int = Field(90, gt=0)
    seller_prospect_when: str = "unfinished_listings >= 1 or resellable_items >= 3"

    @model_validator(mode="after")
    def _ordered(self) -> TierConfig:
        days = [self.platinum_recency_days, self.gold_recency_days, self.silver_recency_days,
                self.dormant_days]
        if days != sorted(days):
            raise ValueError("tier recency days must not decrease from platinum to dormant")
        if self.platinum_share + self.gold_share >= 1:
            raise ValueError("platinum_share + gold_share must be below 1")
        if self.seller_vip_recency_days > self.seller_active_days:
            raise ValueError("seller_vip_recency_days must not exceed seller_active_days")
        return self


class TagRule(_Section):
    """A dynamic tag: ``when`` is a condition of features/expressions.py over feature columns."""

    name: str
    when: str
    description: str = ""


class RiskRule(_Section):
    """A risk tag: a user for whom ``when`` holds gets tag ``name`` and lands in the review
    queue with ``reason``, a sentence whose ``{column}`` fields are filled with the user's
    feature values. A risk tag removes automated incentives until an operator clears it; it
    never changes a score, price or tier."""

    name: str
    when: str
    reason: str


class StageRule(_Section):
    """A lifecycle stage: the first rule whose ``when`` holds names the user's stage."""

    stage: Literal["new", "growth", "mature", "decline", "churned"]
    when: str


def _default_tags() -> list[TagRule]:
    return [
        TagRule(name="high_value", when="monetary_365d >= 1000",
                description="spent 1,000 or more in the last year"),
        TagRule(name="price_sensitive", when="coupon_share >= 0.5 and frequency_total >= 2",
                description="uses a coupon on at least half of their orders"),
        TagRule(name="browse_no_buy", when="views_30d >= 10 and frequency_30d == 0",
                description="browsed ten or more items in 30 days without buying"),
        TagRule(name="cart_abandoner", when="cart_abandonments_30d >= 2",
                description="left two or more carts in 30 days"),
        TagRule(name="coupon_abuser", when="coupon_share >= 0.8 and return_rate >= 0.3 and frequency_total >= 3",
                description="nearly always buys with a coupon and often returns"),
        TagRule(name="at_risk", when="recency_days > 60 and frequency_total >= 3",
                description="a regular buyer who has not bought for 60 days"),
        # Behaviour paths (purchase events of the last 365 days, sessions).
        TagRule(name="comparison_shopper",
                when="compare_items_per_purchase >= 4 and purchases_viewed_365d >= 2",
                description="views four or more items of the category in the session "
                            "before buying"),
        TagRule(name="impulse_buyer",
                when="minutes_to_buy_median < 10 and purchases_viewed_365d >= 2",
                description="buys within ten minutes of first seeing the item (median)"),
        TagRule(name="order_history_rereader", when="order_history_views_30d >= 6",
                description="looked at their order history six or more times in 30 days"),
        TagRule(name="cart_hoarder", when="carted_not_bought_90d >= 8",
                description="eight or more items put in the cart in 90 days and not bought"),
        # Sentiment (reviews, shares and complaints of the last 365 days).
        TagRule(name="fan", when="rating_mean_365d >= 4.5 and reviews_365d >= 2 "
                                 "and shares_365d >= 1",
                description="rates highly and shares"),
        TagRule(name="silent_majority",
                when="frequency_365d >= 3 and reviews_365d == 0 and complaints_365d == 0",
                description="buys but never reviews or complains"),
        TagRule(name="critic", when="rating_mean_365d <= 2.5 and reviews_365d >= 2",
                description="rates low"),
        TagRule(name="complaint_escalation",
                when="complaint_rate_365d > 0.15 and complaints_365d >= 2",
                description="complains about more than 15% of orders: senior support"),
        TagRule(name="high_spend_and_complaining",
                when="monetary_365d >= 1000 and complaint_rate_365d > 0.15 "
                     "and complaints_365d >= 2",
                description="a high spender who complains: priority service channel, never "
                            "down-weighted"),
    ]


def _default_seller_tags() -> list[TagRule]:
    return [
        TagRule(name="stale_lister", when="stale_listings >= 3",
                description="three or more listings unsold 60 days after listing: a price "
                            "suggestion"),
        TagRule(name="slow_seller", when="days_to_sell >= 45 and items_sold >= 2",
                description="items take 45 days or more to sell (mean)"),
        TagRule(name="fast_seller", when="sell_through_rate >= 0.6 and items_listed >= 5",
                description="sells most of what they list"),
        TagRule(name="sales_dropping", when="sales_30d == 0 and sales_365d >= 6",
                description="sold six or more items in a year, none in the last 30 days"),
        TagRule(name="unfinished_listing", when="unfinished_listings >= 1",
                description="started a listing and did not finish it"),
        TagRule(name="holds_resellable_items", when="resellable_items >= 3",
                description="bought three or more items that keep their value, 90+ days ago"),
    ]


def _default_risk_rules() -> list[RiskRule]:
    return [
        RiskRule(name="card_switching", when="payment_fingerprints_30d >= 3",
                 reason="paid with {payment_fingerprints_30d} different payment "
                        "fingerprints in 30 days"),
        RiskRule(name="ip_jumping",
                 when="countries_24h >= 2 or countries_30d >= 3 or ip_prefixes_30d >= 8",
                 reason="came from {countries_24h} countries in 24 hours, {countries_30d} "
                        "countries and {ip_prefixes_30d} IP prefixes in 30 days"),
        RiskRule(name="perk_abuser",
                 when="new_user_perks >= 1 and purchases_after_perk == 0 "
                      "and fingerprint_accounts >= 2 and perk_age_days >= 30",
                 reason="took a new-user perk {perk_age_days} days ago, never bought again, "
                        "and paid with a card used by {fingerprint_accounts} accounts"),
        RiskRule(name="serial_returner", when="returns_total >= 3 and return_rate >= 0.7",
                 reason="sent back {returns_total} orders, {return_rate} of what they kept "
                        "or returned"),
    ]


def _default_lifecycle() -> list[StageRule]:
    return [
        StageRule(stage="churned", when="recency_days > 180"),
        # A rule is false where a column it reads is missing: one rule per condition.
        StageRule(stage="new", when="frequency_total == 0"),
        StageRule(stage="new", when="first_purchase_days <= 90"),
        StageRule(stage="decline", when="recency_days > 90"),
        StageRule(stage="decline", when="frequency_prev_90d >= 2 "
                                        "and frequency_90d * 2 <= frequency_prev_90d"),
        StageRule(stage="decline", when="churn_probability >= 0.6"),
        StageRule(stage="growth", when="first_purchase_days <= 365 "
                                       "and frequency_90d >= frequency_prev_90d"),
    ]


class AlertConfig(_Section):
    dormant_share_max: float = Field(0.3, ge=0, le=1)
    tier_share_shift_max: float = Field(0.05, ge=0, le=1)
    platinum_churn_risk: float = Field(0.5, ge=0, le=1)
    platinum_recency_risk_days: int = Field(21, gt=0)


class ClusterConfig(_Section):
    """K-Means on scaled log RFM and behaviour features; k in [k_min, k_max] by silhouette."""

    k_min: int = Field(2, ge=2)
    k_max: int = Field(8, ge=2)
    sample_size: int = Field(20000, gt=100)
    # Silhouette is quadratic in rows, so it is scored on a smaller sample of the fit sample.
    silhouette_sample: int = Field(2000, gt=100)
    n_init: int = Field(1, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _k_range(self) -> ClusterConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class FeaturesConfig(_Section):
    engine: Literal["duckdb", "spark"] = "duckdb"
    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90, 365])
    tiers: TierConfig = Field(default_factory=TierConfig)
    tags: list[TagRule] = Field(default_factory=_default_tags)
    risk_rules: list[RiskRule] = Field(default_factory=_default_risk_rules)
    # Tags of the seller side (``seller_tags``, what /score answers for subject seller).
    seller_tags: list[TagRule] = Field(default_factory=_default_seller_tags)
    # In order; the first rule that holds names the stage, ``mature`` when none does. A rule
    # reading churn_probability applies where a churn model scored the user.
    lifecycle: list[StageRule] = Field(default_factory=_default_lifecycle)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    clusters: ClusterConfig = Field(default_factory=ClusterConfig)
    # Send time: a user with fewer active moments (orders, events) in the last year than this
    # gets the platform's best hour instead of their own.
    best_hour_min_events: int = Field(5, ge=1)
    spark_master: str = "local[*]"
    spark_shuffle_partitions: int = Field(8, ge=1)
    # DuckDB runs in-process: cap its memory; threads 0 means one per core.
    duckdb_memory_limit: str = "4GB"
    duckdb_threads: int = Field(0, ge=0)
    # `data import` leaves the table as it was when more than this share of rows is rejected.
    import_max_reject_share: float = Field(0.1, ge=0, le=1)
    # `features build` refuses (without --force) an as_of more than this many days after the
    # day after the data's last order or event: the store would keep its records over every
    # later correct build.
    as_of_max_days_past_data: int = Field(30, ge=0)


class StoreConfig(_Section):
    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "nextbest:"
    redis_timeout_seconds: float = Field(5.0, gt=0)
    # How long a writer or reader waits for a lock held by another process.
    sqlite_timeout_seconds: float = Field(30.0, gt=0)


class StorageConfig(_Section):
    """Where the decision log, campaign store, audit log and bandit checkpoints live: unset,
    SQLite files under ``paths`` (one host); ``postgresql://user@host:port/db``, one
    PostgreSQL database shared by every replica and the learner (many hosts)."""

    url: str | None = None
    # How often a standby learner asks for the learner lease.
    lease_poll_seconds: float = Field(0.5, gt=0)

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        if url in (None, ""):
            return None
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (unset: SQLite files under paths)")
        return url


class LabelConfig(_Section):
    population_days: int = Field(365, gt=0)
    churn_horizon_days: int = Field(90, gt=0)
    propensity_horizon_days: int = Field(30, gt=0)
    # Seller churn: no new listing in this many days after the cutoff; population: sellers
    # who listed or sold in the population_days before it.
    seller_churn_horizon_days: int = Field(90, gt=0)
    ltv_horizon_days: int = Field(365, gt=0)


class TrainingConfig(_Section):
    labels: LabelConfig = Field(default_factory=LabelConfig)
    cutoffs: int = Field(6, ge=1)
    cutoff_step_days: int = Field(30, gt=0)
    seed: int = 0
    num_boost_round: int = Field(1000, gt=0)
    early_stopping_rounds: int = Field(30, gt=0)
    learning_rate: float = Field(0.1, gt=0)
    num_leaves: int = Field(31, gt=1)
    min_child_samples: int = Field(50, gt=0)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    # 0 lets LightGBM use every core.
    num_threads: int = Field(0, ge=0)
    # Users sampled (seeded) to fit BG/NBD; scoring covers everyone.
    bgnbd_sample: int = Field(50000, gt=100)
    bgnbd_penalizer: float = Field(0.001, ge=0)


class ArmConfig(_Section):
    """One arm of the bandit. Cost = ``cost`` + ``cost_rate`` x item price, paid on conversion."""

    name: str
    cost: float = Field(0.0, ge=0)
    cost_rate: float = Field(0.0, ge=0)
    features: dict[str, str | float] = Field(default_factory=dict)
    exclude_tags: list[str] = Field(default_factory=list)
    # Campaign messages with this arm to one user in 7 days (in-page answers never count).
    max_per_user_per_week: int | None = Field(None, ge=0)
    # Who may get the arm: an expression (features/expressions.py) over the user's store
    # record, scores, ``tier`` and ``tags`` (at a seller decision point: the seller tier and
    # seller tags) and the request (``item_price``, ...). Empty: everyone. The arm is removed
    # where it does not hold, or reads a value the user lacks.
    eligible_when: str = ""
    description: str = ""


def _default_arms() -> list[ArmConfig]:
    return [
        ArmConfig(name="coupon", cost=5.0, cost_rate=0.10,
                  features={"kind": "discount", "value": 0.10},
                  exclude_tags=["coupon_abuser"], max_per_user_per_week=2,
                  description="10% off this item"),
        ArmConfig(name="installment", cost=0.0, cost_rate=0.03,
                  features={"kind": "financing", "value": 0.03},
                  max_per_user_per_week=3,
                  description="pay in 3 interest-free installments"),
        ArmConfig(name="certification", cost=0.5, cost_rate=0.0,
                  features={"kind": "trust", "value": 0.0},
                  description="authenticity certification and condition report"),
    ]


class ExplorationConfig(_Section):
    # What VW learns (decisions/bandit.py):
    # - "conversion": a VW logistic regression of P(convert | user, context, arm); an arm's
    #   expected reward is that probability x its known margin (the decision's value minus
    #   the arm's cost), and the explorer below turns those into the pmf. Default: on the
    #   simulator (last 10,000 of 50,000 decisions, seeds 1-10, benchmarks/policy_quality.py)
    #   it reaches 0.926-0.939 of the oracle (median 0.933) and 1.096x-1.114x the static
    #   rules (median 1.102x) with the N and I namespaces, NA/NIA and learning_rate 0.1
    #   (bins only, UA, 0.5: 0.922-0.934, median 0.927, every seed lower), where "profit"
    #   earns about 1.085x, because the margin is known, not learned from noisy profit.
    #   Its shortfall is the model, not exploration (benchmarks/policy_diagnosis.py, seed 1:
    #   0.066 of the oracle lost to a wrong greedy arm, 0.002 to exploring), and the model
    #   class: a logistic form on these numbers fitted to 40,000 uniformly logged rewards
    #   reaches about 0.94-0.95 (0.95 fitted to the TRUE probabilities); LightGBM fitted to
    #   the true probabilities of the eligible arms about 0.96.
    # - "conversion_revenue": "conversion" whose margin uses a learned revenue: a second VW
    #   regression learns log(revenue / value) of the conversions per (user, context, arm)
    #   (the seller point's: a seller's sold value in the window is not the listing's price).
    # - "profit": VW --cb_explore_adf with VW's own explorer, regressing the profit itself.
    model: Literal["conversion", "conversion_revenue", "profit"] = "conversion"
    algorithm: Literal["squarecb", "epsilon", "softmax", "bag"] = "squarecb"
    epsilon: float = Field(0.05, ge=0, le=1)
    # squarecb's greediness grows as gamma_scale * t ** gamma_exponent (t: rewards learned),
    # gaps in reward / reward.scale. On the simulator 10 explored best for model
    # "conversion" (2: too exploratory; 10-100 within 0.3%) and 2.0 for model "profit"; 10
    # for "conversion_revenue" on the seller simulator (5 and 30 earned less).
    gamma_scale: float = Field(10.0, gt=0)
    gamma_exponent: float = Field(0.5, ge=0)
    # Model "profit" only (VW --clip_p): a logged probability below this counts as this in
    # the importance weight, so a rarely explored arm's reward weighs at most
    # 1/clip_probability. 0.5 beat no clipping on the simulator; 0 turns it off. The
    # "conversion" model is an unweighted regression on the chosen arm (SquareCB's oracle).
    clip_probability: float = Field(0.5, ge=0, le=1)
    # Namespace letters (S, U, N, C, I, P, A; see decisions/encoding.py) crossed: two
    # letters -> -q, three -> --cubic, four -> --interactions. NA and NIA: a slope per arm
    # of each of the buyer's numbers, and of each number times each item number (the
    # default; UCA, every bin x context token x arm, did worse). Model "profit" wants the
    # value-scaled lifts too: PA, PUA, PCA, PSA (namespace P is not an input of the
    # "conversion" model).
    interactions: list[Annotated[str, Field(pattern=r"^[SUNCIPA]{2,4}$")]] = Field(
        default_factory=lambda: ["SA", "CA", "UA", "NA", "IA", "NIA"])
    softmax_lambda: float = Field(10.0, gt=0)
    bag_size: int = Field(5, ge=2)
    # VW learning rate (-l) of models "conversion" and "conversion_revenue"; "profit" uses
    # VW's default. 0.1 for "conversion" with the N and I namespaces (simulator, seeds 1-3:
    # 0.5 earned about 0.004 of the oracle less, 0.05 about 0.001 less).
    learning_rate: float = Field(0.1, gt=0)
    extra_args: str = ""

    @model_validator(mode="after")
    def _model_supports_algorithm(self) -> ExplorationConfig:
        if self.model != "profit" and self.algorithm == "bag":
            raise ValueError(f"algorithm 'bag' needs model 'profit' (VW --bag); model "
                             f"{self.model!r} explores with squarecb, epsilon or softmax")
        if self.model != "profit" and any("P" in term for term in self.interactions):
            raise ValueError(f"model {self.model!r} does not read namespace P (the value "
                             "enters through the margin); drop it from interactions or use "
                             "model 'profit'")
        return self


class RewardModelConfig(_Section):
    # A non-linear reward model inside the bandit (decisions/reward_model.py), for model
    # "conversion": LightGBM refit on the decision log every refit_every learned rewards
    # (in the learner, never on a request thread), combined with VW's online model and
    # explored by the same explorer. "none": VW alone (the linear learner), the default:
    # on the simulator (seeds 1, 7) "lightgbm" matched it (0.92-0.93 of the oracle), no more:
    # LightGBM on ~40,000 noisy conversions has more variance than the linear model gains
    # in bias (fitted offline on a seed's first 40,000 rewards: 0.92-0.93 of the oracle).
    kind: Literal["none", "lightgbm"] = "none"
    # "residual": VW learns the residual logit on top of LightGBM's (reset at each refit);
    # "blend": P(convert) = blend_weight x LightGBM's + (1 - blend_weight) x VW's.
    # "blend" earned more on the simulator (residual: VW restarts at each refit, noisily).
    combine: Literal["residual", "blend"] = "blend"
    blend_weight: float = Field(0.7, ge=0, le=1)
    refit_every: int = Field(2500, gt=0)
    window: int = Field(40_000, gt=0)       # newest rewards a refit trains on
    min_rewards: int = Field(2000, gt=0)    # no LightGBM model before this many rewards
    holdout_share: float = Field(0.1, gt=0, lt=0.5)  # held out for the refit's metrics
    num_leaves: int = Field(15, ge=2)
    n_estimators: int = Field(150, gt=0)
    learning_rate: float = Field(0.05, gt=0)
    min_child_samples: int = Field(100, gt=0)
    # Log every refit as an MLflow run (the service's learner; the simulator never does).
    log_mlflow: bool = True


class RewardConfig(_Section):
    # "profit": revenue minus the arm's cost on conversion; "conversion": 1 or 0;
    # "commission" (seller decision points): commission_rate x the revenue reported (the
    # sold value of the seller's listings within the window) minus the arm's cost (the
    # commission it waives or reduces).
    kind: Literal["profit", "conversion", "commission"] = "profit"
    commission_rate: float = Field(0.2, ge=0, le=1)
    # Rewards are divided by this before VW sees them so that costs stay in a small range.
    scale: float = Field(100.0, gt=0)
    window_days: float = Field(7.0, gt=0)
    default: float = 0.0
    # Feedback integrity: a revenue above max_revenue_multiple x the decision's item price
    # (or above max_revenue when the decision had no item price) is refused with 422.
    max_revenue_multiple: float = Field(10.0, gt=0)
    max_revenue: float = Field(20_000.0, gt=0)
    # The reward learned from one feedback is clipped to [clip_min, clip_max], so that no
    # single answer can swing the model however large its revenue.
    clip_min: float = -1_000.0
    clip_max: float = 20_000.0

    @model_validator(mode="after")
    def _clip_range(self) -> RewardConfig:
        if not self.clip_min <= self.default <= self.clip_max:
            raise ValueError(f"the reward range [clip_min, clip_max] = [{self.clip_min:g}, "
                             f"{self.clip_max:g}] must hold the default reward "
                             f"{self.default:g}")
        return self

    def revenue_limit(self, item_price: float | None) -> tuple[float, str]:
        """The largest revenue accepted for a decision with ``item_price``, and the setting
        it comes from (``max_revenue_multiple`` x a positive price, else ``max_revenue``)."""
        if item_price is not None and item_price > 0:
            return (self.max_revenue_multiple * item_price,
                    f"{self.max_revenue_multiple:g} x the item price {item_price:g} "
                    "(bandit.reward.max_revenue_multiple)")
        return self.max_revenue, "bandit.reward.max_revenue, the decision had no item price"


Subject = Literal["buyer", "seller"]


class BanditConfig(_Section):
    """One decision point (``decision_points.<name>``): whom it decides for, its arms, policy
    rules, reward and learner. Each has its own VW model, checkpoint, learner lease and
    statistics; its decisions share the one decision log, marked with its name."""

    # "buyer": the user's tier, tags and buyer scores describe them; "seller": their seller
    # tier, seller tags and seller churn probability (features/ seller columns).
    subject: Subject = "buyer"
    # A platform without consignment switches seller_offer off (no engine, no learner).
    enabled: bool = True
    description: str = ""
    arms: list[ArmConfig] = Field(default_factory=_default_arms)
    default_arm: str = "certification"
    control_share: float = Field(0.05, ge=0, lt=1)
    control_salt: str = "nextbest-control"
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    checkpoint_every: int = Field(500, gt=0)
    # The learner also checkpoints when it has learned anything for this long, so scorers
    # see new learning within about checkpoint_seconds + reload_seconds.
    checkpoint_seconds: float = Field(2.0, gt=0)
    reload_seconds: float = Field(1.0, gt=0)
    # VW hash bits (-b): 2**bits weights.
    bits: int = Field(18, ge=10, le=28)
    # SQLite PRAGMA synchronous of the decision log (WAL). NORMAL survives a process crash
    # (kill -9) with every committed decision and reward; FULL also survives power loss at
    # the price of an fsync per commit.
    log_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    sweep_seconds: float = Field(30.0, gt=0)
    # Recent decisions kept in memory by the engine that made them, so feedback joins
    # without reading the log back (0: always read the log).
    decision_cache_size: int = Field(20_000, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _arms_valid(self) -> BanditConfig:
        names = [a.name for a in self.arms]
        if len(names) != len(set(names)):
            raise ValueError(f"arm names must be unique, got {names}")
        if not names:
            raise ValueError("at least one arm is required")
        if self.default_arm not in names:
            raise ValueError(f"default_arm {self.default_arm!r} is not one of the arms {names}")
        return self

    def arm(self, name: str) -> ArmConfig:
        """The configured arm called ``name``.

        Raises Conflict when there is none: a decision logged under an arm that was since
        removed from the config cannot be priced or learned any more.
        """
        for a in self.arms:
            if a.name == name:
                return a
        raise Conflict(f"arm {name!r} is not configured (bandit.arms: "
                       f"{', '.join(a.name for a in self.arms)}); was it removed after the "
                       "decision was logged?", field="arm")


DEFAULT_POINT = "buyer_offer"  # what a request names no decision point decides
SELLER_POINT = "seller_offer"


def _default_seller_arms() -> list[ArmConfig]:
    """The documents' seller tactics. Costs are paid only on conversion (a sale within the
    window): the waived or reduced commission as a share of the item price, or the cost of
    the service. Every value is public and the same for every seller it is shown to."""
    return [
        ArmConfig(name="first_order_free_commission", cost_rate=0.20,
                  features={"kind": "commission", "value": 0.20},
                  eligible_when="items_sold == 0 or tier in ('prospective', 'none')",
                  description="no commission on your first sale"),
        ArmConfig(name="commission_tier_upgrade", cost_rate=0.05,
                  features={"kind": "commission", "value": 0.05},
                  eligible_when="tier in ('vip', 'potential') and sales_365d >= 3",
                  description="the next commission tier (5 points lower) for high-volume "
                              "sellers"),
        ArmConfig(name="price_suggestion", cost=0.2,
                  features={"kind": "pricing", "value": 0.0},
                  eligible_when="stale_listings >= 1",
                  description="a suggested price for a stale listing from sold comparables"),
        ArmConfig(name="consignment_guide", cost=0.1,
                  features={"kind": "guidance", "value": 0.0},
                  eligible_when="tier in ('potential', 'prospective')",
                  description="turn your idle items into cash: the consignment guide"),
        ArmConfig(name="recall_message", cost=0.1,
                  features={"kind": "recall", "value": 0.0},
                  eligible_when="tier == 'sleeping'",
                  max_per_user_per_week=1,
                  description="we miss your listings: what sells now in your categories"),
        ArmConfig(name="vip_support", cost=3.0,
                  features={"kind": "service", "value": 0.0},
                  eligible_when="tier == 'vip'",
                  description="a dedicated consignment manager"),
    ]


def _default_seller_point() -> dict[str, Any]:
    return {"subject": "seller", "default_arm": "consignment_guide",
            "description": "offers to consignors (sellers)",
            "arms": [arm.model_dump(exclude_defaults=True) for arm in _default_seller_arms()],
            # The revenue of a seller decision is the sold value of all the seller's
            # listings within the window, many listings' worth for a top seller.
            # (up to 50 listings' worth: a feedback above it is refused as implausible).
            "reward": {"kind": "commission", "max_revenue_multiple": 50.0},
            # The "conversion" model's known margin assumes a sale brings the item price, but
            # a seller's sold value in the window is many listings' worth for a top seller
            # (and first_order_free_commission's margin on one listing is zero), so
            # "conversion_revenue" learns the revenue of a sale as well. On the seller
            # simulator (seeds 1-5, 50,000 decisions, last 10,000, median) it earns 0.950 of
            # the oracle and 1.134x the seller rule book, where "profit" (VW
            # --cb_explore_adf regressing the commission) earned 0.874 and 1.043x
            # (benchmarks/seller_policy.py); gamma_scale 10 beat 5 and 30 (seed 1).
            # The seller side keeps the linear learner's interactions and learning rate it was
            # tuned with (N and I are buyer namespaces).
            "exploration": {"model": "conversion_revenue", "gamma_scale": 10.0,
                            "interactions": ["SA", "CA", "UA"], "learning_rate": 0.5},
            "control_salt": "nextbest-seller-control"}


def _default_points() -> dict[str, dict[str, Any]]:
    return {DEFAULT_POINT: {"description": "offers to buyers: coupon, installment, "
                                           "certification"},
            SELLER_POINT: _default_seller_point()}


CampaignKind = Literal["trigger", "delayed", "scheduled"]


class CampaignConfig(_Section):
    """One campaign (campaigns/): what fires it, who it reaches, which arms it may use.

    - ``trigger``: an ``event`` (a behaviour event type, or the item events ``new_listing``
      and ``low_stock``) whose ``condition`` holds fires it at once;
    - ``delayed``: an ``event`` starts a timer of ``delay_hours``; a ``cancel_event`` of the
      same user (and item, when both name one) before it ends cancels it;
    - ``scheduled``: the users of the online store whose ``condition`` holds, on the cron
      ``schedule`` (``nextbest scheduler``) or on demand (``nextbest campaigns run``).

    ``condition`` is a features/expressions.py expression; the names it may read are listed
    by ``nextbest campaigns list``. ``holdout_share`` of the users (a stable hash of
    campaign and user) get no message, so the campaign's lift can be measured.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: CampaignKind
    event: str | None = None
    condition: str = ""
    cancel_event: str | None = None
    delay_hours: float | None = Field(None, gt=0)
    schedule: str | None = None
    # The decision point whose engine chooses the message's arm (decision_points; a seller
    # point decides on the user as a consignor) and the arms of it allowed (empty: all).
    decision_point: str = DEFAULT_POINT
    arms: list[str] = Field(default_factory=list)
    holdout_share: float = Field(0.1, ge=0, lt=1)
    cooldown_hours: float = Field(24.0, ge=0)
    priority: int = 0
    transactional: bool = False
    # Channels in order of preference: a message goes to the first the user consented to.
    channels: list[str] = Field(default_factory=lambda: ["push", "email", "sms"],
                                min_length=1)
    # Send time: the next occurrence of the user's best hour within max_delay_hours (quiet
    # hours still hold it); urgent campaigns set a short one.
    max_delay_hours: float = Field(24.0, ge=0)
    # A purchase within this long after a delivered message converts it.
    attribution_hours: float = Field(72.0, gt=0)
    enabled: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _kind_fields(self) -> CampaignConfig:
        if self.kind in ("trigger", "delayed") and not self.event:
            raise ValueError(f"campaign {self.name!r}: a {self.kind} campaign needs an event")
        if self.kind == "delayed" and self.delay_hours is None:
            raise ValueError(f"campaign {self.name!r}: a delayed campaign needs delay_hours")
        if self.kind == "scheduled" and not self.condition:
            raise ValueError(f"campaign {self.name!r}: a scheduled campaign needs a condition "
                             "(its audience)")
        if self.kind != "delayed" and (self.cancel_event or self.delay_hours):
            raise ValueError(f"campaign {self.name!r}: cancel_event and delay_hours are for "
                             "delayed campaigns")
        return self


def _default_campaigns() -> list[CampaignConfig]:
    return [
        CampaignConfig(
            name="browse_no_buy", kind="trigger", event="view",
            condition="category_views_7d >= 5 and purchases_7d == 0",
            description="five views in one category within a week and no purchase"),
        CampaignConfig(
            name="cart_recovery", kind="delayed", event="add_to_cart", delay_hours=4,
            cancel_event="purchase", cooldown_hours=12, max_delay_hours=2,
            attribution_hours=48, description="an item left in the cart for four hours"),
        CampaignConfig(
            name="low_stock", kind="trigger", event="low_stock", cooldown_hours=0,
            description="only a few left of an item the user viewed or favourited"),
        CampaignConfig(
            name="new_listing_from_followed_seller", kind="trigger", event="new_listing",
            cooldown_hours=0, description="a seller the user follows listed a new item"),
        CampaignConfig(
            name="lifecycle", kind="scheduled", schedule="0 7 * * *",
            condition="tier_drop >= 2 or (churn_probability >= 0.6 and "
                      "previous_churn_probability < 0.6) or (lifecycle_stage in "
                      "['decline', 'churned'] and previous_lifecycle_stage in "
                      "['new', 'growth', 'mature'])",
            description="a tier dropped two steps or more (e.g. gold to dormant), churn "
                        "risk crossed 60%, or the lifecycle stage turned to decline or churned, "
                        "between the two latest features builds"),
        CampaignConfig(
            name="win_back", kind="scheduled", schedule="0 10 * * 1",
            condition="tier == 'dormant' and churn_probability >= 0.5", cooldown_hours=24 * 6,
            description="dormant users likely to churn, every Monday"),
        # Seller campaigns (decision point seller_offer): the documents' seller tactics.
        CampaignConfig(
            name="stale_listing", kind="scheduled", schedule="0 8 * * *",
            decision_point=SELLER_POINT, arms=["price_suggestion"],
            condition="stale_listings >= 1", cooldown_hours=24 * 7,
            description="a listing unsold for 60 days or more (stale): a suggested price "
                        "from sold comparables, at most weekly"),
        CampaignConfig(
            name="seller_recall", kind="scheduled", schedule="0 9 * * 2",
            decision_point=SELLER_POINT, arms=["recall_message"],
            condition="seller_tier == 'sleeping' and seller_recency_days >= 90",
            cooldown_hours=24 * 6,
            description="sellers idle for 90 days or more, every Tuesday"),
        CampaignConfig(
            name="unfinished_listing", kind="delayed", event="listing_started",
            delay_hours=24, cancel_event="new_listing", decision_point=SELLER_POINT,
            arms=["first_order_free_commission"], cooldown_hours=24 * 7,
            description="a listing started and not finished within 24 hours: no commission "
                        "on the first sale"),
        CampaignConfig(
            name="vip_sales_drop", kind="scheduled", schedule="0 9 * * 1",
            decision_point=SELLER_POINT, arms=["vip_support"],
            condition="seller_tier == 'vip' and sales_30d * 6 < sales_365d",
            cooldown_hours=24 * 13,
            description="a VIP seller whose sales of the last 30 days fell below half their "
                        "yearly pace: dedicated support, fortnightly at most"),
    ]


class QuietHoursConfig(_Section):
    """Local hours in which no marketing message is sent: from ``start`` to ``end`` (across
    midnight when start > end); a message due inside waits until ``end``. start == end:
    none."""

    start: int = Field(21, ge=0, le=23)
    end: int = Field(9, ge=0, le=23)


class ContactPolicyConfig(_Section):
    """How often one user may be contacted by marketing messages (scheduled or sent; the
    answers of ``/next_best_action`` never count). Per-channel caps are in ``channels``."""

    max_per_day: int | None = Field(2, ge=0)
    max_per_week: int | None = Field(6, ge=0)
    min_gap_hours: float = Field(4.0, ge=0)
    quiet_hours: QuietHoursConfig = Field(default_factory=QuietHoursConfig)


class CampaignsConfig(_Section):
    """The campaign layer: the campaigns and the item and timing rules they share."""

    campaigns: list[CampaignConfig] = Field(default_factory=_default_campaigns)
    contact: ContactPolicyConfig = Field(default_factory=ContactPolicyConfig)
    # low_stock: stock at or below this; it reaches users who viewed or favourited the item
    # within lookback_days.
    low_stock_threshold: int = Field(2, ge=0)
    lookback_days: float = Field(14.0, gt=0)
    # Events kept in the event store are written into raw_dir/events/ partitions for the next
    # features build every this many minutes (by the scheduler).
    export_minutes: float = Field(15.0, gt=0)

    @model_validator(mode="after")
    def _unique(self) -> CampaignsConfig:
        names = [c.name for c in self.campaigns]
        if len(names) != len(set(names)):
            raise ValueError(f"campaign names must be unique, got {names}")
        return self

    def campaign(self, name: str) -> CampaignConfig:
        """The campaign called ``name``; NotFound listing the configured ones."""
        for campaign in self.campaigns:
            if campaign.name == name:
                return campaign
        raise NotFound(f"no campaign {name!r}; configured: "
                       f"{', '.join(c.name for c in self.campaigns)}", field="campaign")


ConsentFlag = Literal["marketing_email", "marketing_sms", "marketing_push"]


class ChannelConfig(_Section):
    """A delivery channel: the platform's webhook for it, or (no ``url``) JSON lines in
    ``paths.data_dir/deliveries/<channel>.jsonl``, the embedded default of the demo."""

    url: str | None = None
    # The HMAC-SHA256 key of X-Nextbest-Signature; secret_env names an environment variable
    # holding it instead (read when the dispatcher starts).
    secret: str | None = None
    secret_env: str | None = None
    timeout_seconds: float = Field(5.0, gt=0)
    # Which preference flag is the user's consent to marketing on this channel (None: the
    # channel needs none, e.g. in-app messages).
    consent: ConsentFlag | None = None
    max_per_day: int | None = Field(None, ge=0)
    max_per_week: int | None = Field(None, ge=0)
    enabled: bool = True


def _default_channels() -> dict[str, ChannelConfig]:
    return {"email": ChannelConfig(consent="marketing_email", max_per_week=3),
            "sms": ChannelConfig(consent="marketing_sms", max_per_week=1),
            "push": ChannelConfig(consent="marketing_push", max_per_day=1),
            "in_app": ChannelConfig(),
            "log": ChannelConfig()}


class DispatchConfig(_Section):
    """How the dispatcher sends the outbox (at least once; receivers dedupe by the key)."""

    batch: int = Field(200, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_seconds: float = Field(2.0, gt=0)   # first retry after about this long
    backoff_max_seconds: float = Field(600.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)    # a claimed message is re-sent after this
    concurrency: int = Field(32, ge=1)


class ApiKeyConfig(_Section):
    """A key given in config instead of the keys file: its SHA-256 only, never the key."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["platform", "operator", "admin"]] = Field(min_length=1)


class AuthConfig(_Section):
    """Who may call the service (serving/auth.py)."""

    # false: every route is open. For local experiments only; the service warns.
    enabled: bool = True
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    # /metrics without a key (else it needs the operator scope).
    metrics_open: bool = False


class PrivacyConfig(_Section):
    # A user who never stated a marketing preference: opt_in = no consent until given,
    # opt_out = consent until withdrawn.
    default_consent: Literal["opt_in", "opt_out"] = "opt_in"
    # The secret salt of user-id hashes (audit log, erasure list); empty: a random one kept
    # in paths.data_dir/id_salt. Changing it orphans the hashes made before.
    id_salt: str = ""


# Where a request may come from and what it may be about (decisions/policy.py). Values
# outside these lists are refused (channel, page: 422 naming the field) or encoded as
# "other" (category), so free text never reaches the bandit.
CAMPAIGN_CHANNEL = "campaign"  # the campaign layer's own decisions; its page is the campaign


class ContextConfig(_Section):
    """The values of a request's context (``channel``, ``page``, ``category``).

    The campaign layer's decisions (channel ``campaign``, page = the campaign's name) are
    always allowed, whatever these lists say.
    """

    channels: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=lambda: ["web", "app", "mobile_web"], min_length=1)
    pages: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=lambda: ["home", "search", "category", "item", "cart", "checkout",
                                 "account"], min_length=1)
    # Item categories the bandit may tell apart; any other is encoded as "other".
    categories: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=lambda: ["apparel", "clothing", "shoes", "bags", "jewelry", "watches",
                                 "electronics", "home", "art"])


def _default_forbidden_features() -> list[str]:
    return ["device_model", "os", "phone_brand", "ip", "ip_prefix"]


class PolicyConfig(_Section):
    """Red lines enforced in code (docs/DESIGN.md section 10)."""

    # Users for whom every arm of kind "financing" is removed, in every path (requests,
    # triggers, campaigns, simulator). An expression of features/expressions.py over the
    # user's store record (tags, feature columns, is_student, self_excluded_from_credit) and
    # the request (item_price, category, channel, page, hour). Each top-level "or" part is
    # checked on its own, so a value missing in one part does not hide another, and a
    # missing value never makes a user vulnerable by itself. Empty: no such rule.
    no_credit_when: str = ("is_student == True or self_excluded_from_credit == True "
                           "or under_review == True or item_price > 3 * aov")
    # Names no model, bandit feature, tag rule or campaign condition may read (exact
    # column names): judging people by their device or network is a black box.
    forbidden_features: list[str] = Field(default_factory=_default_forbidden_features)

    def refuse_forbidden(self, names: Iterable[str], where: str) -> None:
        """ConfigError naming the first of ``names`` listed in ``forbidden_features``."""
        forbidden = {name.lower() for name in self.forbidden_features}
        hits = sorted({name for name in names if name.lower() in forbidden})
        if hits:
            raise ConfigError(f"{where} reads {', '.join(hits)}, listed in policy."
                              "forbidden_features: no model, bandit feature, tag rule or "
                              "campaign condition may read it", field="policy.forbidden_features")


class CandidatePolicyConfig(_Section):
    """A candidate policy (``nextbest policies``): either a fixed ``policy`` (random, static,
    file.py:function or a saved VW model file) or ``bandit``: overrides of the bandit
    section (a learning configuration, e.g. ``{reward_model: {kind: lightgbm}}``)."""

    policy: str | None = None
    bandit: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> CandidatePolicyConfig:
        if self.policy and self.bandit:
            raise ValueError("a candidate is either a fixed policy or bandit overrides, "
                             "not both")
        return self


class PoliciesConfig(_Section):
    """Champion and challengers (decisions/lifecycle.py, ``nextbest policies``)."""

    candidates: dict[str, CandidatePolicyConfig] = Field(default_factory=dict)
    # A candidate run in shadow beside the live policy: it sees every request and logs what
    # it would have chosen (table shadow_decisions), never acts. None: no shadow.
    shadow: str | None = None
    # Evaluate on the newest this many logged decisions that showed an arm.
    window: int = Field(20_000, gt=0)
    alpha: float = Field(0.05, gt=0, lt=1)
    n_bootstrap: int = Field(200, ge=10)

    @model_validator(mode="after")
    def _shadow_is_a_candidate(self) -> PoliciesConfig:
        if self.shadow is not None and self.shadow not in self.candidates:
            raise ValueError(f"policies.shadow {self.shadow!r} is not one of "
                             f"policies.candidates {sorted(self.candidates)}")
        return self


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    workers: int = Field(1, ge=1)
    max_batch: int = Field(1000, gt=0)
    # Users whose churn/propensity scores are kept in memory, per (user, as_of); the cache
    # is emptied on /models/reload. 0 scores every request afresh.
    score_cache_size: int = Field(100_000, ge=0)
    # Users whose decoded view (record, consent, scores, features) a worker keeps beside
    # the raw row it came from: every decision still reads the row, and only an unchanged
    # one's decoding is reused (~10 KB a user). 0 decodes every request afresh.
    view_cache_size: int = Field(5_000, ge=0)
    # BentoML's per-request access log line (costs CPU on every request).
    access_log: bool = True
    # Start without champion models or features in the online store (every answer is then
    # a cold start; /readyz says what is missing). Off: `nextbest serve` refuses to start.
    allow_empty: bool = False
    # How often each worker asks the registry whether the champions changed (several
    # replicas pick up a promotion on this schedule); POST /models/reload is immediate.
    model_refresh_seconds: float = Field(30.0, gt=0)
    # How long POST /models/reload waits for every worker to report the new versions.
    reload_wait_seconds: float = Field(10.0, gt=0)
    # Expose POST /noop (parses a body, does nothing): the serving benchmark's reference.
    benchmark_noop: bool = False
    # Request bodies larger than this get 413 before they are read.
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    # The garbage collector's thresholds in a worker once start-up is frozen out of
    # collections (serving/loopwatch.py): a young collection frees the cyclic garbage of
    # the requests since the last one, so its pause grows with the first threshold.
    gc_thresholds: tuple[int, int, int] = (2_000, 10, 100)
    # BentoML's OpenTelemetry spans for every request (always recorded, even unsampled:
    # several spans, locks and lists per request, kept alive for seconds, which lengthen
    # the collector's pauses). On only with a tracing exporter configured for BentoML.
    tracing: bool = False
    # Log the event-loop thread's stack whenever the loop has not turned for this many ms
    # (serving/loopwatch.py, a loop-stall trace: where a stall comes from, with the other
    # threads' innermost frames); 0: off.
    stall_trace_ms: float = Field(0.0, ge=0)
    # Decide /next_best_action and /feedback in a process of their own beside the worker
    # (serving/decider.py): a decision's Python then runs on another CPU, and the worker's
    # loop only forwards it. Unset: on with one worker (several workers already decide in
    # several processes); true needs one worker (its process is the one inline learner).
    decision_process: bool | None = None

    @model_validator(mode="after")
    def _one_decision_process(self) -> ServingConfig:
        if self.decision_process and self.workers > 1:
            raise ValueError("decision_process needs workers: 1 (its process is the one "
                             "learner; several workers already decide in several processes)")
        return self

    @property
    def decides_apart(self) -> bool:
        """Whether decisions go to a decision process (``decision_process``, unset: one
        worker)."""
        return self.workers == 1 if self.decision_process is None else self.decision_process


class Settings(_Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    # The decision points by name (``buyer_offer`` and ``seller_offer`` built in; a name of
    # your own starts from nothing but BanditConfig's defaults). A point given here is
    # merged over the built-in one of its name.
    decision_points: dict[str, BanditConfig] = Field(default_factory=lambda: {
        name: BanditConfig.model_validate(value) for name, value in _default_points().items()})
    # The decision point this settings object is scoped to (``for_point``) and its config;
    # derived from ``decision_points``, never written to a config file. ``bandit:`` in a
    # config file is the older spelling of ``decision_points.buyer_offer``.
    decision_point: str = Field(DEFAULT_POINT, exclude=True)
    bandit: BanditConfig = Field(default_factory=BanditConfig, exclude=True)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    campaigns: CampaignsConfig = Field(default_factory=CampaignsConfig)
    channels: dict[str, ChannelConfig] = Field(default_factory=_default_channels)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    mlflow_tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    seed: int = 7


    @model_validator(mode="before")
    @classmethod
    def _merge_points(cls, data: Any) -> Any:
        """Merge the configured decision points over the built-in ones, ``bandit:`` into
        ``buyer_offer``, and scope the settings to ``decision_point``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "bandit" in data:
            data["bandit"] = _as_dict(data["bandit"])
        if isinstance(data.get("decision_points"), dict):
            data["decision_points"] = {name: _as_dict(value)
                                       for name, value in data["decision_points"].items()}
        data = _points_spelling(data)  # bandit: wins over decision_points.buyer_offer
        given = data.get("decision_points") or {}
        if not isinstance(given, dict):
            return data  # pydantic names the type error
        points: dict[str, Any] = {}
        for name, value in {**_default_points(), **given}.items():
            base = _default_points().get(name, {})
            points[name] = _deep_merge(base, value) if isinstance(value, dict) else value
        data["decision_points"] = points
        point = data.get("decision_point", DEFAULT_POINT)
        if isinstance(point, str) and point in points:
            data["bandit"] = points[point]
        return data

    @model_validator(mode="after")
    def _known_point(self) -> Settings:
        if self.decision_point not in self.decision_points:
            raise ValueError(f"decision point {self.decision_point!r} is not configured "
                             f"(decision_points: {', '.join(self.decision_points)})")
        return self

    @property
    def point_names(self) -> list[str]:
        """The enabled decision points, the default first."""
        return [name for name, point in self.decision_points.items() if point.enabled]

    def point(self, name: str | None) -> BanditConfig:
        """The config of decision point ``name`` (None: the default); NotFound naming the
        configured ones otherwise, or when it is switched off."""
        name = name or DEFAULT_POINT
        config = self.decision_points.get(name)
        if config is None or not config.enabled:
            state = "switched off (enabled: false)" if config is not None else "not configured"
            raise NotFound(f"decision point {name!r} is {state}; the decision points are "
                           f"{', '.join(self.point_names)}", field="decision_point")
        return config

    def for_point(self, name: str | None) -> Settings:
        """These settings scoped to decision point ``name``: ``bandit`` is its config and
        ``paths.bandit_dir`` its own directory (``<bandit_dir>/<name>``; the default point
        keeps ``bandit_dir`` itself, where older checkpoints are)."""
        name = name or DEFAULT_POINT
        config = self.point(name)
        if name == self.decision_point:
            return self
        root = Path(self.paths.bandit_dir)
        root = root if self.decision_point == DEFAULT_POINT else root.parent
        paths = self.paths.model_copy(
            update={"bandit_dir": root if name == DEFAULT_POINT else root / name})
        return self.model_copy(update={"decision_point": name, "bandit": config,
                                       "paths": paths})


def path_overrides(root: str | Path) -> dict[str, str]:
    """``NEXTBEST__*`` variables that put every path of the settings under ``root``.

    Tests, benchmarks and the simulator use this to run nextbest in a scratch directory;
    pass it as ``environ`` to :func:`load_settings` or into a subprocess environment.
    """
    root = Path(root)
    data = root / "data"
    places = {"data_dir": data, **{key: data / name for key, name in DATA_PLACES.items()},
              "reports_dir": root / "reports", "mlruns_dir": root / "mlruns"}
    env = {f"{ENV_PREFIX}PATHS__{key.upper()}": str(path) for key, path in places.items()}
    env[f"{ENV_PREFIX}MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return env


def _is_text(annotation: Any) -> bool:
    """Whether a field takes text as it is (str, Path, a Literal of strings, or an optional
    one of those): such values are never parsed as YAML."""
    if annotation in (str, Path):
        return True
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in args)
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return _is_text(args[0])
    return False


def _takes_text(parts: list[str]) -> bool:
    """Whether the setting at ``parts`` (``["store", "redis_prefix"]``) takes text."""
    model: type[BaseModel] = Settings
    keyed = False  # the previous part was a dict of sections: this part is a key
    for depth, part in enumerate(parts):
        if keyed:
            keyed = False
            continue
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if depth == len(parts) - 1:
            return _is_text(annotation)
        if get_origin(annotation) is dict:  # decision_points.<name>.<key>
            annotation, keyed = get_args(annotation)[1], True
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return False


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``NEXTBEST__A__B=value`` variables into a nested dict ``{a: {b: value}}``.

    A value for a text setting (a name, a path, a URL, a prefix, a choice) is taken as it
    is: ``NEXTBEST__STORE__REDIS_PREFIX=nextbest:`` or ``NEXTBEST__BANDIT__CONTROL_SALT=2024``
    stay strings. Every other value is read as a YAML scalar or list, so numbers, booleans
    and ``[a, b]`` work.
    """
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or len(key) == len(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another NEXTBEST__ variable")
        if _takes_text(parts) or raw == "":
            node[parts[-1]] = raw
            continue
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: {raw!r} is not a value ({exc.problem})") from exc
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _as_dict(value: Any) -> Any:
    """A decision point given as a :class:`BanditConfig` as the mapping of what was set."""
    return value.model_dump(exclude_unset=True) if isinstance(value, BanditConfig) else value


def _points_spelling(layer: dict[str, Any]) -> dict[str, Any]:
    """One config layer with ``bandit:`` (the older spelling) moved into
    ``decision_points.buyer_offer``, so a later layer's ``bandit`` value wins over an
    earlier layer's ``decision_points`` one and the other way round."""
    legacy = layer.get("bandit")
    points = layer.get("decision_points") or {}
    if not isinstance(legacy, dict) or not isinstance(points, dict) or \
            not isinstance(points.get(DEFAULT_POINT) or {}, dict):
        return layer  # nothing to move, or a shape pydantic will name
    layer = dict(layer)
    del layer["bandit"]
    points = dict(points)
    points[DEFAULT_POINT] = _deep_merge(points.get(DEFAULT_POINT) or {}, legacy)
    layer["decision_points"] = points
    return layer


def load_settings(path: str | Path | None = None,
                  environ: dict[str, str] | None = None,
                  base: dict[str, Any] | None = None) -> Settings:
    """Build the settings from defaults, the YAML file and the environment, in that order.

    ``path`` wins over ``NEXTBEST_CONFIG``, which wins over ``./nextbest.yaml``. A missing
    file named explicitly is an error; a missing default file is not. ``base`` (a config
    mapping, e.g. the one a bento carries) sits between the defaults and the file.
    """
    environ = dict(os.environ) if environ is None else environ
    explicit = path or environ.get("NEXTBEST_CONFIG")
    file = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc})") from exc
        except (OSError, UnicodeDecodeError) as exc:  # a directory, a binary file
            raise ConfigError(f"{file}: not a readable YAML text file ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: the top level must be a mapping")
    elif explicit:
        raise ConfigError(f"config file {file} does not exist")
    layers = [_points_spelling(layer) for layer in (base or {}, data, _env_overrides(environ))]
    data = _deep_merge(_deep_merge(layers[0], layers[1]), layers[2])
    if "MLFLOW_TRACKING_URI" in environ and "mlflow_tracking_uri" not in data:
        data["mlflow_tracking_uri"] = environ["MLFLOW_TRACKING_URI"]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc']) or 'config'}: "
                             f"{error['msg']}" for error in exc.errors())
        raise ConfigError(f"config value {problems}") from exc
