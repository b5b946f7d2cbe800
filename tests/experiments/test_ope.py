"""Estimators on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.ope import (
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedInverseProbabilityWeighting,
    fit_reward_model,
)
from nextbest.errors import DataError, ValidationFailed


@pytest.fixture
def logged() -> dict[str, np.ndarray]:
    """A uniform-random logging policy over 3 arms with arm-dependent rewards."""
    rng = np.random.default_rng(3)
    n, k = 4000, 3
    logging = rng.dirichlet(np.ones(k), size=n)
    action = np.array([rng.choice(k, p=row) for row in logging])
    q_true = np.column_stack([np.full(n, 1.0), np.full(n, 2.0), rng.uniform(0, 4, n)])
    reward = q_true[np.arange(n), action] + rng.normal(0, 0.5, n)
    return {"reward": reward, "action": action, "pscore": logging[np.arange(n), action],
            "logging": logging, "q": q_true}


def test_ips_and_snips_equal_observed_mean_when_target_is_logging(logged):
    args = (logged["reward"], logged["action"], logged["pscore"], logged["logging"])
    observed = logged["reward"].mean()
    # Weights are all 1: IPS is the plain mean, an unbiased estimate of the logging value.
    assert InverseProbabilityWeighting().estimate_policy_value(*args) == pytest.approx(observed)
    assert SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(*args) == \
        pytest.approx(observed)


def test_dr_exact_when_reward_model_is_exact():
    rng = np.random.default_rng(0)
    n, k = 500, 3
    q = rng.uniform(0, 10, size=(n, k))
    action = rng.integers(0, k, n)
    reward = q[np.arange(n), action]  # noiseless: the model is exact
    target = np.eye(k)[rng.integers(0, k, n)]
    truth = (target * q).sum(axis=1).mean()
    value = DoublyRobust().estimate_policy_value(reward, action, np.full(n, 1 / k), target, q)
    assert value == pytest.approx(truth)


def test_estimators_recover_a_different_target(logged):
    n = logged["action"].shape[0]
    target = np.zeros((n, 3))
    target[:, 1] = 1.0  # always arm 1, true value 2.0
    args = (logged["reward"], logged["action"], logged["pscore"], target)
    assert InverseProbabilityWeighting().estimate_policy_value(*args) == pytest.approx(2.0, 0.1)
    assert SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(*args) == \
        pytest.approx(2.0, abs=0.05)
    assert DoublyRobust().estimate_policy_value(*args, logged["q"]) == pytest.approx(2.0, 0.05)


def test_interval_is_seeded_and_brackets_the_estimate(logged):
    args = (logged["reward"], logged["action"], logged["pscore"], logged["logging"])
    first = SelfNormalizedInverseProbabilityWeighting().estimate_interval(*args, n_bootstrap=50,
                                                                          seed=1)
    again = SelfNormalizedInverseProbabilityWeighting().estimate_interval(*args, n_bootstrap=50,
                                                                          seed=1)
    assert first == again
    assert first["low"] < first["mean"] < first["high"]


@pytest.mark.parametrize("bad", [0.0, np.nan, -0.1])
def test_zero_or_missing_probabilities_are_refused(logged, bad):
    pscore = logged["pscore"].copy()
    pscore[5] = bad
    with pytest.raises(DataError) as err:
        InverseProbabilityWeighting().estimate_policy_value(
            logged["reward"], logged["action"], pscore, logged["logging"])
    assert err.value.field == "probability"


def test_dr_without_reward_model_is_refused(logged):
    with pytest.raises(ValidationFailed, match="estimated_rewards"):
        DoublyRobust().estimate_policy_value(logged["reward"], logged["action"],
                                             logged["pscore"], logged["logging"])


def test_cross_fitted_reward_model_learns_arm_effects():
    rng = np.random.default_rng(1)
    n = 3000
    context = pd.DataFrame({"x": rng.uniform(0, 1, n), "page": rng.choice(["a", "b"], n)})
    action = rng.integers(0, 2, n)
    reward = np.where(action == 1, 3 * context["x"], 1.0) + rng.normal(0, 0.1, n)
    q = fit_reward_model(context, action, reward, 2, seed=0, num_boost_round=100)
    assert q.shape == (n, 2)
    assert np.abs(q[:, 0] - 1.0).mean() < 0.1
    assert np.abs(q[:, 1] - 3 * context["x"]).mean() < 0.15
