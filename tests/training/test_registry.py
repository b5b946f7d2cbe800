"""The champion gate's decision rule (the registry side is exercised in test_pipeline.py)."""

from __future__ import annotations

from training.registry import aliases_by_version, decide


def test_first_version_becomes_champion() -> None:
    d = decide("1", 0.70, None, None, force=False)
    assert d.promoted and not d.forced


def test_better_challenger_is_promoted() -> None:
    assert decide("2", 0.80, "1", 0.79, force=False).promoted


def test_a_tie_keeps_the_champion() -> None:
    d = decide("2", 0.80, "1", 0.80, force=False)
    assert not d.promoted
    assert "not better" in d.reason


def test_worse_challenger_leaves_the_champion_and_says_both_numbers() -> None:
    d = decide("2", 0.75, "1", 0.80, force=False)
    assert not d.promoted
    assert "0.7500" in d.reason and "0.8000" in d.reason
    assert d.message().startswith("champion stays")


def test_force_promotes_a_worse_challenger_and_records_it() -> None:
    d = decide("2", 0.75, "1", 0.80, force=True)
    assert d.promoted and d.forced
    assert "--force" in d.reason


def test_aliases_are_grouped_by_version() -> None:
    assert aliases_by_version({"champion": 1, "challenger": "2", "x": 1}) == {
        "1": ["champion", "x"], "2": ["challenger"]}
