"""The seller side: seller R, F, M features by hand, prospective sellers, and latent seller
traits of the synthetic marketplace that end in the tier they should."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from test_build import AS_OF, EVENT_TYPES, _event, _frame, _row, write_raw

from features.build import build_features
from features.synth import SELLER_TRAITS_FILE, synthesize
from nextbest.config import Settings


def _add_events(raw: Path, rows: list[dict]) -> None:
    path = raw / "events.parquet"
    grown = pd.concat([pd.read_parquet(path), _frame(rows, EVENT_TYPES)], ignore_index=True)
    grown.to_parquet(path)


def _add_user(raw: Path, user: str, signup: str) -> None:
    path = raw / "users.parquet"
    users = pd.read_parquet(path)
    row = pd.DataFrame([{"user_id": user, "signup_ts": pd.Timestamp(signup), "region": "west",
                         "channel": "ads", "timezone": None}]).astype(users.dtypes.to_dict())
    pd.concat([users, row], ignore_index=True).to_parquet(path)


def test_seller_rfm_features_match_hand_computed_values(settings: Settings) -> None:
    raw = settings.paths.raw_dir
    write_raw(raw)
    frame = build_features(settings, AS_OF, refresh_store=False, progress=False)
    s1 = _row(frame, "s1")
    # Listed a, b on 2025-01-01 and c on 2025-02-01 (d is after as_of); a and b sold in
    # January, c sold after as_of so it is unsold here but not yet stale (28 days).
    assert s1["days_since_listing"] == pytest.approx(28.0)
    assert s1["seller_recency_days"] == pytest.approx(1.5)  # o1, a sale, is the latest
    assert (s1["listings_30d"], s1["listings_90d"], s1["listings_365d"]) == (1, 3, 3)
    assert s1["stale_listings"] == 0
    # s1 sold o1-o3 (completed; o4 returned, o5 cancelled, o6 on as_of): 180 of value.
    assert (s1["sales_7d"], s1["sales_30d"], s1["sales_90d"]) == (1, 1, 3)
    assert s1["sold_value_365d"] == pytest.approx(180.0)
    assert s1["commission_365d"] == pytest.approx(36.0)
    u1 = _row(frame, "u1")  # sold o7 as a consignor, never listed
    assert u1["sales_30d"] == 1 and pd.isna(u1["days_since_listing"])
    assert u1["seller_recency_days"] == pytest.approx(9.0)
    assert s1["seller_tier"] in {"vip", "potential"}


def test_a_user_who_only_started_a_listing_is_a_prospective_seller(settings: Settings) -> None:
    raw = settings.paths.raw_dir
    write_raw(raw)
    _add_user(raw, "p1", "2025-01-01")
    _add_events(raw, [_event("p1", "2025-02-20", "listing_started"),
                      # s1 started a listing and then listed c on 2025-02-01: finished.
                      _event("s1", "2025-01-31", "listing_started")])
    frame = build_features(settings, AS_OF, refresh_store=False, progress=False)
    p1, s1, u2 = _row(frame, "p1"), _row(frame, "s1"), _row(frame, "u2")
    assert (p1["listings_started_365d"], p1["unfinished_listings"]) == (1, 1)
    assert not p1["is_seller"] and p1["seller_tier"] == "prospective"
    assert "unfinished_listing" in list(p1["seller_tags"])
    assert (s1["listings_started_365d"], s1["unfinished_listings"]) == (1, 0)
    assert s1["seller_tier"] != "prospective"
    assert pd.isna(u2["seller_tier"]) and list(u2["seller_tags"]) == []


def test_synthetic_seller_traits_decide_the_seller_tier(settings: Settings,
                                                        tmp_path: Path) -> None:
    """The seller with the VIP traits (the largest volume, still consigning at the end, an
    early signup) is VIP; sellers who stopped long before as_of are sleeping."""
    summary = synthesize(1500, 730, 7, settings.paths.raw_dir, tmp_path / "latent",
                         date(2024, 1, 1))
    traits = pd.read_parquet(summary.latent_dir / SELLER_TRAITS_FILE)
    assert {"commission_sensitivity", "guidance_response", "churn_hazard", "volume",
            "seller_churn_ts"} <= set(traits.columns)
    users = pd.read_parquet(summary.raw_dir / "users.parquet").set_index("user_id")
    sellers = traits[traits["is_seller"]].join(users["signup_ts"], on="user_id")
    as_of = date(2025, 12, 31)
    staying = sellers[sellers["seller_churn_ts"].isna()
                      & (sellers["signup_ts"] < pd.Timestamp("2024-07-01"))]
    vip_traits = staying.sort_values("volume").iloc[-1]["user_id"]
    gone = sellers[sellers["seller_churn_ts"] < pd.Timestamp("2025-06-01")]["user_id"]
    frame = build_features(settings, as_of, refresh_store=False, progress=False)
    tiers = frame.set_index("user_id")["seller_tier"]
    assert tiers[vip_traits] == "vip"
    assert len(gone) >= 10 and (tiers.reindex(gone) == "sleeping").all()
    # Prospects of the synthetic data started a listing and never finished it.
    prospects = traits[traits["prospect"]]["user_id"]
    started = frame.set_index("user_id").reindex(prospects)["unfinished_listings"]
    assert (started.dropna() >= 1).mean() > 0.5
