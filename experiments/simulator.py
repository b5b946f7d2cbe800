"""A seeded synthetic marketplace: users with latent traits, requests, and how they respond.

The simulator is the environment only. It draws a population (its own, or the synthetic
marketplace's users and traits), a stream of requests with context, and the true response
of every user to every arm; policies (``experiments/policies.py``) act on the stream and the
runner (``experiments/runner.py``) plays it, delivering conversions late.

Response model (logit of the conversion probability, per arm ``a``)::

    logit p(a) = base(user, context) + lift_a(user, context)
    base       = b0 + 0.4 log(spend_level) - 0.35 log(price / median_price) + page effect
    coupon         lift = c_ps * price_sensitivity - 0.7
    installment    lift = c_ia * installment_affinity * sigmoid(2 (log price - log 400)) - 0.4
                          + c_st * is_student
    certification  lift = c_bf * brand_focus * (0.2 + 0.8 luxury category)
                          + 0.5 (spend_level - 1) clipped to [-0.5, 1] - 0.5

Students (``is_student``, about 8% of users, as the platform's users table says) respond to
installments more than to anything else: in this world a bandit left alone would learn to
lend to them, which the policy layer's no-credit rule must prevent.

Revenue on conversion is the item price; the arm's cost (``cost + cost_rate * price``, from
``settings.bandit.arms``) is paid on conversion, so profit = converted x (price - cost),
computed by the service's own functions (:mod:`decisions.reward`).
Drift (``drift_at``) swaps the model mid-run: a competitor's authentication service makes
certification worth much less, and a downturn makes everyone more price-sensitive.

Shapes: ``n`` requests, ``k`` arms in ``settings.bandit.arms`` order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from decisions.reward import arm_cost
from features.contract import LUXURY_CATEGORIES
from features.segmentation import assign_tags, assign_tiers, rfm_scores, rfm_segments
from features.synth import REGION_SHARE, REGIONS, STUDENT_SHARE
from nextbest.config import Settings
from nextbest.errors import DataError

CATEGORIES = ("bags", "watches", "jewelry", "shoes", "clothing", "electronics")
PAGES = ("home", "search", "item", "cart")
PAGE_WEIGHTS = (0.25, 0.2, 0.4, 0.15)
PAGE_EFFECT = {"home": -0.4, "search": -0.1, "item": 0.2, "cart": 0.8}
MEDIAN_PRICE = 180.0
NO_ACTION = "__no_action__"  # a pseudo-arm with no lift: the control group's response
TRAIT_COLUMNS = ("price_sensitivity", "brand_focus", "installment_affinity", "spend_level")


class SimulationConfig(BaseModel):
    """Knobs of one simulated run (the CLI's flags)."""

    decisions: int = Field(50_000, gt=0)
    seed: int = 7
    users: int = Field(5_000, gt=0)
    drift: bool = False
    drift_at: float = Field(0.5, gt=0, lt=1)
    decisions_per_minute: float = Field(4.0, gt=0)
    mean_delay_minutes: float = Field(30.0, gt=0)
    no_conversion_after_minutes: float = Field(60.0, gt=0)
    price_sigma: float = Field(0.5, gt=0)  # log-normal spread of item prices


@dataclass(frozen=True)
class ResponseModel:
    """Coefficients of the true response (see the module docstring)."""

    base: float = -2.6
    coupon_ps: float = 2.6
    coupon_offset: float = -0.7
    installment_ia: float = 3.0
    installment_offset: float = -0.4
    installment_student: float = 3.0
    certification_bf: float = 2.4
    certification_offset: float = -0.5

    def drifted(self) -> ResponseModel:
        """The model after the shift: certification loses its pull, coupons gain theirs."""
        return replace(self, certification_bf=0.6, certification_offset=-0.7,
                       coupon_ps=3.0, coupon_offset=-0.2)

    def logits(self, traits: dict[str, np.ndarray], context: dict[str, np.ndarray],
               arms: list[str]) -> np.ndarray:
        """Conversion logits, shape ``(n, k)``; unknown arm names get no lift. ``traits``
        holds the :data:`TRAIT_COLUMNS` and ``is_student`` (0/1; absent: nobody)."""
        price = context["item_price"]
        student = traits.get("is_student", np.zeros_like(price))
        luxury = np.isin(context["category"], sorted(LUXURY_CATEGORIES)).astype(float)
        page = np.vectorize(PAGE_EFFECT.get, otypes=[float])(context["page"])
        base = (self.base + 0.4 * np.log(traits["spend_level"])
                - 0.35 * np.log(price / MEDIAN_PRICE) + page)
        high_price = 1.0 / (1.0 + np.exp(-2.0 * (np.log(price) - math.log(400.0))))
        lifts = {
            "coupon": self.coupon_ps * traits["price_sensitivity"] + self.coupon_offset,
            "installment": (self.installment_ia * traits["installment_affinity"] * high_price
                            + self.installment_offset + self.installment_student * student),
            "certification": (self.certification_bf * traits["brand_focus"] * (0.2 + 0.8 * luxury)
                              + np.clip(0.5 * (traits["spend_level"] - 1), -0.5, 1.0)
                              + self.certification_offset),
        }
        zero = np.zeros_like(price)
        return np.column_stack([base + lifts.get(arm, zero) for arm in arms])


def arm_costs(settings: Settings, price: np.ndarray) -> np.ndarray:
    """Cost of each arm if the user converts, shape ``(n, k)``: the service's own
    :func:`decisions.reward.arm_cost` (``cost + cost_rate * price``), applied to arrays."""
    return np.column_stack([arm_cost(arm, price, price) for arm in settings.bandit.arms])


@dataclass
class Stream:
    """The requests of one run and the true response to every arm.

    ``user_index (n,)`` into the population; context arrays ``page, category (n,) str``,
    ``item_price (n,)``, ``hour (n,) int``; ``minute (n,)`` simulated arrival time;
    ``uniform (n,)`` the common random number deciding conversion (``converted = uniform <
    p``), shared by every policy so comparisons are paired; ``delay (n,)`` minutes until a
    conversion is reported; ``probability (n, k)`` true conversion probability;
    ``expected_reward (n, k)`` true expected reward; ``cost (n, k)``;
    ``base_probability (n,)`` / ``base_expected_reward (n,)`` with no action (control);
    ``sold_value (n, k)`` / ``base_sold_value (n,)`` the revenue a conversion reports under
    each arm / with none, when it is not the item price (the seller side: the sold value
    of a seller's listings; None on the buyer side, where a conversion brings the price).
    """

    user_index: np.ndarray
    page: np.ndarray
    category: np.ndarray
    item_price: np.ndarray
    hour: np.ndarray
    minute: np.ndarray
    uniform: np.ndarray
    delay: np.ndarray
    probability: np.ndarray
    cost: np.ndarray
    expected_reward: np.ndarray
    base_probability: np.ndarray
    base_expected_reward: np.ndarray
    drift_index: int | None
    sold_value: np.ndarray | None = None
    base_sold_value: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.user_index.shape[0])

    def revenue(self, step: int, arm: int) -> float:
        """What a conversion at ``step`` under arm index ``arm`` (-1: no action) reports."""
        if self.sold_value is None or self.base_sold_value is None:
            return float(self.item_price[step])
        return float(self.base_sold_value[step] if arm < 0 else self.sold_value[step, arm])


def expected_reward(settings: Settings, probability: np.ndarray, price: np.ndarray,
                    cost: np.ndarray) -> np.ndarray:
    """True expected reward, shape ``(n, k)``, of the reward the service learns
    (:func:`decisions.reward.reward_of`): ``p`` for conversion, ``p (price - cost)`` for profit."""
    if settings.bandit.reward.kind == "conversion":
        return probability
    return probability * (price[:, None] - cost)


def make_stream(settings: Settings, population: pd.DataFrame, config: SimulationConfig,
                model: ResponseModel | None = None) -> Stream:
    """Draw ``config.decisions`` requests and their true responses (seeded by ``config.seed``)."""
    rng = np.random.default_rng([config.seed, 1])
    n = config.decisions
    model = model or ResponseModel()
    activity = population["spend_level"].to_numpy() ** 0.5
    user_index = rng.choice(len(population), size=n, p=activity / activity.sum())
    spend = population["spend_level"].to_numpy()[user_index]
    page = rng.choice(PAGES, size=n, p=PAGE_WEIGHTS)
    category = rng.choice(CATEGORIES, size=n)
    price = np.round(MEDIAN_PRICE * np.exp(rng.normal(0.0, config.price_sigma, size=n)) * spend ** 0.5, 2)
    price = np.clip(price, 5.0, 20_000.0)
    minute = np.arange(n) / config.decisions_per_minute
    hour = ((minute // 60) % 24).astype(int)
    uniform = rng.random(n)
    delay = rng.exponential(config.mean_delay_minutes, size=n)
    arms = [arm.name for arm in settings.bandit.arms] + [NO_ACTION]
    traits = {col: population[col].to_numpy()[user_index] for col in TRAIT_COLUMNS}
    traits["is_student"] = students(population)[user_index]
    context = {"item_price": price, "category": category, "page": page}
    logits = model.logits(traits, context, arms)
    drift_index = None
    if config.drift:
        drift_index = int(n * config.drift_at)
        after = model.drifted().logits(traits, context, arms)
        logits[drift_index:] = after[drift_index:]
    probability = 1.0 / (1.0 + np.exp(-logits))
    cost = np.column_stack([arm_costs(settings, price), np.zeros(n)])
    expected = expected_reward(settings, probability, price, cost)
    return Stream(user_index=user_index, page=page, category=category, item_price=price,
                  hour=hour, minute=minute, uniform=uniform, delay=delay,
                  probability=probability[:, :-1], cost=cost[:, :-1],
                  expected_reward=expected[:, :-1], base_probability=probability[:, -1],
                  base_expected_reward=expected[:, -1], drift_index=drift_index)


# ----------------------------------------------------------------------------- population

def students(population: pd.DataFrame) -> np.ndarray:
    """1.0 for the users the platform knows to be students, else 0.0 (unknown: not one)."""
    if "is_student" not in population.columns:
        return np.zeros(len(population))
    flags = population["is_student"].astype("boolean").fillna(False)
    return flags.to_numpy(dtype=bool).astype(float)


def synthetic_population(settings: Settings, users: int, seed: int) -> pd.DataFrame:
    """A seeded population: latent traits plus observable features, tier, segment and tags.

    Observable features are noisy reflections of the traits, so a learner can infer them:
    ``coupon_share`` tracks price sensitivity, ``category_entropy`` falls with brand focus,
    ``cart_abandonments_30d`` rises with installment affinity, spend features follow
    ``spend_level``; the order-derived ones are counted from the user's few orders as the
    feature build would (:func:`_as_counted_from_orders`). The columns are those of a real
    store record (CONTRACT.md). One row per user; ``user_id`` is ``sim-<i>``.
    """
    rng = np.random.default_rng([seed, 0])
    spend = rng.lognormal(-0.18, 0.6, users)
    traits = pd.DataFrame({
        "user_id": [f"sim-{i:06d}" for i in range(users)],
        "price_sensitivity": rng.beta(1.2, 1.8, users),
        "brand_focus": np.clip(rng.beta(1.2, 2.0, users) + 0.25 * np.log(spend), 0, 1),
        "installment_affinity": rng.beta(1.0, 2.5, users),
        "spend_level": spend,
        "is_seller": rng.random(users) < 0.15,
    })
    frequency = rng.poisson(2.5 * spend)
    recency = np.where(frequency > 0, rng.exponential(60.0 / np.sqrt(1 + frequency)), np.nan)
    aov = MEDIAN_PRICE * spend * np.exp(rng.normal(0, 0.3, users))
    clip = np.clip
    feats = pd.DataFrame({
        "recency_days": recency,
        "frequency_total": frequency.astype(float),
        "frequency_30d": np.where(recency <= 30, np.maximum(1, frequency // 4), 0).astype(float),
        "monetary_total": frequency * aov,
        "monetary_365d": frequency * aov * 0.8,
        "aov": np.where(frequency > 0, aov, np.nan),
        "coupon_share": np.where(frequency > 0, clip(traits["price_sensitivity"]
                                                    + rng.normal(0, 0.12, users), 0, 1), 0.0),
        "category_entropy": clip(1.6 * (1 - traits["brand_focus"])
                                 + rng.normal(0, 0.15, users), 0, None),
        "carts_30d": rng.poisson(0.5 + 5 * traits["installment_affinity"]).astype(float),
        "views_30d": rng.poisson(8 * spend).astype(float),
        "return_rate": clip(rng.beta(1, 12, users), 0, 1),
        "tenure_days": rng.uniform(30, 730, users),
        "days_since_login": rng.exponential(10, users),
    })
    feats["cart_abandonments_30d"] = np.maximum(feats["carts_30d"] - feats["frequency_30d"], 0)
    _as_counted_from_orders(feats, frequency, np.random.default_rng([seed, 2]))
    out = pd.concat([traits, feats], axis=1)
    # Students and regions, as the platform's users table would say; drawn from their own
    # generators so every other column stays as it was.
    out["is_student"] = np.random.default_rng([seed, 3]).random(users) < STUDENT_SHARE
    out["region"] = np.random.default_rng([seed, 4]).choice(
        REGIONS, size=users, p=REGION_SHARE / REGION_SHARE.sum())
    # Tiers, segments and tags exactly as a features build assigns them.
    out["tier"] = assign_tiers(feats, settings.features.tiers)
    out["segment"] = rfm_segments(rfm_scores(feats))
    out["tags"] = assign_tags(feats, settings.features.tags, settings.policy)
    logit = -1.0 + 0.8 * np.log(spend) - 0.02 * np.nan_to_num(recency, nan=200)
    out["purchase_propensity"] = 1 / (1 + np.exp(-logit))
    out["churn_probability"] = 1 - out["purchase_propensity"] ** 0.5
    return out


def _as_counted_from_orders(feats: pd.DataFrame, frequency: np.ndarray,
                            rng: np.random.Generator) -> None:
    """Make order-derived columns what ``features build`` computes from a few orders.

    A store sees a user's orders, not their traits: ``coupon_share`` is the share of
    ``frequency`` orders that used a coupon (each with the trait-driven chance), so it is
    0 or 1 after one order; ``category_entropy`` is 0 without two orders and at most
    ln(number of categories bought); ``spend_trend`` (30 days minus the 30 before) is noise
    around 0 for recent buyers and 0 otherwise (the simulator has no spending dynamics).
    Drawn from their own generator so every other column stays as it was.
    """
    orders = np.maximum(frequency, 1)
    coupons = rng.binomial(orders, feats["coupon_share"].to_numpy())
    feats["coupon_share"] = np.where(frequency > 0, coupons / orders, 0.0)
    most = np.log(np.clip(frequency, 1, len(CATEGORIES)))
    feats["category_entropy"] = np.minimum(feats["category_entropy"].to_numpy(), most)
    recent = feats["recency_days"].to_numpy() <= 60
    trend = rng.normal(0.0, 0.5, len(frequency)) * np.nan_to_num(feats["aov"].to_numpy())
    feats["spend_trend"] = np.where(recent, np.round(trend, 2), 0.0)



def marketplace_population(settings: Settings, data_dir: Path) -> pd.DataFrame:
    """The synthetic marketplace's users: latent traits joined to their built features.

    Reads ``DATA/latent/user_traits.parquet`` and the latest features under
    ``DATA/features`` (``nextbest features build`` output); users without features are
    dropped. Propensity and churn probability are proxies from recency when no model is used.
    """
    from features.build import available_as_of, load_features

    traits_path = Path(data_dir) / "latent" / "user_traits.parquet"
    if not traits_path.is_file():
        raise DataError(f"{traits_path} is missing: a simulation needs each user's latent "
                        "traits (how they respond to each arm), which only a synthetic "
                        "marketplace made by `nextbest data synth` has; imported real data "
                        "cannot be simulated (evaluate its decision log with evaluate-policy), "
                        "and simulate without --data uses a generated population",
                        field="data")
    features_dir = Path(data_dir) / "features"
    dates = available_as_of(settings, features_dir)
    if not dates:
        raise DataError(f"no features under {features_dir}; run `nextbest features build "
                        f"--data {Path(data_dir) / 'raw'} --out {features_dir}` first",
                        field="data")
    feats = load_features(settings, dates[-1], features_dir)
    traits = pd.read_parquet(traits_path)
    merged = traits.drop(columns=["is_seller"], errors="ignore").merge(feats, on="user_id")
    if merged.empty:
        raise DataError("no user has both latent traits and features", field="data")
    recency = merged["recency_days"].to_numpy(dtype=float)
    logit = -1.0 + 0.8 * np.log(merged["spend_level"]) - 0.02 * np.nan_to_num(recency, nan=200)
    merged["purchase_propensity"] = 1 / (1 + np.exp(-logit))
    merged["churn_probability"] = 1 - merged["purchase_propensity"] ** 0.5
    merged["tags"] = [list(t) if t is not None else [] for t in merged["tags"]]
    return merged.reset_index(drop=True)
