"""Tiers, RFM segments, clusters, seller tiers and tags: invariants for every user."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.segmentation import (
    NO_PURCHASE,
    RF_GRID,
    SEGMENTS,
    SELLER_TIERS,
    TIERS,
    assign_clusters,
    assign_seller_tiers,
    assign_tags,
    assign_tiers,
    rfm_scores,
    rfm_segments,
    segment_of,
)
from features.synth import synthesize
from nextbest.config import (
    ClusterConfig,
    PolicyConfig,
    Settings,
    TagRule,
    TierConfig,
    load_settings,
)
from nextbest.errors import ConfigError

AS_OF = date(2025, 10, 1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Features of a 2,000-user synthetic marketplace, built once for the module."""
    root = tmp_path_factory.mktemp("segmentation")
    synthesize(n_users=2000, days=730, seed=7, raw_dir=root / "raw", latent_dir=root / "latent")
    settings = load_settings(None, environ={})
    return build_features(settings, AS_OF, raw_dir=root / "raw", out_dir=root / "features",
                          refresh_store=False, progress=False)


def test_every_user_has_exactly_one_known_tier_consistent_with_recency(
        built: pd.DataFrame) -> None:
    cfg = TierConfig()
    assert built["tier"].notna().all() and set(built["tier"]) <= set(TIERS)
    recency = built["recency_days"]
    buyer = built["frequency_total"] > 0
    assert ((built["tier"] == "new") == ~buyer).all()
    limits = {"platinum": cfg.platinum_recency_days, "gold": cfg.gold_recency_days,
              "silver": cfg.silver_recency_days, "dormant": cfg.dormant_days}
    for tier, days in limits.items():
        assert (recency[built["tier"] == tier] <= days).all(), tier
    assert (recency[built["tier"] == "dormant"] > cfg.silver_recency_days).all()
    assert (recency[built["tier"] == "churned"] > cfg.dormant_days).all()
    assert {"platinum", "gold", "silver", "dormant", "churned", "new"} <= set(built["tier"])


def test_platinum_is_its_share_of_buyers_and_the_most_valuable_recent_ones(
        built: pd.DataFrame) -> None:
    cfg = TierConfig()
    buyers = built[built["frequency_total"] > 0]
    platinum = buyers["tier"] == "platinum"
    assert platinum.sum() == np.ceil(cfg.platinum_share * len(buyers))
    recent = buyers[buyers["recency_days"] <= cfg.platinum_recency_days]
    assert (recent.loc[recent["tier"] != "platinum", "monetary_365d"].max()
            <= recent.loc[recent["tier"] == "platinum", "monetary_365d"].min())
    assert (buyers["tier"] == "gold").sum() <= np.ceil(cfg.gold_share * len(buyers))


def test_rfm_scores_and_segment_for_every_user(built: pd.DataFrame) -> None:
    buyer = built["frequency_total"] > 0
    for column in ("r_score", "f_score", "m_score"):
        assert (built.loc[~buyer, column] == 0).all()
        assert built.loc[buyer, column].between(1, 5).all()
    assert ((built["segment"] == NO_PURCHASE) == ~buyer).all()
    expected = [segment_of(r, f) for r, f in
                zip(built.loc[buyer, "r_score"], built.loc[buyer, "f_score"], strict=True)]
    assert list(built.loc[buyer, "segment"]) == expected
    # The most recent buyers score R 5, the least recent R 1.
    assert built.loc[built.loc[buyer, "recency_days"].idxmin(), "r_score"] == 5
    assert built.loc[built.loc[buyer, "recency_days"].idxmax(), "r_score"] == 1


def test_the_grid_maps_all_25_cells_to_exactly_one_of_ten_segments() -> None:
    cells = [cell for cells in RF_GRID.values() for cell in cells]
    assert sorted(cells) == [(r, f) for r in range(1, 6) for f in range(1, 6)]
    assert len(SEGMENTS) == 10 and all(RF_GRID[name] for name in SEGMENTS)


def test_every_segment_is_reachable_from_features() -> None:
    # 25 x 20 buyers: recency and frequency chosen so each (R, F) quintile cell is filled.
    rows = [{"recency_days": float(100 - 20 * r + i * 0.01), "frequency_total": f * 100 + i,
             "monetary_total": 1.0}
            for r in range(5) for f in range(5) for i in range(20)]
    rows.append({"recency_days": np.nan, "frequency_total": 0, "monetary_total": 0.0})
    frame = pd.DataFrame(rows)
    segments = rfm_segments(rfm_scores(frame))
    assert set(segments) == set(SEGMENTS) | {NO_PURCHASE}
    assert segments.iloc[-1] == NO_PURCHASE


def test_tiers_follow_config_thresholds() -> None:
    frame = pd.DataFrame({
        "frequency_total": [5, 5, 5, 5, 5, 0],
        "recency_days": [10.0, 10.0, 50.0, 120.0, 400.0, np.nan],
        "monetary_365d": [900.0, 10.0, 800.0, 700.0, 600.0, 0.0],
    })
    cfg = TierConfig(platinum_share=0.2, gold_share=0.2)
    assert list(assign_tiers(frame, cfg)) == ["platinum", "silver", "gold", "dormant", "churned",
                                             "new"]
    with pytest.raises(ConfigError, match="value_column"):
        assign_tiers(frame, TierConfig(value_column="no_such_column"))


def test_seller_tiers_only_for_sellers_and_prospects(built: pd.DataFrame) -> None:
    sellers = built["is_seller"]
    assert set(built.loc[~sellers, "seller_tier"].dropna()) == {"prospective"}
    assert set(built.loc[sellers, "seller_tier"]) == {"vip", "potential", "sleeping"}
    prospects = built["seller_tier"] == "prospective"
    assert ((built.loc[prospects, "unfinished_listings"] >= 1)
            | (built.loc[prospects, "resellable_items"] >= 3)).all()


def test_seller_tiers_follow_seller_rfm() -> None:
    """VIP needs recency, frequency and value; the other active sellers are potential."""
    frame = pd.DataFrame({
        "is_seller": [True, True, True, True, True, False, False],
        "seller_recency_days": [5.0, 10.0, 200.0, 50.0, 3.0, np.nan, np.nan],
        "sales_365d": [4, 9, 9, 9, 1, 0, 0],
        "commission_365d": [10.0, 500.0, 900.0, 800.0, 990.0, 0.0, 0.0],
        "unfinished_listings": [0, 0, 0, 0, 0, 1, 0],
        "resellable_items": [0, 0, 0, 0, 0, 0, 1]})
    tiers = assign_seller_tiers(frame, TierConfig(seller_vip_share=0.5))
    # 4 active sellers (<= 90 days), so 2 VIP places: rows 0 and 1 are recent (<= 30 days)
    # and frequent (>= 3 sales); row 3 is active but not recent, row 4 sold only once, so
    # both stay potential despite more commission; row 2 is idle: sleeping.
    assert list(tiers) == ["vip", "vip", "sleeping", "potential", "potential", "prospective",
                           None]
    assert SELLER_TIERS == ("vip", "potential", "sleeping", "prospective")
    with pytest.raises(ConfigError, match="seller_value_column"):
        assign_seller_tiers(frame, TierConfig(seller_value_column="nope"))


def test_tags_match_their_rules_and_nan_is_false(built: pd.DataFrame) -> None:
    for rule in Settings().features.tags:
        holds = built.eval(rule.when).fillna(False).astype(bool)
        has_tag = built["tags"].map(lambda tags, name=rule.name: name in tags)
        assert (has_tag == holds).all(), rule.name
    frame = pd.DataFrame({"recency_days": [np.nan, 90.0, 10.0]})
    tags = assign_tags(frame, [TagRule(name="not_recent", when="not (recency_days < 30)")])
    assert list(tags) == [[], ["not_recent"], []]


@pytest.mark.parametrize("when", ["monetary_total >>> 3", "no_such_column > 1", "recency_days"])
def test_a_bad_tag_rule_raises_config_error_naming_the_tag(when: str) -> None:
    frame = pd.DataFrame({"monetary_total": [1.0], "recency_days": [3.0]})
    with pytest.raises(ConfigError, match="broken_tag"):
        assign_tags(frame, [TagRule(name="broken_tag", when=when)])


def test_a_tag_rule_may_not_read_a_forbidden_feature_even_when_the_data_has_it() -> None:
    frame = pd.DataFrame({"device_model": ["iPhone 15", "Galaxy A05"], "aov": [80.0, 20.0]})
    rule = TagRule(name="can_pay", when="device_model == 'iPhone 15' or aov > 50")
    with pytest.raises(ConfigError, match="tag 'can_pay'.*reads device_model, listed in "
                                          "policy.forbidden_features"):
        assign_tags(frame, [rule])
    allowed = PolicyConfig(forbidden_features=["ip"])
    assert list(assign_tags(frame, [rule], allowed)) == [["can_pay"], []]


def test_clusters_are_seeded_profiled_and_written(built: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    cfg = ClusterConfig(k_min=2, k_max=5, sample_size=1500, silhouette_sample=500, seed=3)
    labels, report = assign_clusters(built, cfg)
    again, report_again = assign_clusters(built, cfg)
    pd.testing.assert_series_equal(labels, again)
    assert report == report_again
    assert 2 <= report.k <= 5 and set(labels) == set(range(report.k))
    assert set(report.silhouette) <= set(range(2, 6))
    assert report.silhouette[report.k] == max(report.silhouette.values())
    assert sum(p.size for p in report.clusters) == len(built)
    assert len({p.name for p in report.clusters}) == report.k
    spend = [p.means["monetary_total"] for p in report.clusters]
    assert spend == sorted(spend)  # cluster ids ordered by mean spend
    assert built["cluster"].between(0, 7).all()


def test_clusters_json_is_written_beside_the_features(tmp_path: Path) -> None:
    synthesize(n_users=300, days=365, seed=1, raw_dir=tmp_path / "raw",
               latent_dir=tmp_path / "latent")
    settings = load_settings(None, environ={})
    frame = build_features(settings, date(2024, 12, 1), raw_dir=tmp_path / "raw",
                           out_dir=tmp_path / "features", refresh_store=False, progress=False)
    report = json.loads((tmp_path / "features/as_of=2024-12-01/clusters.json").read_text())
    assert report["k"] == frame["cluster"].nunique()
    assert all(c["name"] and 0 < c["share"] <= 1 for c in report["clusters"])
