"""evaluate-policy on simulated service logs, against the truth only a simulation knows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.evaluate import LOW_PROBABILITY, OpeReport, evaluable, evaluate
from experiments.logs import METADATA, context_columns, read_log, shared_tokens
from experiments.policies import candidate_action_dist
from experiments.runner import START, SimulationResult, simulate
from experiments.simulator import SimulationConfig, synthetic_population
from nextbest.cli import main
from nextbest.config import Settings

CONFIG = SimulationConfig(decisions=3000, seed=7)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SimulationResult, Path]:
    """3,000 decisions of the random and squarecb policies, their logs kept."""
    from nextbest.config import load_settings, path_overrides

    root = tmp_path_factory.mktemp("ope")
    settings = load_settings(None, environ=path_overrides(root))
    population = synthetic_population(settings, 1000, CONFIG.seed)
    result = simulate(settings, population, CONFIG, ["random", "squarecb"],
                      log_dir=root / "logs")
    return settings, result, root / "logs"


def _truth(report_log, result: SimulationResult, settings: Settings, policy: str) -> float:
    """The candidate's true expected reward per decision on the logged shown decisions:
    its pmf on each, times the stream's true expected reward of each arm."""
    shown = evaluable(report_log)
    minutes = (shown["ts"].to_numpy(float) - START.timestamp()) / 60
    step = np.rint(minutes * CONFIG.decisions_per_minute).astype(int)
    dist = candidate_action_dist(policy, shown, settings)
    return float((dist * result.stream.expected_reward[step]).sum(axis=1).mean())


def _evaluate(settings: Settings, log_path: Path, policy: str) -> tuple[OpeReport, object]:
    log = read_log(log_path, settings)
    return evaluate(log, settings, policy, n_bootstrap=100, seed=0), log


def test_reward_model_sees_the_request_and_the_user_not_the_log(simulated):
    settings, _result, logs = simulated
    log = read_log(logs / "squarecb.sqlite", settings)
    columns = context_columns(log)
    assert {"seq", "source", "learnable", "ts", "policy", "probability"} <= set(log.columns)
    assert not set(columns) & set(METADATA)
    tokens = set(shared_tokens(log["features"].iloc[0]))
    assert {"page", "category", "item_price", "tier", "segment", "tags", "hour"} <= set(columns)
    assert set(columns) <= tokens | {"page", "item_price", "category", "hour", "channel",
                                     "tier", "segment", "tags"}


def test_a_well_supported_candidate_is_estimated_without_warnings(simulated):
    settings, result, logs = simulated
    report, log = _evaluate(settings, logs / "random.sqlite", "static")
    truth = _truth(log, result, settings, "static")
    assert report.warnings == []
    assert report.low_support_share == 0.0  # the random logger plays every arm at p >= 1/3
    assert report.effective_sample_size > report.n / 4
    dr = report.estimates["dr"]
    assert dr.low < truth < dr.high


def test_random_on_a_squarecb_log_warns_or_holds_the_truth(simulated, capsys):
    """squarecb learns to play some arms rarely, so random's value on its log rests on a
    few decisions with huge weights: either the DR interval holds the truth or the report
    says the log does not support the candidate (here it does say so, on stderr too)."""
    settings, result, logs = simulated
    assert main(["evaluate-policy", "--logs", str(logs / "squarecb.sqlite"), "--policy",
                 "random", "--n-bootstrap", "100", "--json"]) == 0
    captured = capsys.readouterr()
    report = OpeReport.model_validate(json.loads(captured.out))
    log = read_log(logs / "squarecb.sqlite", settings)
    truth = _truth(log, result, settings, "random")
    dr = report.estimates["dr"]
    low_support = [w for w in report.warnings if f"below {LOW_PROBABILITY:g}" in w]
    assert dr.low < truth < dr.high or low_support
    warned = [line.removeprefix("warning: ") for line in captured.err.splitlines()
              if line.startswith("warning: ")]
    assert warned == report.warnings and low_support
    # The support diagnostic is the candidate's probability where the logged pmf is low.
    shown = evaluable(log)
    pmf = np.array([[json.loads(p).get(a, 0.0) for a in result.arms] for p in shown["pmf"]])
    random = candidate_action_dist("random", shown, settings)  # uniform over eligible arms
    assert report.low_support_from == "logged pmf"
    assert report.low_support_share == pytest.approx(
        (random * (pmf < LOW_PROBABILITY)).sum(axis=1).mean())
    assert report.low_support_share > 0.05


def test_a_log_of_a_handful_of_decisions_is_refused_in_one_line(simulated, tmp_path, capsys):
    """A few decisions are too few for a reward model: one line, not a LightGBM traceback."""
    settings, _result, logs = simulated
    import sqlite3

    small = tmp_path / "small.sqlite"
    with sqlite3.connect(logs / "squarecb.sqlite") as source, sqlite3.connect(small) as target:
        source.backup(target)
        target.execute("delete from decisions where rowid > 5")
    assert main(["evaluate-policy", "--logs", str(small)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: too few decisions for a reward model")


def test_a_candidate_never_lends_to_a_student_of_a_foreign_log(tmp_path):
    """Another system's log does not say which arms were eligible: the candidate gets the
    policy layer's, so a student's row gives the installment no probability."""
    import pandas as pd

    from experiments.logs import normalise

    frame = pd.DataFrame({"user_id": ["a", "b", "c"], "action": ["installment"] * 3,
                          "probability": 1 / 3, "reward": 0.0, "item_price": 900.0,
                          "is_student": [True, False, None], "aov": [None, 100.0, None]})
    log = normalise(frame, Settings())
    dist = candidate_action_dist("random", log, Settings())
    installment = [arm.name for arm in Settings().bandit.arms].index("installment")
    assert dist[0, installment] == 0 and dist[0].sum() == pytest.approx(1.0)  # a student
    assert dist[1, installment] == 0  # 900 is more than three times the aov of 100
    assert dist[2, installment] == pytest.approx(1 / 3)  # nothing known: not vulnerable
