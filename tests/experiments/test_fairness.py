"""The fairness report: offer rate and value by tier, region and segment, the four-fifths rule."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.fairness import fairness
from experiments.logs import normalise
from nextbest.cli import main
from nextbest.config import Settings


def _log() -> pd.DataFrame:
    """Gold: 40 decisions, half with a coupon; silver: 40, a quarter with an installment and
    the rest certification (no offer); new: 10 decisions, all coupons (too few to compare);
    plus 20 control decisions (no action by design, left out)."""
    rows = []
    for i in range(40):
        rows.append({"user_id": f"g{i}", "tier": "gold", "item_price": 100.0,
                     "action": "coupon" if i % 2 == 0 else "certification"})
        rows.append({"user_id": f"s{i}", "tier": "silver", "item_price": 200.0,
                     "action": "installment" if i % 4 == 0 else "certification"})
    rows += [{"user_id": f"n{i}", "tier": "new", "item_price": None, "action": "coupon"}
             for i in range(10)]
    rows += [{"user_id": f"c{i}", "tier": "gold", "item_price": 50.0, "action": None,
              "control": True} for i in range(20)]
    frame = pd.DataFrame(rows)
    frame["control"] = frame["control"].fillna(False).astype(bool)
    frame["converted"] = False
    return normalise(frame, Settings())


def test_offer_rate_value_and_the_four_fifths_rule_per_tier() -> None:
    report = fairness(_log(), Settings())
    assert (report.n_decisions, report.n_control) == (110, 20)
    assert report.offer_arms == ["coupon", "installment"]  # certification has no value
    tier = report.attributes[0]
    assert tier.attribute == "tier"
    assert [g.group for g in tier.groups] == ["gold", "silver", "new"]  # natural order
    gold, silver, new = tier.groups
    assert (gold.decisions, gold.offers, gold.offer_rate) == (40, 20, 0.5)
    assert (silver.decisions, silver.offers, silver.offer_rate) == (40, 10, 0.25)
    assert gold.mean_offer_value == pytest.approx(5.0 + 0.10 * 100.0)  # coupon at 100
    assert silver.mean_offer_value == pytest.approx(0.03 * 200.0)      # installment at 200
    assert new.offer_rate == 1.0 and new.mean_offer_value is None  # no price to value it
    assert tier.compared == ["gold", "silver"]  # new has fewer than 30 decisions
    assert tier.ratio == pytest.approx(0.5) and tier.flagged
    assert (tier.lowest, tier.highest) == ("silver", "gold")
    assert any("silver get offers at 50%" in w for w in report.warnings)


def test_regions_are_joined_from_the_users_table_when_the_log_has_none() -> None:
    log = _log()
    users = pd.DataFrame({"user_id": [f"g{i}" for i in range(40)] + [f"s{i}" for i in range(40)],
                          "region": ["west"] * 40 + ["east"] * 40,
                          "tier": "platinum"})  # the log's own tier wins over the table's
    report = fairness(log, Settings(), users, users_source="test")
    tier, region, segment = report.attributes
    assert [g.group for g in tier.groups] == ["gold", "silver", "new"]
    assert {g.group: g.offer_rate for g in region.groups} == {"east": 0.25, "west": 0.5,
                                                              "unknown": 1.0}
    assert region.compared == ["east", "west"] and region.ratio == pytest.approx(0.5)
    assert [g.group for g in segment.groups] == ["unknown"] and segment.ratio is None
    even = log["user_id"].str[1:].astype(int) % 2 == 0  # half of each region
    equal = fairness(log.assign(action=even.map({True: "coupon", False: None})), Settings(),
                     users)
    assert equal.attributes[1].ratio == pytest.approx(1.0) and not equal.attributes[1].flagged


def test_audit_fairness_on_a_simulated_log_and_in_the_report(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--decisions", "3000", "--users", "800", "--quiet",
                 "--no-mlflow", "--no-plots", "--policies", "squarecb",
                 "--keep-logs", "logs"]) == 0
    capsys.readouterr()
    assert main(["audit", "fairness", "--logs", "logs/squarecb.sqlite", "--attributes",
                 "logs/users.parquet", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_decisions"] == 3000 and payload["log"]["path"].endswith("squarecb.sqlite")
    by = {a["attribute"]: a for a in payload["attributes"]}
    assert {g["group"] for g in by["region"]["groups"]} == {
        "northeast", "southeast", "midwest", "southwest", "west"}
    assert 0 < by["region"]["ratio"] <= 1
    for attribute in by.values():
        assert attribute["flagged"] == (attribute["ratio"] is not None
                                        and attribute["ratio"] < 0.8)
    assert (tmp_path / "reports" / "fairness" / "fairness.json").is_file()
    assert main(["report"]) == 0
    page = (tmp_path / "reports" / "report.html").read_text()
    section = page[page.index('<section id="fairness">'):]
    assert "By region" in section and "squarecb.sqlite" in section and "northeast" in section
    assert main(["audit", "fairness", "--logs", "nowhere.sqlite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere.sqlite" in err[0]
