"""evaluate-policy and abtest on the service's own log and on a foreign CSV; the HTML report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextbest.cli import main


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose reports and data paths are private to the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXTBEST__PATHS__REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("NEXTBEST__PATHS__FEATURES_DIR", str(tmp_path / "features"))
    monkeypatch.setenv("NEXTBEST__MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/m.db")
    return tmp_path


def _foreign_log(path: Path, probability: float | None = None) -> Path:
    """A log from another system: context columns, action, probability, reward."""
    rng = np.random.default_rng(0)
    n = 1500
    action = rng.choice(["coupon", "installment", "certification"], n)
    price = rng.uniform(20, 800, n)
    reward = np.where(rng.random(n) < np.where(action == "coupon", 0.2, 0.1), price * 0.9, 0.0)
    frame = pd.DataFrame({"action": action, "probability": 1 / 3 if probability is None
                          else probability, "reward": reward, "item_price": price,
                          "page": rng.choice(["home", "item"], n),
                          "tier": rng.choice(["gold", "silver"], n)})
    frame.to_csv(path, index=False)
    return path


def test_evaluate_policy_on_a_foreign_csv(workdir, capsys):
    log = _foreign_log(workdir / "log.csv")
    assert main(["evaluate-policy", "--logs", str(log), "--policy", "random", "--json",
                 "--n-bootstrap", "30"]) == 0
    payload = json.loads(capsys.readouterr().out)
    # Uniform logging, uniform candidate: every estimator equals the observed mean.
    observed = payload["logging_value"]["mean"]
    for name in ("ips", "snips", "dr"):
        est = payload["estimates"][name]
        assert est["low"] <= est["mean"] <= est["high"]
    assert payload["estimates"]["ips"]["mean"] == pytest.approx(observed)
    assert payload["estimates"]["snips"]["mean"] == pytest.approx(observed)
    # DR's cross-fitted reward model adds noise but no bias: its interval holds the mean.
    assert payload["estimates"]["dr"]["low"] < observed < payload["estimates"]["dr"]["high"]


def test_zero_probability_log_is_refused(workdir, capsys):
    log = _foreign_log(workdir / "log.csv", probability=0.0)
    assert main(["evaluate-policy", "--logs", str(log)]) == 2
    err = capsys.readouterr().err
    assert "probability" in err and "zero" in err


def test_service_log_evaluation_abtest_and_report(workdir, capsys):
    assert main(["simulate", "--decisions", "1500", "--users", "300", "--quiet", "--no-mlflow",
                 "--policies", "random,static,squarecb", "--keep-logs", "logs"]) == 0
    capsys.readouterr()
    service_log = workdir / "logs" / "squarecb.sqlite"
    assert main(["evaluate-policy", "--logs", str(service_log), "--policy", "static", "--json",
                 "--n-bootstrap", "30"]) == 0
    ope = json.loads(capsys.readouterr().out)
    assert ope["n"] > 1000 and set(ope["estimates"]) == {"ips", "snips", "dr"}
    checkpoint = _checkpoint_learned_from(service_log, workdir / "bandit")
    assert main(["evaluate-policy", "--logs", str(service_log), "--policy", str(checkpoint),
                 "--json", "--n-bootstrap", "30"]) == 0
    learned = json.loads(capsys.readouterr().out)
    assert learned["n"] == ope["n"] and set(learned["estimates"]) == {"ips", "snips", "dr"}
    assert learned["estimates"]["dr"]["mean"] != ope["estimates"]["dr"]["mean"]
    assert main(["abtest", "--logs", str(service_log), "--json"]) == 0
    ab = json.loads(capsys.readouterr().out)
    assert ab["n_control"] > 0 and ab["overall"][0]["tier"] == "all"
    assert main(["report"]) == 0
    page = (workdir / "reports" / "report.html").read_text()
    # Every simulation chart, the OPE and the A/B chart (tests/experiments/test_report_html.py
    # renders the page and checks their labels).
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    charts = list((workdir / "reports" / "simulation").glob("*.png"))
    assert len(images) == len(charts) + 2
    assert "No features yet" in page  # a missing input is said, not crashed on


def _checkpoint_learned_from(log_path: Path, bandit_dir: Path) -> Path:
    """The default (conversion) bandit learned from a decision log and checkpointed, as
    the service's learner does: ``model-<seq>.vw`` beside its meta ``model-<seq>.json``."""
    from decisions.decision_log import DecisionLog
    from decisions.learner import CheckpointStore, Learner
    from nextbest.config import Settings

    log = DecisionLog(log_path)
    store = CheckpointStore(bandit_dir)
    learner = Learner(Settings(), log, store=store)
    try:
        assert learner.catch_up() > 1000
        meta = learner.checkpoint()
    finally:
        learner.chooser.close()
        log.close()
    assert meta is not None and meta.rewards_learned > 0
    return store.model_path(meta)
