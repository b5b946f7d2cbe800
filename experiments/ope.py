"""Off-policy estimators of a candidate policy's value from logged bandit feedback.

Each estimator is a small frozen dataclass behind one interface (as in Open Bandit
Pipeline's ``obp/ope/estimators.py``):

* ``estimate_policy_value(reward, action, pscore, action_dist, estimated_rewards=None)``
  returns the estimated mean reward per decision of the candidate (target) policy;
* ``estimate_interval(..., alpha=0.05, n_bootstrap=200, seed=0)`` returns
  ``{"mean", "low", "high"}``, a non-parametric bootstrap interval over decisions.

Array shapes, with ``n`` logged decisions and ``k`` arms:

* ``reward``: ``(n,)`` float, the observed reward of each logged decision;
* ``action``: ``(n,)`` int in ``[0, k)``, the index of the logged arm;
* ``pscore``: ``(n,)`` float in ``(0, 1]``, the logging policy's probability of that arm;
* ``action_dist``: ``(n, k)`` float, the target policy's probability of every arm (rows sum
  to 1);
* ``estimated_rewards``: ``(n, k)`` float, a reward model's prediction for every arm (DR).

Adding an estimator means adding one dataclass here and one entry in :data:`ESTIMATORS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.errors import DataError, ValidationFailed


def check_inputs(reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
                 action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None,
                 *, need_model: bool = False) -> None:
    """Refuse inputs an estimator cannot use, naming the argument and the reason.

    Zero or missing propensities are a :class:`DataError` (the log cannot support any
    importance-weighted estimate); inconsistent shapes are a :class:`ValidationFailed`.
    """
    n = reward.shape[0]
    if n == 0:
        raise DataError("the log holds no decisions", field="reward")
    for name, arr in (("action", action), ("pscore", pscore)):
        if arr.shape != (n,):
            raise ValidationFailed(f"{name} must have shape ({n},), got {arr.shape}", field=name)
    if action_dist.ndim != 2 or action_dist.shape[0] != n:
        raise ValidationFailed(f"action_dist must have shape ({n}, n_arms), got "
                               f"{action_dist.shape}", field="action_dist")
    k = action_dist.shape[1]
    if np.isnan(pscore).any():
        raise DataError(f"{int(np.isnan(pscore).sum())} decisions have no probability of the "
                        "logged arm; off-policy estimates need it", field="probability")
    if (pscore <= 0).any() or (pscore > 1).any():
        bad = int(((pscore <= 0) | (pscore > 1)).sum())
        raise DataError(f"{bad} decisions have a probability of the logged arm outside (0, 1]; "
                        "zero-probability logs cannot be importance-weighted",
                        field="probability")
    if np.isnan(reward).any():
        raise DataError("reward holds missing values", field="reward")
    if action.min() < 0 or action.max() >= k:
        raise ValidationFailed(f"action must index one of {k} arms", field="action")
    if need_model and estimated_rewards is None:
        raise ValidationFailed("this estimator needs estimated_rewards (a reward model)",
                               field="estimated_rewards")
    if estimated_rewards is not None and estimated_rewards.shape != action_dist.shape:
        raise ValidationFailed(f"estimated_rewards must have shape {action_dist.shape}, got "
                               f"{estimated_rewards.shape}", field="estimated_rewards")


def importance_weights(action: np.ndarray, pscore: np.ndarray,
                       action_dist: np.ndarray) -> np.ndarray:
    """``w_i = pi_e(a_i | x_i) / pi_0(a_i | x_i)``, shape ``(n,)``."""
    return action_dist[np.arange(action.shape[0]), action] / pscore


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size of importance weights ``(n,)``: ``(sum w)^2 / sum w^2``.

    ``n`` when every weight is equal; near 1 when a single decision carries the estimate.
    Kish (1965), "Survey Sampling"; as an OPE diagnostic in Owen (2013), ch. 9.
    """
    total = float(np.square(weights).sum())
    return float(weights.sum()) ** 2 / total if total > 0 else 0.0


def low_support_share(action_dist: np.ndarray, threshold: float, *,
                      logging_dist: np.ndarray | None = None, action: np.ndarray | None = None,
                      pscore: np.ndarray | None = None) -> float:
    """The target policy's mean probability on arms the logger chose with probability below
    ``threshold``: what the log barely shows, where every estimate extrapolates.

    With the logger's whole pmf ``logging_dist (n, k)`` it is exact,
    ``1/n sum_i sum_a pi_e(a|x_i) [pi_0(a|x_i) < threshold]`` (arms the logger never chose
    included). With only the logged arms ``action (n,)`` and their ``pscore (n,)`` it is the
    importance-weighted estimate ``1/n sum_i w_i [pscore_i < threshold]``, which cannot see
    arms the logger never chose.
    """
    if logging_dist is not None:
        return float((action_dist * (logging_dist < threshold)).sum(axis=1).mean())
    if action is None or pscore is None:
        raise ValidationFailed("give logging_dist, or action and pscore", field="logging_dist")
    weights = importance_weights(action, pscore, action_dist)
    return float((weights * (pscore < threshold)).mean())


@dataclass(frozen=True)
class BaseOffPolicyEstimator(ABC):
    """The interface every estimator shares."""

    name: str = "base"
    need_model: bool = False

    @abstractmethod
    def _value(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
               action_dist: np.ndarray, estimated_rewards: np.ndarray | None) -> float:
        """The estimate on already-checked arrays."""

    def estimate_policy_value(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
                              action_dist: np.ndarray,
                              estimated_rewards: np.ndarray | None = None) -> float:
        """Estimated mean reward per decision of the target policy ``action_dist``."""
        arrays = _as_arrays(reward, action, pscore, action_dist, estimated_rewards)
        check_inputs(*arrays, need_model=self.need_model)
        return float(self._value(*arrays))

    def estimate_interval(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
                          action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None,
                          *, alpha: float = 0.05, n_bootstrap: int = 200,
                          seed: int = 0) -> dict[str, float]:
        """Point estimate and percentile bootstrap ``(1 - alpha)`` interval.

        Decisions are resampled with replacement ``n_bootstrap`` times (seeded); the
        estimator is recomputed on each resample. Returns ``{"mean", "low", "high"}``.
        """
        if not 0 < alpha < 1:
            raise ValidationFailed("alpha must be in (0, 1)", field="alpha")
        if n_bootstrap < 10:
            raise ValidationFailed("n_bootstrap must be at least 10", field="n_bootstrap")
        arrays = _as_arrays(reward, action, pscore, action_dist, estimated_rewards)
        check_inputs(*arrays, need_model=self.need_model)
        rng = np.random.default_rng(seed)
        n = arrays[0].shape[0]
        samples = np.empty(n_bootstrap)
        for b in range(n_bootstrap):
            idx = rng.integers(0, n, size=n)
            samples[b] = self._value(*(a[idx] if a is not None else None for a in arrays))
        low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
        return {"mean": float(self._value(*arrays)), "low": float(low), "high": float(high)}


def _as_arrays(reward, action, pscore, action_dist, estimated_rewards):
    """Coerce the inputs to numpy arrays of the expected dtypes."""
    return (np.asarray(reward, dtype=float), np.asarray(action, dtype=int),
            np.asarray(pscore, dtype=float), np.asarray(action_dist, dtype=float),
            None if estimated_rewards is None else np.asarray(estimated_rewards, dtype=float))


@dataclass(frozen=True)
class InverseProbabilityWeighting(BaseOffPolicyEstimator):
    """IPS: ``V = 1/n * sum_i w_i * r_i`` with ``w_i = pi_e(a_i|x_i) / pi_0(a_i|x_i)``.

    Unbiased when the logging propensities are correct and positive wherever the target
    policy acts. Horvitz & Thompson (1952); Precup et al. (2000).
    """

    name: str = "ips"

    def _value(self, reward, action, pscore, action_dist, estimated_rewards) -> float:
        return float(np.mean(importance_weights(action, pscore, action_dist) * reward))


@dataclass(frozen=True)
class SelfNormalizedInverseProbabilityWeighting(BaseOffPolicyEstimator):
    """SNIPS: ``V = sum_i w_i * r_i / sum_i w_i``.

    Biased but consistent, with far lower variance than IPS when weights are large; equals
    the observed mean reward when target == logging policy. Swaminathan & Joachims (2015),
    "The Self-Normalized Estimator for Counterfactual Learning", NeurIPS.
    """

    name: str = "snips"

    def _value(self, reward, action, pscore, action_dist, estimated_rewards) -> float:
        w = importance_weights(action, pscore, action_dist)
        total = w.sum()
        return float((w * reward).sum() / total) if total > 0 else 0.0


@dataclass(frozen=True)
class DirectMethod(BaseOffPolicyEstimator):
    """DM: ``V = 1/n * sum_i sum_a pi_e(a|x_i) q(x_i, a)``, the reward model's own answer.

    No importance weights, so low variance, but as wrong as the reward model ``q``
    (``estimated_rewards``, shape ``(n, k)``). Beygelzimer & Langford (2009).
    """

    name: str = "dm"
    need_model: bool = True

    def _value(self, reward, action, pscore, action_dist, estimated_rewards) -> float:
        return float(np.mean((action_dist * estimated_rewards).sum(axis=1)))


@dataclass(frozen=True)
class DoublyRobust(BaseOffPolicyEstimator):
    """DR: ``V = 1/n * sum_i [ sum_a pi_e(a|x_i) q(x_i, a) + w_i * (r_i - q(x_i, a_i)) ]``.

    The direct method's value plus the importance-weighted error of ``q`` on the logged
    arms, which removes the reward model's bias when the propensities are right. ``q`` is a
    reward model (``estimated_rewards``, shape ``(n, k)``); DR is unbiased when either the
    propensities or the reward model are correct, and exact when ``q`` equals the true
    reward. Dudik, Langford & Li (2011), "Doubly Robust Policy Evaluation and Learning", ICML.
    """

    name: str = "dr"
    need_model: bool = True

    def _value(self, reward, action, pscore, action_dist, estimated_rewards) -> float:
        rows = np.arange(action.shape[0])
        direct = DirectMethod()._value(reward, action, pscore, action_dist, estimated_rewards)
        w = importance_weights(action, pscore, action_dist)
        correction = w * (reward - estimated_rewards[rows, action])
        return direct + float(np.mean(correction))


ESTIMATORS: tuple[BaseOffPolicyEstimator, ...] = (
    InverseProbabilityWeighting(),
    SelfNormalizedInverseProbabilityWeighting(),
    DoublyRobust(),
)


def _design(context: pd.DataFrame, action: np.ndarray, n_actions: int) -> pd.DataFrame:
    """Context columns plus the arm, one-hot (trees split on it at once), as one input frame."""
    frame = context.reset_index(drop=True).copy()
    for a in range(n_actions):
        frame[f"__arm_{a}"] = (action == a).astype(float)
    return frame


def _prepare_context(context: pd.DataFrame) -> pd.DataFrame:
    """Numbers stay numbers, booleans become 0/1, anything else a pandas category."""
    out = pd.DataFrame(index=range(len(context)))
    for col in context.columns:
        values = context[col].reset_index(drop=True)
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[col] = values.astype(float)
        else:
            out[col] = values.astype("string").fillna("").astype("category")
    return out


def fit_reward_model(context: pd.DataFrame, action: np.ndarray, reward: np.ndarray,
                     n_actions: int, *, n_folds: int = 3, seed: int = 0,
                     num_boost_round: int = 100) -> np.ndarray:
    """Cross-fitted LightGBM reward model ``q(x, a)`` for DR, shape ``(n, n_actions)``.

    ``context`` holds one row per decision (numbers, booleans, strings); the arm is added as
    one-hot inputs. The decisions are split into ``n_folds`` seeded folds; each fold's
    predictions come from a model trained on the other folds, so no decision's own reward
    leaks into its ``q`` (Chernozhukov et al. 2018, as used for DR by Narita et al. 2021).
    """
    import lightgbm as lgb

    n = len(context)
    if n < 2 * n_folds:
        raise DataError(f"too few decisions for a reward model: {n}, need {2 * n_folds}",
                        field="reward")
    action = np.asarray(action, dtype=int)
    reward = np.asarray(reward, dtype=float)
    features = _prepare_context(context)
    # Seeded (own stream) and balanced: every fold holds at least 2 decisions to predict,
    # and every model is trained on the others.
    folds = np.random.default_rng([seed, 0xF01D]).permutation(np.arange(n) % n_folds)
    # Rewards are noisy (0 or a price): small, regularised trees keep q from chasing noise.
    params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15,
              "min_data_in_leaf": 100, "lambda_l2": 10.0, "verbose": -1, "seed": seed, "num_threads": 2,
              "deterministic": True, "force_row_wise": True}
    q = np.zeros((n, n_actions))
    for fold in range(n_folds):
        train, held = folds != fold, folds == fold
        data = lgb.Dataset(_design(features[train], action[train], n_actions), reward[train])
        booster = lgb.train(params, data, num_boost_round=num_boost_round)
        held_ctx = features[held]
        for a in range(n_actions):
            arm = np.full(int(held.sum()), a)
            q[held, a] = booster.predict(_design(held_ctx, arm, n_actions))
    return q
