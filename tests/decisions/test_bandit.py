"""The VW bandit: features, VW text, rewards, both models, every explorer, save and load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from decisions.bandit import (
    ConversionBandit,
    RevenueBandit,
    VWBandit,
    explore,
    make_bandit,
    to_vw_lines,
    vw_arguments,
    vw_learn,
    vw_predictions,
)
from decisions.choosers import ChooserSpec
from decisions.encoding import (
    BanditExample,
    DecisionInput,
    build_example,
    encode_arms,
    encode_shared,
    example_value,
    vw_number,
)
from decisions.policy import RequestContext, UserView, seller_view
from decisions.reward import margin, revenue_of, reward_of
from nextbest.config import SELLER_POINT, BanditConfig, ExplorationConfig, RewardConfig, Settings

USER = UserView(user_id="u1", tier="gold", segment="loyal", tags=["price_sensitive", "a b"],
                churn_probability=0.3, purchase_propensity=None,
                features={"recency_days": 12.0, "monetary_365d": 640.0})
CONTEXT = RequestContext(channel="app", page="item", category="bags|shoes", item_price=120.0,
                         hour=20)
# VW --cb_explore_adf regressing profit, as tuned on the simulator.
PROFIT = ExplorationConfig(model="profit", gamma_scale=2.0,
                           interactions=["SA", "CA", "UA", "PA", "PUA", "PCA", "PSA"])
def pmf_of(bandit, example: BanditExample) -> list[float]:
    """The bandit's pmf on ``example`` (the user and context are in its tokens)."""
    return bandit.pmf(DecisionInput(USER, CONTEXT, example))


def test_shared_features_bin_numbers_and_sanitise_tokens():
    shared = encode_shared(USER, CONTEXT)
    assert shared["S"] == ["tier=gold", "segment=loyal", "known=1", "tag=a_b",
                           "tag=price_sensitive"]
    assert shared["U"] == ["churn=2", "propensity=na", "recency_days=1", "frequency_total=na",
                           "monetary_365d=3", "aov=na", "coupon_share=na",
                           "category_entropy=na", "cart_abandonments_30d=na", "return_rate=na",
                           "spend_trend=na"]
    # "bags|shoes" is no configured category: free text never reaches the bandit.
    assert shared["C"] == ["channel=app", "page=item", "category=other", "luxury=0",
                           "price=3", "relative_price=na", "hour=evening"]
    assert shared["P"] == ["value:1.2"]  # item price in hundreds
    # Missing columns read as 0: no orders, so the smoothed coupon share is 1/2.
    assert shared["N"] == ["coupon_smooth:0.5", "entropy:0", "log_carts:0", "log_aov:0",
                           "has_aov:0", "log_orders:0", "entropy_x_orders:0", "few_orders:1",
                           "log_aov_sq:0", "log_views:0"]
    assert shared["I"] == ["log_price:-0.405465108"]  # log(120 / 180); no aov, no relative


def test_buyer_numbers_smooth_the_coupon_share_and_read_the_item_against_the_aov():
    view = USER.model_copy(update={"features": {
        "frequency_total": 8.0, "coupon_share": 0.75, "category_entropy": 0.5,
        "carts_30d": 3.0, "views_30d": float("nan"), "aov": 180.0}})
    numbers = dict(t.split(":") for t in encode_shared(view, CONTEXT)["N"])
    assert float(numbers["coupon_smooth"]) == pytest.approx(0.7)  # (6 + 1) / (8 + 2)
    assert float(numbers["log_carts"]) == pytest.approx(math.log(4))
    assert float(numbers["entropy_x_orders"]) == pytest.approx(0.5 * math.log(9))
    assert (numbers["few_orders"], numbers["has_aov"], numbers["log_views"]) == ("0", "1", "0")
    one_order = view.model_copy(update={"features": {"frequency_total": 1.0,
                                                     "coupon_share": 1.0}})
    numbers = dict(t.split(":") for t in encode_shared(one_order, CONTEXT)["N"])
    assert float(numbers["coupon_smooth"]) == pytest.approx(2 / 3)  # one coupon says little
    watches = CONTEXT.model_copy(update={"category": "watches", "item_price": 360.0})
    item = encode_shared(view, watches)["I"]
    assert item[0] == "luxury" and item[1] == f"log_price:{vw_number(math.log(2))}"
    assert item[2] == f"log_relative_price:{vw_number(math.log(2))}"  # 360 / aov 180
    assert "I" not in encode_shared(USER, RequestContext(page="home"))  # no item, no aov


def test_behaviour_columns_and_price_relative_to_aov_are_features():
    view = USER.model_copy(update={"features": {"aov": 60.0, "coupon_share": 0.6,
                                                "cart_abandonments_30d": 3.0}})
    shared = encode_shared(view, CONTEXT.model_copy(update={"category": "watches"}))
    assert {"coupon_share=4", "cart_abandonments_30d=3", "aov=2"} <= set(shared["U"])
    assert {"luxury=1", "relative_price=4"} <= set(shared["C"])  # 120 / 60 = 2
    home = encode_shared(view, RequestContext(page="home"))
    assert home["P"] == ["value:0.6"]  # no item: the user's aov stands in for the price
    assert "P" not in encode_shared(USER, RequestContext(page="home"))


def test_a_seller_reads_the_seller_columns_and_their_sales_as_a_number():
    seller = seller_view("s1", {"seller_tier": "vip", "is_seller": True, "sales_365d": 399.0,
                                "sell_through_rate": 0.7})
    tokens = encode_shared(seller, RequestContext(page="account", item_price=150.0))["U"]
    assert {"sales_365d=4", "sell_through_rate=3"} <= set(tokens)  # 399 is in the top bin
    assert "log_sales_365d:5.99146455" in tokens                   # log(1 + 399)
    assert not any(t.startswith(("propensity", "aov")) for t in tokens)  # buyer columns
    unknown = seller_view("s2", {"seller_tier": "prospective", "is_seller": False})
    assert not any(t.startswith("log_") for t in encode_shared(unknown, CONTEXT)["U"])
    assert not any(t.startswith("log_") for t in encode_shared(USER, CONTEXT)["U"])
    assert "N" not in encode_shared(seller, CONTEXT) and "I" not in encode_shared(seller, CONTEXT)


def test_numpy_numbers_are_written_as_plain_vw_numbers():
    """Regression: ``repr(np.float64(-0.44))`` is ``np.float64(-0.44)``, which VW does not
    read as a label, so the example was silently learned as unlabelled."""
    example = build_example(encode_arms(BanditConfig()), USER, CONTEXT, ["coupon", "installment"])
    lines = to_vw_lines(example, ("coupon", np.float64(-0.44), np.float32(0.25)))
    assert lines[1].startswith("0:-0.44:0.25 |A arm=coupon")
    assert "np." not in " ".join(lines)


def test_a_numpy_reward_is_learned():
    config = BanditConfig(exploration=PROFIT)
    example = build_example(encode_arms(config), USER, CONTEXT, ["coupon", "installment"])
    bandit = VWBandit(config)
    for _ in range(50):
        bandit.learn(example, "installment", np.float64(80.0), np.float64(0.5), True)
        bandit.learn(example, "coupon", np.float64(0.0), np.float64(0.5), False)
    pmf = pmf_of(bandit, example)
    bandit.close()
    assert pmf[1] > 0.9  # installment earned 80 every time: it must dominate


def test_three_letter_interactions_are_cubic():
    config = BanditConfig(exploration=ExplorationConfig(interactions=["UA", "UCA"]))
    args = vw_arguments(config)
    assert args[args.index("-q") + 1] == "UA" and args[args.index("--cubic") + 1] == "UCA"
    with pytest.raises(ValueError, match="interactions"):
        ExplorationConfig(interactions=["UX"])


def test_probability_clipping_is_passed_to_vw_and_can_be_switched_off():
    clipped = BanditConfig(exploration=PROFIT)
    args = vw_arguments(clipped)
    assert args[args.index("--clip_p") + 1] == str(clipped.exploration.clip_probability)
    assert "--clip_p" not in vw_arguments(
        BanditConfig(exploration=PROFIT.model_copy(update={"clip_probability": 0})))
    example = build_example(encode_arms(clipped), USER, CONTEXT, ["coupon", "installment"])
    bandit = VWBandit(clipped)  # VW accepts the option next to squarecb
    bandit.learn(example, "installment", 80.0, 0.01, True)
    pmf = pmf_of(bandit, example)
    bandit.close()
    assert sum(pmf) == pytest.approx(1.0)


def test_vw_lines_put_the_label_on_the_chosen_arm_only():
    example = build_example(encode_arms(BanditConfig()), USER, CONTEXT, ["coupon", "certification"])
    lines = to_vw_lines(example, ("certification", -0.5, 0.25))
    assert lines[0].startswith("shared |S tier=gold")
    assert lines[1] == "|A arm=coupon kind=discount value:0.1"
    assert lines[2].startswith("0:-0.5:0.25 |A arm=certification")


def test_profit_reward_subtracts_the_arm_cost_on_conversion():
    config = BanditConfig()
    # coupon: 5 + 10% of the item price 120
    assert reward_of(config, "coupon", True, 200.0, 120.0) == pytest.approx(183.0)
    assert reward_of(config, "coupon", False, 200.0, 120.0) == 0.0
    # no item price: the revenue stands in for it
    assert reward_of(config, "installment", True, 100.0, None) == pytest.approx(97.0)
    assert reward_of(config, None, True, 50.0, 10.0) == 50.0  # control: no arm cost
    conversion = BanditConfig(reward=RewardConfig(kind="conversion"))
    assert reward_of(conversion, "coupon", True, 200.0, 120.0) == 1.0


EXPLORERS = [("profit", "squarecb"), ("profit", "epsilon"), ("profit", "softmax"),
             ("profit", "bag"), ("conversion", "squarecb"), ("conversion", "epsilon"),
             ("conversion", "softmax"), ("conversion_revenue", "squarecb")]


def _config(model: str, algorithm: str = "squarecb") -> BanditConfig:
    base = ExplorationConfig(model=model) if model == "conversion_revenue" else (
        PROFIT if model == "profit" else ExplorationConfig())
    return BanditConfig(exploration=base.model_copy(update={"algorithm": algorithm}))


@pytest.mark.parametrize(("model", "algorithm"), EXPLORERS)
def test_every_exploration_algorithm_gives_a_pmf(model: str, algorithm: str):
    config = _config(model, algorithm)
    bandit = make_bandit(config)
    example = build_example(encode_arms(config), USER, CONTEXT, ["coupon", "installment"])
    for _ in range(20):
        bandit.learn(example, "coupon", 50.0, 0.5, True)
        bandit.learn(example, "installment", 0.0, 0.5, False)
    pmf = pmf_of(bandit, example)
    bandit.close()
    assert len(pmf) == 2 and sum(pmf) == pytest.approx(1.0, abs=1e-6)
    assert pmf[0] > pmf[1]  # the rewarded arm is the more likely


@pytest.mark.parametrize("model", ["profit", "conversion", "conversion_revenue"])
def test_saved_model_continues_exactly_like_the_original(tmp_path: Path, model: str):
    config = _config(model)
    arms = encode_arms(config)
    example = build_example(arms, USER, CONTEXT, ["coupon", "installment", "certification"])
    original = make_bandit(config)
    for i in range(30):
        original.learn(example, ["coupon", "installment"][i % 2], float(i % 3), 0.4, i % 3 > 0)
    original.save(tmp_path / "m.vw")
    loaded = make_bandit(config, model_file=tmp_path / "m.vw", learned=30)
    for bandit in (original, loaded):
        for _ in range(10):
            bandit.learn(example, "certification", 80.0, 0.3, True)
    assert pmf_of(loaded, example) == pmf_of(original, example)


def test_conversion_model_weighs_conversion_by_the_known_margin():
    """Equal conversion on every arm: the arm that keeps the most of the price wins."""
    config = BanditConfig()
    bandit = ConversionBandit(config)
    example = build_example(encode_arms(config), USER, CONTEXT,
                            ["coupon", "installment", "certification"])
    for i in range(300):
        for arm in ("coupon", "installment", "certification"):
            bandit.learn(example, arm, 0.0, 1.0, i % 4 == 0)
    probabilities = bandit.conversion_probabilities(example)
    assert probabilities == pytest.approx([0.25] * 3, abs=0.07)  # online: recent labels weigh
    expected = bandit.expected_rewards(example)
    # per 100: coupon keeps 120 - 5 - 12, installment 120 - 3.6, certification 120 - 0.5
    margins = [103.0, 116.4, 119.5]
    assert expected == pytest.approx([p * m / 100 for p, m in zip(probabilities, margins,
                                                                   strict=True)])
    pmf = pmf_of(bandit, example)
    bandit.close()
    assert max(range(3), key=pmf.__getitem__) == 2  # certification: the cheapest arm
    assert pmf[0] < pmf[1] < pmf[2]                 # further behind, less explored


def test_conversion_model_learns_which_arm_converts():
    config = BanditConfig()
    bandit = ConversionBandit(config)
    example = build_example(encode_arms(config), USER, CONTEXT, ["coupon", "certification"])
    for _ in range(200):
        bandit.learn(example, "coupon", 103.0, 0.5, True)       # numpy-free: plain labels
        bandit.learn(example, "certification", 0.0, 0.5, False)
    pmf = pmf_of(bandit, example)
    bandit.close()
    assert pmf[0] > 0.9


def test_revenue_model_learns_what_a_sale_brings_beyond_the_value():
    """Equal conversion, but a coupon sale brings three times the item price: the learned
    revenue, not the known value, makes coupon the better arm (the conversion model would
    pick certification, the cheapest on the item's price)."""
    config = BanditConfig(exploration=ExplorationConfig(model="conversion_revenue"))
    bandit = make_bandit(config)
    assert isinstance(bandit, RevenueBandit)
    example = build_example(encode_arms(config), USER, CONTEXT, ["coupon", "certification"])
    coupon, certification = config.arm("coupon"), config.arm("certification")
    for i in range(300):
        converted = i % 2 == 0
        for arm, revenue in ((coupon, 360.0), (certification, 120.0)):
            reward = reward_of(config, arm.name, converted, revenue, 120.0)
            bandit.learn(example, arm.name, reward, 0.5, converted)
    assert bandit.revenue_multiples(example) == pytest.approx([3.0, 1.0], rel=0.05)
    expected = bandit.expected_rewards(example)
    p = bandit.conversion_probabilities(example)
    # per 100: coupon keeps 360 - 5 - 12, certification 120 - 0.5
    assert expected == pytest.approx([p[0] * 3.43, p[1] * 1.195], rel=0.06)
    pmf = pmf_of(bandit, example)
    bandit.close()
    assert pmf[0] > pmf[1]


def test_revenue_is_read_back_from_the_reward():
    config = BanditConfig()
    coupon = config.arm("coupon")  # cost 5 + 10% of the item price
    reward = reward_of(config, "coupon", True, 300.0, 120.0)
    assert revenue_of(config, coupon, reward, 120.0) == pytest.approx(300.0)
    assert revenue_of(config, coupon, reward_of(config, "coupon", True, 300.0, None),
                      None) == pytest.approx(300.0)
    seller = Settings().for_point(SELLER_POINT).bandit
    free = seller.arm("first_order_free_commission")
    reward = reward_of(seller, free.name, True, 900.0, 150.0)  # 20% of 900 - 20% of 150
    assert reward == pytest.approx(150.0)
    assert revenue_of(seller, free, reward, 150.0) == pytest.approx(900.0)
    assert revenue_of(BanditConfig(reward=RewardConfig(kind="conversion")), coupon, 1.0,
                      120.0) is None


def test_margin_without_a_value_uses_the_reward_scale():
    config = BanditConfig()
    coupon = config.arm("coupon")
    assert margin(config, coupon, 200.0) == pytest.approx(200.0 - 5.0 - 20.0)
    assert margin(config, coupon, None) == pytest.approx(100.0 - 5.0 - 10.0)
    assert margin(BanditConfig(reward=RewardConfig(kind="conversion")), coupon, 200.0) == 1.0
    home = build_example(encode_arms(config), USER, RequestContext(page="home"), ["coupon"])
    assert home.value is None and build_example(
        encode_arms(config), USER, CONTEXT, ["coupon"]).value == 120.0


def test_a_log_without_the_value_falls_back_to_the_price_namespace():
    example = build_example(encode_arms(BanditConfig()), USER, CONTEXT, ["coupon"])
    older = BanditExample.model_validate({"shared": example.shared, "arms": example.arms})
    assert older.value is None and example_value(older) == pytest.approx(120.0)
    assert example_value(BanditExample()) is None


def test_squarecb_is_inverse_gap_weighting():
    config = BanditConfig(exploration=ExplorationConfig(gamma_scale=4.0, gamma_exponent=0.5))
    pmf = explore(config, [0.5, 0.3, 0.1], learned=3)   # gamma = 4 * 4 ** 0.5 = 8
    assert pmf[1] == pytest.approx(1 / (3 + 8 * 0.2))
    assert pmf[2] == pytest.approx(1 / (3 + 8 * 0.4))
    assert pmf[0] == pytest.approx(1 - pmf[1] - pmf[2])
    later = explore(config, [0.5, 0.3, 0.1], learned=10_000)
    assert later[0] > pmf[0]  # greedier as it learns
    epsilon = BanditConfig(exploration=ExplorationConfig(algorithm="epsilon", epsilon=0.3))
    assert explore(epsilon, [0.1, 0.4], learned=0) == pytest.approx([0.15, 0.85])
    softmax = BanditConfig(exploration=ExplorationConfig(algorithm="softmax",
                                                         softmax_lambda=2.0))
    assert explore(softmax, [0.0, 0.5], learned=0) == pytest.approx(
        [1 / (1 + np.e), np.e / (1 + np.e)])


def test_conversion_model_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="bag"):
        ExplorationConfig(algorithm="bag")
    with pytest.raises(ValueError, match="namespace P"):
        ExplorationConfig(interactions=["UA", "PUA"])
    assert ExplorationConfig(model="profit", algorithm="bag").algorithm == "bag"
    with pytest.raises(ValueError, match="bag"):
        ExplorationConfig(model="conversion_revenue", algorithm="bag")
    with pytest.raises(ValueError, match="namespace P"):
        ExplorationConfig(model="conversion_revenue", interactions=["PA"])


def test_fingerprint_changes_with_arms_and_exploration():
    base = ChooserSpec().fingerprint(BanditConfig())
    assert base == ChooserSpec().fingerprint(BanditConfig())
    assert base != ChooserSpec().fingerprint(BanditConfig(exploration=ExplorationConfig(
        algorithm="epsilon")))
    arms = BanditConfig().arms[:2]
    assert base != ChooserSpec().fingerprint(BanditConfig(arms=arms, default_arm="coupon"))


def test_native_vw_calls_learn_and_predict_as_the_workspace_does():
    """vw_learn / vw_predictions (the decision path's native calls) give exactly the
    predictions of Workspace.learn / Workspace.predict on the same examples, and finish
    every example (thousands of calls leave the workspace working)."""
    import vowpalwabbit

    args = ["--quiet", "--loss_function", "logistic", "-q", "UA", "-b", "16"]
    ours, theirs = vowpalwabbit.Workspace(arg_list=args), vowpalwabbit.Workspace(arg_list=args)
    rng = np.random.default_rng(3)
    arms = ["arm=coupon kind=discount", "arm=installment kind=financing", "arm=certification"]
    lines = []
    for i in range(3000):
        shared = f"|U coupon={rng.integers(5)} carts={rng.integers(4)} |C page=p{i % 3}"
        lines.append([f"{shared} |A {arm}" for arm in arms])
        label = 1 if rng.random() < 0.3 else -1
        arm = int(rng.integers(3))
        vw_learn(ours, f"{label} {lines[-1][arm]}")
        theirs.learn(f"{label} {lines[-1][arm]}")
    for batch in lines[-50:]:
        assert vw_predictions(ours, batch) == [theirs.predict(line) for line in batch]
    assert len(set(vw_predictions(ours, lines[-1]))) == 3  # it learned the arms apart
    ours.finish()
    theirs.finish()
