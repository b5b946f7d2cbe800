"""Estimators on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.ope import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedInverseProbabilityWeighting,
    effective_sample_size,
    fit_reward_model,
    low_support_share,
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


def test_dr_corrects_a_badly_wrong_reward_model(logged):
    """The importance-weighted correction is what makes DR robust: with a reward model that
    is wrong by arm (+3 on the target's arm, -2 on another), the direct method inherits the
    error while DR stays at the truth. A DR without its correction term, or with an
    unweighted one, fails here."""
    n = logged["action"].shape[0]
    target = np.zeros((n, 3))
    target[:, 1] = 1.0  # always arm 1, true value 2.0
    wrong = logged["q"] + np.array([-2.0, 3.0, 0.0])
    args = (logged["reward"], logged["action"], logged["pscore"], target, wrong)
    assert DirectMethod().estimate_policy_value(*args) == pytest.approx(5.0)
    assert DoublyRobust().estimate_policy_value(*args) == pytest.approx(2.0, abs=0.1)
    interval = DoublyRobust().estimate_interval(*args, n_bootstrap=50, seed=0)
    assert interval["low"] < 2.0 < interval["high"] < 2.5


def test_dr_with_an_exact_model_equals_the_direct_method():
    rng = np.random.default_rng(2)
    n, k = 300, 3
    q = rng.uniform(0, 5, size=(n, k))
    action = rng.integers(0, k, n)
    target = rng.dirichlet(np.ones(k), size=n)
    args = (q[np.arange(n), action], action, np.full(n, 1 / k), target, q)
    assert DoublyRobust().estimate_policy_value(*args) == \
        pytest.approx(DirectMethod().estimate_policy_value(*args))


def test_effective_sample_size_counts_the_decisions_that_carry_the_estimate():
    assert effective_sample_size(np.ones(50)) == pytest.approx(50)
    assert effective_sample_size(np.r_[np.zeros(49), 7.0]) == pytest.approx(1)
    # Half the decisions at weight 2, half at 0 (a deterministic target on a 50/50 log).
    assert effective_sample_size(np.r_[np.full(50, 2.0), np.zeros(50)]) == pytest.approx(50)


def test_low_support_share_exact_from_the_pmf_and_estimated_from_the_weights():
    rng = np.random.default_rng(5)
    n = 20_000
    logging = np.tile([0.02, 0.49, 0.49], (n, 1))  # the logger rarely plays arm 0
    action = rng.choice(3, size=n, p=logging[0])
    target = np.tile([0.5, 0.25, 0.25], (n, 1))
    exact = low_support_share(target, 0.05, logging_dist=logging)
    assert exact == pytest.approx(0.5)
    estimated = low_support_share(target, 0.05, action=action,
                                  pscore=logging[np.arange(n), action])
    assert estimated == pytest.approx(0.5, abs=0.1)
    assert low_support_share(target, 0.01, logging_dist=logging) == 0.0


@pytest.mark.parametrize("seed", range(10))
def test_reward_model_on_a_handful_of_decisions_predicts_every_one(seed):
    """Each cross-fitting fold holds decisions to predict and leaves some to train on, even
    on the smallest log allowed (6 decisions)."""
    rng = np.random.default_rng(seed)
    context = pd.DataFrame({"x": rng.uniform(0, 1, 6), "page": rng.choice(["a", "b"], 6)})
    q = fit_reward_model(context, rng.integers(0, 3, 6), rng.uniform(0, 1, 6), 3, seed=seed,
                         num_boost_round=2)
    assert q.shape == (6, 3) and np.isfinite(q).all()


def test_too_few_decisions_for_a_reward_model_are_refused():
    context = pd.DataFrame({"x": np.arange(5.0)})
    with pytest.raises(DataError, match="too few decisions for a reward model: 5, need 6"):
        fit_reward_model(context, np.zeros(5, int), np.ones(5), 3)
