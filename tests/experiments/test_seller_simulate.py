"""The seller side of the simulator: population, rule book, response and ``--decision-point``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from decisions.choosers import static_seller_arm
from experiments.runner import simulate
from experiments.seller_simulator import (
    SELLER_TRAIT_COLUMNS,
    SELLERS,
    make_seller_stream,
    seller_views,
    synthetic_seller_population,
)
from experiments.simulator import SimulationConfig
from nextbest.cli import main
from nextbest.config import SELLER_POINT, Settings

SETTINGS = Settings().for_point(SELLER_POINT)
ARMS = [arm.name for arm in SETTINGS.bandit.arms]


@pytest.fixture(scope="module")
def population():
    return synthetic_seller_population(SETTINGS, 1500, seed=3)


def test_population_has_every_seller_tier_and_hides_the_traits(population):
    assert set(population["seller_tier"]) == {"vip", "potential", "sleeping", "prospective"}
    assert "stale_lister" in set(population["seller_tags"].explode())
    view = seller_views(population)[0]
    assert view.subject == "seller"
    assert not set(SELLER_TRAIT_COLUMNS) & set(view.features)
    again = synthetic_seller_population(SETTINGS, 1500, seed=3)
    assert again.drop(columns="seller_tags").equals(population.drop(columns="seller_tags"))


@pytest.mark.parametrize(("tier", "tags", "features", "eligible", "expected"), [
    ("vip", ["stale_lister"], {"sales_365d": 50, "items_sold": 80}, ARMS, "vip_support"),
    ("sleeping", ["stale_lister"], {"items_sold": 4}, ARMS, "recall_message"),
    ("prospective", [], {"items_sold": 0}, ARMS, "first_order_free_commission"),
    ("potential", [], {"items_sold": 0, "sales_365d": 0}, ARMS,
     "first_order_free_commission"),
    ("potential", ["stale_lister"], {"items_sold": 20, "sales_365d": 20}, ARMS,
     "price_suggestion"),
    ("potential", [], {"items_sold": 20, "sales_365d": 12}, ARMS, "commission_tier_upgrade"),
    ("potential", [], {"items_sold": 5, "sales_365d": 4}, ARMS, "consignment_guide"),
    ("vip", [], {"sales_365d": 50}, ["commission_tier_upgrade", "price_suggestion"],
     "commission_tier_upgrade"),
])
def test_seller_rule_book_order(tier, tags, features, eligible, expected):
    assert static_seller_arm(SETTINGS.bandit, tier, tags, features, eligible) == expected


def test_response_follows_the_traits(population):
    """Commission-sensitive sellers answer the commission arms more, guided ones the guide."""
    stream = make_seller_stream(SETTINGS, population, SimulationConfig(decisions=4000, seed=3))
    cs = population["commission_sensitivity"].to_numpy()[stream.user_index]
    g = population["guidance_response"].to_numpy()[stream.user_index]
    lift = stream.probability - stream.base_probability[:, None]
    free, guide = ARMS.index("first_order_free_commission"), ARMS.index("consignment_guide")
    assert np.corrcoef(cs, lift[:, free])[0, 1] > 0.5
    assert np.corrcoef(g, lift[:, guide])[0, 1] > 0.5
    # price_suggestion sells below the asking price: less sold value than no action
    assert (stream.sold_value[:, ARMS.index("price_suggestion")] < stream.base_sold_value).all()


def test_seller_simulation_respects_eligibility_and_earns_commission(population):
    result = simulate(SETTINGS, population, SimulationConfig(decisions=1500, seed=3),
                      ["random", "static", "oracle"], side=SELLERS)
    names = np.array([*ARMS, "none"])
    for name in ("random", "static", "oracle"):
        chosen = names[result.traces[name].arm]
        tiers = result.tiers
        assert set(tiers[chosen == "vip_support"]) <= {"vip"}
        assert set(tiers[chosen == "recall_message"]) <= {"sleeping"}
        assert set(tiers[chosen == "consignment_guide"]) <= {"potential", "prospective"}
    static = result.traces["static"]
    assert (names[static.arm][result.tiers == "vip"] != "vip_support").mean() < 0.1
    oracle = result.traces["oracle"].expected.mean()
    assert oracle > static.expected.mean() and oracle > result.traces["random"].expected.mean()
    # reward = commission_rate x sold value - arm cost, on a sale only
    sold = static.converted & (static.arm >= 0)
    np.testing.assert_allclose(static.reward[sold],
                               0.2 * static.revenue[sold] - static.cost[sold])
    assert (static.reward[~static.converted] == 0).all()
    assert result.to_json()["decision_point"] == SELLER_POINT


def test_cli_simulates_the_seller_point(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["simulate", "--decision-point", "seller_offer", "--json", "--decisions", "400",
                 "--users", "300", "--policies", "random,static,oracle", "--no-mlflow",
                 "--no-plots", "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["decision_point"] == "seller_offer"
    assert payload["reward_kind"] == "commission"
    assert set(payload["ratios"]) == {"random", "static", "oracle"}
    assert payload["arms"] == ARMS
    assert main(["simulate", "--decision-point", "seller_offer", "--data", str(tmp_path),
                 "--decisions", "10", "--no-mlflow"]) != 0
    assert "--data" in capsys.readouterr().err
