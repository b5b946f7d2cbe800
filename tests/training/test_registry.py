"""The champion gate's decision rule (the registry side is exercised in test_pipeline.py)."""

from __future__ import annotations

from training.registry import aliases_by_version, decide, unbeaten_baselines

BASELINES = {"rfm": 0.60, "bgnbd": 0.65}


def test_first_version_becomes_champion() -> None:
    d = decide("1", 0.70, None, None, baselines=BASELINES, force=False)
    assert d.promoted and not d.forced


def test_better_challenger_is_promoted() -> None:
    assert decide("2", 0.80, "1", 0.79, baselines=BASELINES, force=False).promoted


def test_a_tie_keeps_the_champion() -> None:
    d = decide("2", 0.80, "1", 0.80, baselines=BASELINES, force=False)
    assert not d.promoted
    assert "not better" in d.reason


def test_worse_challenger_leaves_the_champion_and_says_both_numbers() -> None:
    d = decide("2", 0.75, "1", 0.80, baselines=BASELINES, force=False)
    assert not d.promoted
    assert "0.7500" in d.reason and "0.8000" in d.reason
    assert d.message().startswith("champion stays")


def test_force_promotes_a_worse_challenger_and_records_it() -> None:
    d = decide("2", 0.75, "1", 0.80, baselines=BASELINES, force=True)
    assert d.promoted and d.forced
    assert "--force" in d.reason


def test_a_first_version_below_a_baseline_is_not_promoted_and_says_which() -> None:
    d = decide("1", 0.68, None, None, baselines={"rfm": 0.62, "bgnbd": 0.70}, force=False)
    assert not d.promoted and not d.forced
    assert d.unbeaten_baselines == {"bgnbd": 0.70}
    assert "does not beat its baseline bgnbd 0.7000" in d.reason
    assert d.message().startswith("no champion; challenger is version 1")
    assert "not promoted" in d.warning() and "--force" in d.warning()


def test_a_challenger_better_than_the_champion_but_not_its_baselines_is_not_promoted() -> None:
    d = decide("3", 0.72, "2", 0.69, baselines={"rfm": 0.72, "bgnbd": 0.70}, force=False)
    assert not d.promoted
    assert d.unbeaten_baselines == {"rfm": 0.72}  # a tie with a baseline does not beat it
    assert "(below its baselines)" in d.reason


def test_force_promotes_below_the_baselines_and_still_warns() -> None:
    d = decide("1", 0.68, None, None, baselines={"bgnbd": 0.70}, force=True)
    assert d.promoted and d.forced
    assert "promoted anyway (--force)" in d.warning()


def test_a_challenger_above_its_baselines_has_no_warning() -> None:
    d = decide("1", 0.80, None, None, baselines=BASELINES, force=False)
    assert d.promoted and d.warning() is None
    assert unbeaten_baselines(0.80, BASELINES) == {}


def test_aliases_are_grouped_by_version() -> None:
    assert aliases_by_version({"champion": 1, "challenger": "2", "x": 1}) == {
        "1": ["champion", "x"], "2": ["challenger"]}
