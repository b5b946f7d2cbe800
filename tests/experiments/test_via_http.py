"""``nextbest simulate --via-http``: the simulation through a real service agrees with the
in-process run, and every decision it made is in the service's decision log."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml
from api_key import TEST_KEY
from scipy import stats

from experiments.http_driver import MAX_DECISIONS, paired_interval
from nextbest.cli import main
from nextbest.config import load_settings, path_overrides

DECISIONS = 600
USERS = 200
SERVING_CONFTEST = Path(__file__).resolve().parents[1] / "serving" / "conftest.py"


def serving_helpers() -> ModuleType:
    """The serving tests' server helpers (``tests/serving/conftest.py``), imported by path:
    ``conftest`` is not an importable name once several test directories have one."""
    name = "serving_conftest_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SERVING_CONFTEST)
        assert spec is not None and spec.loader is not None, SERVING_CONFTEST
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while defining
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, object]]:
    """A world with no users and no models (the command writes its simulated users), the
    serving tests' config (no contact caps), and one real service with a fresh decision log."""
    helpers = serving_helpers()
    root = tmp_path_factory.mktemp("via_http_world")
    (root / "nextbest.yaml").write_text(yaml.safe_dump(helpers.test_config()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST")}
    env |= helpers.world_env(root) | {"BENTOML_DO_NOT_TRACK": "true",
                                      "BENTOML_HOME": str(root / "bentoml")}
    world = helpers.World(root=root, env=env, settings=load_settings(None, environ=env))
    # Empty until the command publishes its users: the service must be allowed to start so.
    world.env |= helpers.own_bandit_env(world, "viahttp") | {
        "NEXTBEST__SERVING__ALLOW_EMPTY": "true"}
    server = helpers.start_server(world, name="viahttp")
    try:
        yield world, server
    finally:
        server.stop()


@pytest.mark.integration
def test_via_http_agrees_with_in_process_and_logs_every_decision(
        served: tuple, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    world, server = served
    for key, value in world.env.items():
        if key.startswith("NEXTBEST"):
            monkeypatch.setenv(key, value)
    code = main(["simulate", "--via-http", server.url, "--decisions", str(DECISIONS),
                 "--users", str(USERS), "--seed", "3", "--json", "--api-key", TEST_KEY,
                 "--out", str(world.root / "reports")])
    out = capsys.readouterr()
    assert code == 0, f"{out.err}\n{server.log_tail()}"
    result = json.loads(out.out)
    assert set(result) >= {"in_process", "http", "agreement"}
    assert result["http_errors"] == 0
    assert result["http"]["decisions"] == result["in_process"]["decisions"] == DECISIONS
    # Every decision got its feedback at once, in time to be learned.
    assert result["feedback_status"] == {"accepted": DECISIONS}

    log_path = Path(world.env["NEXTBEST__PATHS__DECISION_LOG"])
    with sqlite3.connect(log_path) as db:
        logged = db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        rewarded = db.execute("SELECT COUNT(DISTINCT event_id) FROM rewards").fetchone()[0]
    assert logged == DECISIONS
    assert rewarded == DECISIONS

    agreement = result["agreement"]
    low, high = agreement["reward_diff_ci95"]
    assert low <= 0.0 <= high, agreement
    assert agreement["rewards_agree"] is True
    assert agreement["arm_shares_agree"] is True, agreement
    assert 0.0 <= agreement["identical_actions"] <= 1.0
    shares = result["http"]["arm_share"]
    assert abs(sum(shares.values()) - 1.0) < 1e-9


def test_the_replay_is_compared_pairwise_not_as_two_samples() -> None:
    # Both modes replay one stream: the luck of each request is shared, so the paired
    # interval sees a small, steady difference that two independent samples would hide.
    rng = np.random.default_rng(0)
    luck = rng.normal(0.0, 5.0, 400)
    a, b = luck + 0.1 + rng.normal(0.0, 0.05, 400), luck
    low, high = paired_interval(a, b)
    expected = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert low == pytest.approx(expected.low) and high == pytest.approx(expected.high)
    assert 0.0 < low < 0.1 < high
    unpaired = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert unpaired.low < 0.0 < unpaired.high
    assert paired_interval(b, b) == (0.0, 0.0)


def test_via_http_refuses_unbounded_runs_and_unreachable_services(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    for key, value in path_overrides(tmp_path).items():
        monkeypatch.setenv(key, value)
    url = f"http://127.0.0.1:{serving_helpers().free_port()}"
    assert main(["simulate", "--via-http", url, "--decisions", str(MAX_DECISIONS + 1)]) == 2
    assert "at most 20000" in capsys.readouterr().err
    assert main(["simulate", "--via-http", url, "--policies", "epsilon,squarecb"]) == 2
    assert "one bandit policy" in capsys.readouterr().err
    code = main(["simulate", "--via-http", url, "--decisions", "5", "--users", "20",
                 "--timeout", "2"])
    assert code == 4
    assert "POST /score failed" in capsys.readouterr().err
