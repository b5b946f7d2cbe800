"""``POST /score`` with ``subject: seller`` over real HTTP: seller tier, seller tags and the
seller churn champion's probability, on the served world."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from features.build import available_as_of, load_features
from features.segmentation import SELLER_TIERS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def features(world) -> pd.DataFrame:
    """The world's latest features (what its online store holds)."""
    return load_features(world.settings, available_as_of(world.settings)[-1]).set_index(
        "user_id")


def test_a_seller_gets_seller_tier_tags_and_churn(client: httpx.Client,
                                                  features: pd.DataFrame) -> None:
    vip = features.index[features["seller_tier"] == "vip"][0]
    body = client.post("/score", json={"user_id": vip, "subject": "seller"}).json()
    assert body["subject"] == "seller" and body["known"] and body["is_seller"]
    assert body["seller_tier"] == "vip"
    assert body["seller_tags"] == list(features.loc[vip, "seller_tags"])
    assert 0.0 <= body["seller_churn_probability"] <= 1.0
    assert set(body["model_versions"]) == {"seller_churn"}
    assert "tier" not in body and "churn_probability" not in body


def test_seller_batches_keep_order_and_only_sellers_get_a_probability(
        client: httpx.Client, features: pd.DataFrame) -> None:
    sleeping = features.index[features["seller_tier"] == "sleeping"][0]
    buyer = features.index[features["seller_tier"].isna() & ~features["is_seller"]][0]
    response = client.post("/score", json={"user_ids": [buyer, "nobody-at-all", sleeping],
                                           "subject": "seller"})
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["user_id"] for a in answers] == [buyer, "nobody-at-all", sleeping]
    assert answers[0]["known"] and not answers[0]["is_seller"]
    assert answers[0]["seller_tier"] is None and answers[0]["seller_churn_probability"] is None
    assert not answers[1]["known"] and answers[1]["seller_tier"] is None
    assert answers[2]["seller_tier"] == "sleeping" and answers[2]["seller_tier"] in SELLER_TIERS
    assert 0.0 <= answers[2]["seller_churn_probability"] <= 1.0


def test_the_default_subject_is_buyer_and_a_bad_one_is_named(client: httpx.Client,
                                                             features: pd.DataFrame) -> None:
    user = features.index[0]
    assert "tier" in client.post("/score", json={"user_id": user}).json()
    response = client.post("/score", json={"user_id": user, "subject": "consignor"})
    assert response.status_code == 422
    assert "subject" in response.text
