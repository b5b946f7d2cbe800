"""Risk, behaviour-path, sentiment and lifecycle groups: hand-checked features, tags with
reasons, the review queue from a build to the CLI, and the synthetic marketplace's truth."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from features.build import build_features, feature_columns
from features.segmentation import assign_lifecycle
from features.store import open_store
from features.synth import group_truth, synthesize
from nextbest.cli import main as cli_main
from nextbest.config import FeaturesConfig, Settings, load_settings, path_overrides
from nextbest.errors import NotFound

AS_OF = date(2025, 3, 1)
CARDS_REASON = "card_switching: paid with 4 different payment fingerprints in 30 days"


def _orders() -> pd.DataFrame:
    rows = [
        # u_card pays with four cards in one week.
        *[(f"c{i}", "u_card", f"2025-02-2{i} 12:00", 40.0, f"fp_{i}", False, "completed")
          for i in range(1, 5)],
        # u_ring1..3 share one card: one perk order each, then nothing.
        *[(f"r{i}", f"u_ring{i}", "2025-01-10 10:00", 30.0, "fp_ring", True, "completed")
          for i in range(1, 4)],
        # u_plain: a regular buyer with one card; took the perk and came back.
        ("p1", "u_plain", "2024-12-01 10:00", 80.0, "fp_plain", True, "completed"),
        ("p2", "u_plain", "2025-01-15 10:00", 90.0, "fp_plain", False, "completed"),
        ("p3", "u_plain", "2025-02-20 10:05", 100.0, "fp_plain", False, "completed"),
        # Rows on or after as_of never count.
        ("late", "u_plain", "2025-03-01 00:00", 999.0, "fp_new", False, "completed"),
    ]
    frame = pd.DataFrame(rows, columns=["order_id", "buyer_id", "ts", "amount",
                                        "payment_fingerprint", "new_user_perk", "status"])
    return frame.assign(ts=pd.to_datetime(frame["ts"]).astype("datetime64[us]"),
                        item_id="i_" + frame["order_id"], category="bags")


def _events() -> pd.DataFrame:
    def ev(user: str, ts: str, kind: str, item: str | None = None, session: str | None = None,
           ip: str = "10.0.0.0/24", country: str = "US", rating: float | None = None) -> dict:
        return {"user_id": user, "ts": ts, "type": kind, "item_id": item,
                "category": "bags" if item else None, "session_id": session, "ip_prefix": ip,
                "country": country, "rating": rating}

    rows = [
        # u_plain saw i_p2 a day early and i_p3 five minutes before buying; in p3's session
        # it compared three other bags.
        ev("u_plain", "2025-01-14 10:00", "view", "i_p2", "s1"),
        ev("u_plain", "2025-01-15 10:00", "purchase", "i_p2", "s2"),
        *[ev("u_plain", f"2025-02-20 09:5{i}", "view", f"other{i}", "s3") for i in range(3)],
        ev("u_plain", "2025-02-20 10:00", "view", "i_p3", "s3"),
        ev("u_plain", "2025-02-20 10:05", "purchase", "i_p3", "s3"),
        ev("u_plain", "2025-02-21 10:00", "add_to_cart", "kept1", "s4"),
        ev("u_plain", "2025-02-21 10:01", "add_to_cart", "i_p3", "s4"),
        ev("u_plain", "2025-02-25 10:00", "review", rating=5.0),
        ev("u_plain", "2025-02-26 10:00", "review", rating=2.0),
        ev("u_plain", "2025-02-27 10:00", "complaint"),
        ev("u_plain", "2025-02-27 11:00", "order_history"),
        # u_card logs in from three countries on the last day.
        ev("u_card", "2025-02-28 08:00", "login", ip="203.0.113.0/24", country="US"),
        ev("u_card", "2025-02-28 09:00", "login", ip="198.51.100.0/24", country="BR"),
        ev("u_card", "2025-02-28 10:00", "login", ip="192.0.2.0/24", country="NG"),
        ev("u_card", "2025-03-01 10:00", "login", ip="192.0.3.0/24", country="RU"),  # too late
    ]
    frame = pd.DataFrame(rows)
    return frame.assign(ts=pd.to_datetime(frame["ts"]).astype("datetime64[us]"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pd.DataFrame]:
    """The hand-made tables built once (the online store refreshed) for the module."""
    settings = load_settings(None, environ=path_overrides(tmp_path_factory.mktemp("home")))
    raw = Path(settings.paths.raw_dir)
    raw.mkdir(parents=True)
    _orders().to_parquet(raw / "orders.parquet")
    _events().to_parquet(raw / "events.parquet")
    frame = build_features(settings, AS_OF, progress=False)
    return settings, frame.set_index("user_id")


@pytest.fixture
def built(home: tuple[Settings, pd.DataFrame]) -> pd.DataFrame:
    return home[1]


def test_group_features_by_hand(built: pd.DataFrame) -> None:
    card, plain, ring = built.loc["u_card"], built.loc["u_plain"], built.loc["u_ring1"]
    assert card["payment_fingerprints_30d"] == 4 and card["fingerprint_accounts"] == 1
    assert (card["countries_24h"], card["ip_prefixes_24h"], card["countries_30d"]) == (3, 3, 3)
    assert ring["fingerprint_accounts"] == 3 and ring["new_user_perks"] == 1
    assert ring["purchases_after_perk"] == 0 and ring["perk_age_days"] == pytest.approx(
        (pd.Timestamp(AS_OF) - pd.Timestamp("2025-01-10 10:00")) / pd.Timedelta(days=1))
    assert plain["purchases_after_perk"] == 2 and plain["payment_fingerprints_30d"] == 1
    # First views 24 h and 5 min before the two purchases: the median is their mean.
    assert plain["purchases_viewed_365d"] == 2
    assert plain["minutes_to_buy_median"] == pytest.approx((24 * 60 + 5) / 2)
    # p3's session showed four bags before the purchase (p2's session none): mean 2.
    assert plain["compare_items_per_purchase"] == pytest.approx(2.0)
    assert plain["carted_not_bought_90d"] == 1  # i_p3 was ordered, kept1 not
    assert (plain["reviews_365d"], plain["rating_mean_365d"]) == (2, 3.5)
    assert plain["complaints_365d"] == 1 and plain["order_history_views_30d"] == 1
    assert plain["complaint_rate_365d"] == pytest.approx(1 / 3)
    assert plain["frequency_total"] == 3  # the order on as_of is not counted


def test_risk_tags_carry_a_reason_and_never_touch_tiers_or_model_inputs(
        built: pd.DataFrame, tmp_path: Path) -> None:
    assert "card_switching" in built.loc["u_card", "tags"]
    assert list(built.loc["u_card", "risk_reasons"]) == [
        CARDS_REASON, "ip_jumping: came from 3 countries in 24 hours, 3 countries and 3 IP "
        "prefixes in 30 days"]
    assert "perk_abuser" in built.loc["u_ring2", "tags"]
    assert list(built.loc["u_plain", "risk_reasons"]) == []
    # The same data without any risk signal: same tiers, segments and model inputs.
    clean = tmp_path / "clean"
    clean.mkdir()
    _orders().drop(columns=["payment_fingerprint", "new_user_perk"]).to_parquet(
        clean / "orders.parquet")
    _events().drop(columns=["ip_prefix", "country"]).to_parquet(clean / "events.parquet")
    settings = load_settings(None, environ=path_overrides(tmp_path))
    plain = build_features(settings, AS_OF, raw_dir=clean, refresh_store=False,
                           progress=False).set_index("user_id")
    assert plain["risk_reasons"].map(len).sum() == 0
    columns = ["tier", "segment", "lifecycle_stage", *feature_columns()]
    pd.testing.assert_frame_equal(plain[columns], built[columns])


def test_a_card_switcher_waits_in_the_review_queue_until_cleared(
        home: tuple[Settings, pd.DataFrame], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = home[0]
    for key, value in path_overrides(Path(settings.paths.data_dir).parent).items():
        monkeypatch.setenv(key, value)
    assert cli_main(["review", "list"]) == 0
    listed = capsys.readouterr().out
    assert "u_card  pending" in listed and CARDS_REASON in listed
    assert "u_ring1  pending" in listed and "u_plain" not in listed
    with open_store(settings) as store:
        assert store.get("u_card")["under_review"] is True
    assert cli_main(["review", "clear", "u_card", "--note", "new bank cards", "--by",
                     "ana"]) == 0
    assert "u_card: review cleared by ana (automated incentives restored)" in \
        capsys.readouterr().out
    with open_store(settings) as store:
        assert store.get("u_card")["under_review"] is False
    assert cli_main(["review", "list", "--status", "cleared", "--json"]) == 0
    [cleared] = json.loads(capsys.readouterr().out)
    assert (cleared["user_id"], cleared["decided_by"], cleared["note"]) == \
        ("u_card", "ana", "new bank cards")
    assert cli_main(["review", "confirm", "u_nobody", "--note", "x", "--by", "ana"]) == \
        NotFound("").exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'u_nobody' is not in the review queue" in err


def test_lifecycle_stage_rules() -> None:
    frame = pd.DataFrame({
        "recency_days": [200.0, None, 10.0, 100.0, 20.0, 15.0, 5.0],
        "frequency_total": [5, 0, 1, 4, 6, 8, 9],
        "first_purchase_days": [400.0, None, 30.0, 300.0, 200.0, 600.0, 600.0],
        "frequency_90d": [0, 0, 1, 0, 1, 3, 3],
        "frequency_prev_90d": [1, 0, 0, 2, 4, 2, 2],
    })
    stages = assign_lifecycle(frame, FeaturesConfig().lifecycle)
    assert list(stages) == ["churned", "new", "new", "decline", "decline", "mature", "mature"]
    churn = pd.Series([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9])
    assert assign_lifecycle(frame, FeaturesConfig().lifecycle, churn).iloc[-1] == "decline"


@pytest.fixture(scope="module")
def marketplace(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                   pd.DataFrame]:
    root = tmp_path_factory.mktemp("groups")
    synthesize(2500, 730, 7, root / "raw", root / "latent")
    settings = load_settings(None, environ=path_overrides(root))
    frame = build_features(settings, date(2025, 12, 1), raw_dir=root / "raw",
                           out_dir=root / "features", refresh_store=False, progress=False)
    trait, evidence = group_truth(root / "raw", root / "latent", date(2025, 12, 1))
    return frame.set_index("user_id"), trait, evidence


@pytest.mark.parametrize("group", ["impulse_buyer", "comparison_shopper", "card_switching",
                                   "perk_abuser", "critic", "silent_majority"])
def test_synthetic_groups_carry_their_tags(
        marketplace: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], group: str) -> None:
    frame, trait, evidence = marketplace
    tagged = frame["tags"].map(lambda tags: group in tags).reindex(trait.index)
    truth = trait[group] & evidence[group]
    assert truth.sum() >= 5, f"too few {group} users to judge"
    assert (tagged & truth).sum() / truth.sum() >= 0.8
    assert (tagged & trait[group]).sum() / tagged.sum() >= 0.8
