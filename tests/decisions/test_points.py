"""Decision points: config, one engine each on one log, routing, seller eligibility, rewards."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from decisions.decision_log import SCHEMA_STEPS, DecisionLog
from decisions.engine import DecisionEngine
from decisions.points import DecisionPoints
from decisions.policy import RequestContext, UserView, seller_view
from decisions.reward import reward_of
from experiments.logs import read_log
from features.build import partition_dir
from features.comparables import comparable_prices, write_comparables
from nextbest.cli import main
from nextbest.config import DEFAULT_POINT, SELLER_POINT, Settings, load_settings
from nextbest.errors import ConfigError, Conflict, NotFound
from nextbest.storage import open_database

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONTEXT = RequestContext(channel="web", page="item", item_price=120.0, category="bags", hour=14)
SELLERS: dict[str, dict[str, Any]] = {
    "vip": {"seller_tier": "vip", "is_seller": True, "items_sold": 40, "sales_365d": 30,
            "stale_listings": 0, "seller_recency_days": 3},
    "sleeping": {"seller_tier": "sleeping", "is_seller": True, "items_sold": 6,
                 "sales_365d": 0, "stale_listings": 2, "seller_recency_days": 200},
    "prospect": {"seller_tier": "prospective", "is_seller": False, "items_sold": 0,
                 "unfinished_listings": 1},
}


def test_points_default_and_legacy_spelling(tmp_path: Path):
    settings = Settings()
    assert settings.point_names == [DEFAULT_POINT, SELLER_POINT]
    assert settings.bandit == settings.decision_points[DEFAULT_POINT]
    seller = settings.for_point(SELLER_POINT)
    assert seller.bandit.subject == "seller" and seller.decision_point == SELLER_POINT
    assert seller.paths.bandit_dir == Path(settings.paths.bandit_dir) / SELLER_POINT
    assert seller.for_point(DEFAULT_POINT).paths.bandit_dir == settings.paths.bandit_dir
    # `bandit:` is decision_points.buyer_offer; a later layer (the environment) wins.
    file = tmp_path / "nextbest.yaml"
    file.write_text("bandit:\n  control_share: 0.2\n"
                    "decision_points:\n  seller_offer:\n    control_share: 0.3\n")
    loaded = load_settings(file, environ={"NEXTBEST__BANDIT__CONTROL_SHARE": "0.25"})
    assert loaded.bandit.control_share == 0.25
    assert loaded.point(SELLER_POINT).control_share == 0.3
    assert [a.name for a in loaded.point(SELLER_POINT).arms][0] == "first_order_free_commission"
    off = load_settings(file, environ={"NEXTBEST__DECISION_POINTS__SELLER_OFFER__ENABLED":
                                       "false"})
    assert off.point_names == [DEFAULT_POINT]
    with pytest.raises(NotFound, match="switched off") as caught:
        off.point(SELLER_POINT)
    assert caught.value.field == "decision_point"


def test_an_arm_rule_naming_an_unknown_column_is_refused(settings: Settings):
    data = settings.model_dump()
    data["decision_points"][SELLER_POINT]["arms"][0]["eligible_when"] = "slaes_365d > 3"
    with pytest.raises(ConfigError, match="first_order_free_commission.*slaes_365d"):
        DecisionEngine(Settings.model_validate(data).for_point(SELLER_POINT), durable=False)


def test_seller_arms_follow_the_documents_tiers(settings: Settings):
    engine = DecisionEngine(settings.for_point(SELLER_POINT), durable=False)
    try:
        eligible = {name: engine.policy.plan(seller_view(name, record), context=CONTEXT).eligible
                    for name, record in SELLERS.items()}
    finally:
        engine.close()
    assert set(eligible["vip"]) == {"commission_tier_upgrade", "vip_support"}
    assert set(eligible["sleeping"]) == {"price_suggestion", "recall_message"}
    assert set(eligible["prospect"]) == {"first_order_free_commission", "consignment_guide"}


def test_commission_reward_pays_the_waived_commission():
    seller = Settings().point(SELLER_POINT)
    # 20% of 300 sold, minus the waived 20% of the 120 first item.
    assert reward_of(seller, "first_order_free_commission", True, 300.0, 120.0) == \
        pytest.approx(0.2 * 300 - 0.2 * 120)
    assert reward_of(seller, "consignment_guide", True, 300.0, 120.0) == pytest.approx(59.9)
    assert reward_of(seller, "vip_support", False, 0.0, 120.0) == 0.0


def test_each_point_keeps_its_own_counts_and_feedback_finds_its_engine(
        tmp_path: Path, storage, settings: Settings, monkeypatch: pytest.MonkeyPatch):
    settings = storage.use(settings, monkeypatch)
    points = DecisionPoints.open(settings, lambda scoped: DecisionEngine(scoped))
    try:
        buyer = points.get(None).decide(UserView(user_id="b1", known=False), CONTEXT, now=T0)
        sold = points.get(SELLER_POINT).decide(seller_view("vip1", SELLERS["vip"]), CONTEXT,
                                               now=T0)
        assert (buyer.decision_point, sold.decision_point) == (DEFAULT_POINT, SELLER_POINT)
        assert sold.action in {"commission_tier_upgrade", "vip_support"}
        # A fresh set of engines (another worker) finds each event's point in the log.
        points.close()
        points = DecisionPoints.open(settings, lambda scoped: DecisionEngine(scoped))
        result = points.feedback(sold.event_id, True, 500.0, now=T0)
        assert result.decision_point == SELLER_POINT and result.status == "accepted"
        with pytest.raises(Conflict, match="seller_offer") as caught:
            points.feedback(buyer.event_id, True, 10.0, point=SELLER_POINT, now=T0)
        assert caught.value.field == "decision_point"
        with pytest.raises(NotFound) as missing:
            points.get("nope")
        assert missing.value.field == "decision_point"
        seller_stats, buyer_stats = points.stats(SELLER_POINT), points.stats(None)
        assert (seller_stats["decisions"], seller_stats["rewards"]) == (1, 1)
        assert (buyer_stats["decisions"], buyer_stats["rewards"]) == (1, 0)
        assert seller_stats["rewards_learned"] == 1 and buyer_stats["rewards_learned"] == 0
        assert buyer_stats["decision_points"] == [DEFAULT_POINT, SELLER_POINT]
        # Erasure and export see every point.
        assert [d["decision_point"] for d in points.export_user("vip1")] == [SELLER_POINT]
        assert points.erase_user("vip1") == 1
        assert points.stats(SELLER_POINT)["decisions"] == 0
    finally:
        points.close()


def test_an_older_log_is_upgraded_with_its_counts(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    db = open_database(path)
    db.migrate("decision_log", SCHEMA_STEPS[:3])
    db.execute("INSERT INTO decisions (event_id, user_id, ts, tier, features, eligible, action, "
               "probability, pmf, policy_version, personalized, control, learnable, reason) "
               "VALUES ('e1', 'u1', 1.0, 'gold', '{}', '[]', 'coupon', 1.0, '{}', 'v', 1, 0, 1, "
               "'r')")
    db.execute("INSERT INTO rewards (event_id, converted, revenue, reward, source, ts, "
               "learnable) VALUES ('e1', 1, 20.0, 15.0, 'feedback', 2.0, 1)")
    db.close()
    log = DecisionLog(path)
    try:
        assert log.arm_summary() == [{"tier": "gold", "action": "coupon", "decisions": 1,
                                      "rewards": 1, "reward_sum": 15.0, "learnable": 1}]
        assert log.get_decision("e1").decision.decision_point == DEFAULT_POINT
        assert [r.event_id for r in log.rewards_after(0)] == ["e1"]
    finally:
        log.close()
    seller = DecisionLog(path, point=SELLER_POINT)
    try:
        assert seller.arm_summary() == [] and seller.rewards_after(0) == []
    finally:
        seller.close()


def test_offline_analyses_read_one_points_decisions(tmp_path: Path, settings: Settings,
                                                    capsys: pytest.CaptureFixture[str]):
    data = settings.model_dump()
    data["decision_points"][SELLER_POINT]["control_share"] = 0.3
    settings = Settings.model_validate(data)
    path = tmp_path / "log.sqlite"
    points = DecisionPoints.open(settings, lambda scoped: DecisionEngine(scoped, log_path=path))
    try:
        for i in range(6):
            points.get(None).decide(UserView(user_id=f"b{i}", known=False), CONTEXT, now=T0)
        for i in range(40):
            made = points.get(SELLER_POINT).decide(seller_view(f"s{i}", SELLERS["vip"]),
                                                   CONTEXT, now=T0)
            points.feedback(made.event_id, i % 3 == 0, 300.0 if i % 3 == 0 else 0.0, now=T0)
    finally:
        points.close()
    sellers = read_log(path, settings.for_point(SELLER_POINT))
    assert len(sellers) == 40 and set(sellers["action"].dropna()) <= {
        "commission_tier_upgrade", "vip_support"}
    assert len(read_log(path, settings)) == 6
    assert main(["abtest", "--logs", str(path), "--decision-point", SELLER_POINT,
                 "--json", "--out", str(tmp_path / "ab")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_decisions"] == 40
    overall = report["overall"][0]["revenue"]["treatment"], \
        report["overall"][0]["profit"]["treatment"]
    assert 0 < overall[1] <= 0.2 * overall[0]  # the platform keeps its commission, less costs


def test_a_price_suggestion_is_the_categorys_sold_median(settings: Settings):
    days = [T0 - timedelta(days=d) for d in (1, 5, 10, 20, 40, 400)]
    orders = pd.DataFrame({
        "ts": days * 2, "amount": [100.0, 120.0, 140.0, 160.0, 180.0, 999.0] + [50.0] * 6,
        "category": ["bags"] * 6 + ["shoes"] * 3 + [None] * 3, "status": "completed"})
    found = comparable_prices(orders, T0.date())
    assert set(found) == {"bags"}  # 400 days ago is out; 3 shoes sales are too few
    assert (found["bags"].sales, found["bags"].median) == (5, 140.0)
    directory = partition_dir(Path(settings.paths.features_dir), T0.date())
    directory.mkdir(parents=True)
    (directory / "features.parquet").write_bytes(b"")
    raw = Path(settings.paths.raw_dir)
    raw.mkdir(parents=True)
    orders.to_parquet(raw / "orders.parquet")
    assert write_comparables(raw, T0.date(), directory) == 1
    engine = DecisionEngine(settings.for_point(SELLER_POINT), durable=False)
    try:
        stale = seller_view("s1", SELLERS["sleeping"])
        made = engine.decide(stale, CONTEXT, now=T0, arms=["price_suggestion"])
        other = engine.decide(stale, CONTEXT.model_copy(update={"category": "shoes"}), now=T0,
                              arms=["price_suggestion"])
    finally:
        engine.close()
    assert made.action == "price_suggestion" and made.offer.suggested_price == 140.0
    assert "median of 5 bags sales" in made.offer.evidence
    assert other.offer.suggested_price is None and "no sold comparables" in other.offer.evidence
