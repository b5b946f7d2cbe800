"""The segments report on small hand-made feature frames."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from features.report import (
    NOT_PRESENT,
    LtvScorer,
    SegmentsReport,
    build_report,
    render_text,
    write_report,
)
from features.segmentation import TIERS
from nextbest.cli import main
from nextbest.config import Settings
from nextbest.errors import DataError, NotFound

JAN, FEB = date(2024, 1, 1), date(2024, 2, 1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (user_id, tier, segment, monetary_30d, monetary_365d, recency_days)
JAN_USERS = [
    ("a", "platinum", "champions", 100.0, 2000.0, 5.0),
    ("b", "gold", "loyal", 50.0, 800.0, 20.0),
    ("c", "gold", "loyal", 10.0, 400.0, 45.0),
    ("d", "silver", "promising", 0.0, 100.0, 80.0),
    ("e", "dormant", "at_risk", 0.0, 60.0, 120.0),
    ("f", "new", "no_purchase", 0.0, 0.0, None),
]
FEB_USERS = [
    ("a", "platinum", "champions", 80.0, 2100.0, 30.0),
    ("b", "dormant", "at_risk", 0.0, 800.0, 100.0),
    ("c", "gold", "loyal", 20.0, 420.0, 10.0),
    ("d", "dormant", "about_to_sleep", 0.0, 100.0, 110.0),
    ("e", "churned", "hibernating", 0.0, 0.0, 200.0),
    ("f", "silver", "new_customers", 30.0, 30.0, 12.0),
    ("g", "silver", "new_customers", 40.0, 40.0, 3.0),
]


def write_features(settings: Settings, as_of: date,
                   users: list[tuple[str, str, str, float, float, float | None]]) -> None:
    """Write a features.parquet with the columns the report reads, as the build would."""
    frame = pd.DataFrame(users, columns=["user_id", "tier", "segment", "monetary_30d",
                                         "monetary_365d", "recency_days"])
    frame["as_of"] = pd.Timestamp(as_of)
    folder = Path(settings.paths.features_dir) / f"as_of={as_of.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "features.parquet")


def with_alerts(settings: Settings, **values: float) -> Settings:
    """``settings`` with some alert thresholds changed."""
    alerts = settings.features.alerts.model_copy(update=values)
    features = settings.features.model_copy(update={"alerts": alerts})
    return settings.model_copy(update={"features": features})


@pytest.fixture
def two_dates(settings: Settings) -> Settings:
    write_features(settings, JAN, JAN_USERS)
    write_features(settings, FEB, FEB_USERS)
    return settings


def kinds(report: SegmentsReport) -> list[tuple[str, str | None]]:
    return [(a.kind, a.tier) for a in report.alerts]


def test_tier_sizes_shares_and_arpu(two_dates: Settings) -> None:
    report = build_report(two_dates, JAN)
    assert [t.tier for t in report.tiers] == list(TIERS)
    assert sum(t.share for t in report.tiers) == pytest.approx(1.0)
    tiers = {t.tier: t for t in report.tiers}
    assert tiers["gold"].users == 2
    assert tiers["gold"].share == pytest.approx(2 / 6)
    assert tiers["gold"].arpu_365d == pytest.approx(600.0)
    assert tiers["gold"].arpu_30d == pytest.approx(30.0)
    assert tiers["churned"].users == 0 and tiers["churned"].arpu_365d == 0.0
    assert {s.segment: s.users for s in report.segments}["loyal"] == 2
    assert sum(s.share for s in report.segments) == pytest.approx(1.0)
    assert report.migration is None


def test_default_as_of_is_the_latest(two_dates: Settings) -> None:
    assert build_report(two_dates).as_of == FEB


def test_missing_as_of_names_the_available_dates(two_dates: Settings, settings: Settings) -> None:
    with pytest.raises(NotFound, match=r"2023-05-01.*2024-01-01, 2024-02-01"):
        build_report(two_dates, date(2023, 5, 1))


def test_missing_column_is_a_data_error(settings: Settings) -> None:
    write_features(settings, JAN, JAN_USERS)
    path = Path(settings.paths.features_dir) / "as_of=2024-01-01" / "features.parquet"
    pd.read_parquet(path).drop(columns="monetary_30d").to_parquet(path)
    with pytest.raises(DataError, match="monetary_30d"):
        build_report(settings, JAN)


def test_migration_counts_every_user_once(two_dates: Settings) -> None:
    # The later date is the report's as_of or the comparison date: the matrix is the same.
    for as_of, compare_to in [(FEB, JAN), (JAN, FEB)]:
        m = build_report(two_dates, as_of, compare_to).migration
        assert m is not None
        assert (m.from_as_of, m.to_as_of) == (JAN, FEB)
        assert sum(map(sum, m.counts)) == 7
        cell = {(r, c): m.counts[i][j] for i, r in enumerate(m.tiers_from)
                for j, c in enumerate(m.tiers_to)}
        assert cell[("gold", "dormant")] == 1 and cell[("gold", "gold")] == 1
        assert cell[(NOT_PRESENT, "silver")] == 1
        assert cell[("new", "silver")] == 1
        assert sum(cell[(r, NOT_PRESENT)] for r in m.tiers_from) == 0
        for row in m.row_shares:
            assert sum(row) == pytest.approx(1.0) or sum(row) == 0.0


def test_platinum_recency_alert(two_dates: Settings) -> None:
    # a is platinum with recency 5 in January (no alert) and 30 in February (> 21 days).
    assert ("platinum_churn_risk", "platinum") not in kinds(build_report(two_dates, JAN))
    report = build_report(two_dates, FEB)
    assert report.churn_risk_source == "recency"
    alert = next(a for a in report.alerts if a.kind == "platinum_churn_risk")
    assert alert.user_ids == ["a"]
    relaxed = with_alerts(two_dates, platinum_recency_risk_days=30)
    assert ("platinum_churn_risk", "platinum") not in kinds(build_report(relaxed, FEB))


def test_platinum_alert_uses_the_churn_model_when_given(two_dates: Settings) -> None:
    def risky(frame: pd.DataFrame) -> pd.Series:
        return pd.Series(0.9, index=frame.index)

    def safe(frame: pd.DataFrame) -> pd.Series:
        return pd.Series(0.1, index=frame.index)

    report = build_report(two_dates, JAN, scorer=risky)
    assert report.churn_risk_source == "churn_model"
    assert ("platinum_churn_risk", "platinum") in kinds(report)
    # February's recency rule would fire; the model says the user is safe.
    report = build_report(two_dates, FEB, scorer=safe)
    assert ("platinum_churn_risk", "platinum") not in kinds(report)


def test_a_model_that_cannot_score_falls_back_to_recency(two_dates: Settings) -> None:
    def broken(frame: pd.DataFrame) -> pd.Series:
        raise KeyError("tenure_days")

    report = build_report(two_dates, FEB, scorer=broken)
    assert report.churn_risk_source == "recency"
    assert ("platinum_churn_risk", "platinum") in kinds(report)


def test_dormant_share_alert(two_dates: Settings) -> None:
    # February: 2 of 7 dormant (28.6%); January: 1 of 6 (16.7%).
    assert ("dormant_share", "dormant") not in kinds(build_report(two_dates, FEB))
    strict = with_alerts(two_dates, dormant_share_max=0.25)
    assert ("dormant_share", "dormant") in kinds(build_report(strict, FEB))
    assert ("dormant_share", "dormant") not in kinds(build_report(strict, JAN))


def test_tier_share_shift_alert(two_dates: Settings) -> None:
    report = build_report(with_alerts(two_dates, tier_share_shift_max=0.18), FEB, JAN)
    # gold 2/6 -> 1/7 (-19%), new 1/6 -> 0 (-17%), silver and dormant 1/6 -> 2/7 (+12%).
    shifted = {a.tier: a.value for a in report.alerts if a.kind == "tier_share_shift"}
    assert set(shifted) == {"gold"}
    assert shifted["gold"] == pytest.approx(1 / 7 - 2 / 6)
    assert ("tier_share_shift", "gold") not in kinds(build_report(two_dates, FEB))
    same = build_report(with_alerts(two_dates, tier_share_shift_max=0.0), FEB, FEB)
    assert [a for a in same.alerts if a.kind == "tier_share_shift"] == []


def test_report_files_and_text(two_dates: Settings, tmp_path: Path) -> None:
    report = build_report(two_dates, FEB, JAN)
    json_path, png_path = write_report(report, tmp_path / "out")
    assert SegmentsReport.model_validate_json(json_path.read_text()) == report
    assert png_path.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(png_path).shape
    assert width > height > 100
    text = render_text(report)
    assert "Tier migration 2024-01-01 (rows) -> 2024-02-01 (columns)" in text
    assert "platinum user(s) at high churn risk" in text


@pytest.fixture
def cli_env(two_dates: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the CLI in ``tmp_path`` with the test's features and an empty MLflow home."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXTBEST__PATHS__FEATURES_DIR", str(two_dates.paths.features_dir))
    monkeypatch.setenv("NEXTBEST__PATHS__REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("NEXTBEST__MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return tmp_path


def test_cli_missing_as_of_exit_code(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments", "report", "--as-of", "2023-05-01"]) == NotFound.exit_code
    err = capsys.readouterr().err
    assert "2023-05-01" in err and "2024-01-01, 2024-02-01" in err
    empty = cli_env / "nothing"
    assert main(["segments", "report", "--features-dir", str(empty)]) == NotFound.exit_code
    assert "no features have been built" in capsys.readouterr().err


def test_cli_json_and_text(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments", "report", "--compare-to", "2024-01-01", "--json"]) == 0
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert body["as_of"] == "2024-02-01" and body["migration"]["to_as_of"] == "2024-02-01"
    out_dir = cli_env / "reports" / "segments_2024-02-01"
    assert f"wrote {out_dir / 'report.json'}" in captured.err
    assert (out_dir / "segments.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["segments", "report", "--as-of", "2024-01-01", "--out", "mine"]) == 0
    out = capsys.readouterr().out
    assert "Segments report, as_of 2024-01-01 (6 users)" in out
    assert "wrote mine/segments.png" in out
    assert (cli_env / "mine" / "report.json").is_file()


def test_lifecycle_stages_tags_and_ltv_against_acquisition_cost(settings: Settings) -> None:
    users = [("a", "platinum", "champions", 100.0, 2000.0, 5.0),
             ("b", "gold", "loyal", 50.0, 800.0, 20.0),
             ("c", "dormant", "at_risk", 0.0, 60.0, 120.0)]
    write_features(settings, JAN, users)
    path = Path(settings.paths.features_dir) / f"as_of={JAN.isoformat()}" / "features.parquet"
    frame = pd.read_parquet(path).assign(
        lifecycle_stage=["mature", "growth", "decline"], channel=["ads", "ads", "organic"],
        tags=[["high_value", "fan"], ["fan"], ["card_switching"]],
        frequency_total=[9, 4, 2], first_purchase_days=[500.0, 200.0, 400.0],
        frequency_90d=[3, 2, 0], frequency_prev_90d=[3, 1, 1])
    frame.to_parquet(path)
    raw = Path(settings.paths.raw_dir)
    raw.mkdir(parents=True)
    pd.DataFrame({"user_id": ["a", "b", "c"], "acquisition_cost": [30.0, 50.0, 0.0]}
                 ).to_parquet(raw / "users.parquet")

    plain = build_report(settings, JAN)
    assert plain.lifecycle_source == "rules" and plain.channels == []
    assert [(s.stage, s.users) for s in plain.lifecycle] == [
        ("new", 0), ("growth", 1), ("mature", 1), ("decline", 1), ("churned", 0)]
    assert [(t.tag, t.users) for t in plain.tags] == [("fan", 2), ("card_switching", 1),
                                                      ("high_value", 1)]

    def churn(features: pd.DataFrame) -> pd.Series:
        return features["user_id"].map({"a": 0.9, "b": 0.1, "c": 0.1})

    def spend(features: pd.DataFrame) -> pd.Series:
        return features["user_id"].map({"a": 400.0, "b": 100.0, "c": 20.0})

    report = build_report(settings, JAN, scorer=churn,
                          ltv=LtvScorer(horizon_days=365, version="2", score=spend))
    # The churn model moves a (churn probability 0.9) from mature to decline.
    assert report.lifecycle_source == "rules_and_churn_model"
    assert {s.stage: s.users for s in report.lifecycle}["decline"] == 2
    ads, organic = report.channels
    assert (ads.channel, ads.users, ads.acquisition_cost, ads.ltv) == ("ads", 2, 40.0, 250.0)
    assert ads.ltv_to_cac == pytest.approx(250.0 / 40.0)
    assert organic.ltv_to_cac is None  # acquired for free: no ratio
    text = render_text(report)
    assert "LTV (365-day forecast spend, ltv v2) against acquisition cost" in text
    assert "6.25" in text and "Lifecycle stages (rules and churn model)" in text


def _with_sellers(settings: Settings, as_of: date,
                  sellers: dict[str, tuple[str | None, float, float]]) -> None:
    """Add seller_tier, sold_value_365d and commission_365d to the features of ``as_of``."""
    path = Path(settings.paths.features_dir) / f"as_of={as_of.isoformat()}" / "features.parquet"
    frame = pd.read_parquet(path)
    rows = [sellers.get(u, (None, 0.0, 0.0)) for u in frame["user_id"]]
    frame["seller_tier"] = pd.Series([r[0] for r in rows], dtype=object)
    frame["sold_value_365d"] = [r[1] for r in rows]
    frame["commission_365d"] = [r[2] for r in rows]
    frame.to_parquet(path)


def test_seller_tiers_gmv_migration_and_vip_sleeping_alert(two_dates: Settings) -> None:
    _with_sellers(two_dates, JAN, {"a": ("vip", 5000.0, 1000.0), "b": ("vip", 3000.0, 600.0),
                                   "c": ("potential", 500.0, 100.0),
                                   "f": ("prospective", 0.0, 0.0)})
    _with_sellers(two_dates, FEB, {"a": ("vip", 5500.0, 1100.0), "b": ("sleeping", 0.0, 0.0),
                                   "c": ("vip", 900.0, 180.0), "f": ("potential", 200.0, 40.0)})
    report = build_report(two_dates, FEB, JAN)
    by_tier = {t.seller_tier: t for t in report.sellers}
    assert list(by_tier) == ["vip", "potential", "sleeping", "prospective"]
    assert (by_tier["vip"].users, by_tier["vip"].gmv_365d) == (2, 6400.0)
    assert by_tier["vip"].commission_per_user == pytest.approx(640.0)
    assert by_tier["prospective"].users == 0 and by_tier["prospective"].share == 0.0
    m = report.seller_migration
    assert m is not None and m.tiers_from[:4] == ["vip", "potential", "sleeping", "prospective"]
    counts = {(a, b): n for a, row in zip(m.tiers_from, m.counts, strict=True)
              for b, n in zip(m.tiers_to, row, strict=True)}
    assert counts[("vip", "vip")] == 1 and counts[("vip", "sleeping")] == 1
    assert counts[("potential", "vip")] == 1 and counts[("prospective", "potential")] == 1
    assert sum(map(sum, m.counts)) == 7  # every user once; non-sellers as not present
    alert = next(a for a in report.alerts if a.kind == "vip_sellers_sleeping")
    assert alert.user_ids == ["b"] and alert.value == 1
    text = render_text(report)
    assert "seller tier" in text and "Seller tier migration" in text and "VIP seller" in text
