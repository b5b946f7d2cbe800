"""Champion and challengers: promotion gated by a DR interval, shadow mode that never acts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from decisions.choosers import ChooserSpec, static_arm
from decisions.engine import DecisionEngine, RequestContext, UserView
from decisions.lifecycle import live_policy
from experiments.lifecycle import compare_shadow, promote
from experiments.logs import read_log
from nextbest.cli import main
from nextbest.config import Settings
from nextbest.errors import Conflict

CANDIDATES = {"rules": {"policy": "static"}, "coin": {"policy": "random"}}


def with_policies(settings: Settings, **policies) -> Settings:
    data = settings.model_dump()
    data["policies"].update(candidates=CANDIDATES, **policies)
    return Settings.model_validate(data)


def rule_log(settings: Settings, path: Path, n: int = 600, seed: int = 3) -> Path:
    """A uniformly random logging policy whose reward is 1 exactly when it showed the
    static rule book's arm: the rules gain about 2/3 per decision, a coin flip nothing."""
    rng = np.random.default_rng(seed)
    arms = [a.name for a in settings.bandit.arms]
    tiers = rng.choice(["gold", "silver", "bronze"], n)
    tags = rng.choice(["price_sensitive", ""], n)
    price = rng.choice([80.0, 800.0], n)
    action = rng.choice(arms, n)
    best = [static_arm(settings.bandit, t, [g] if g else [], p, arms)
            for t, g, p in zip(tiers, tags, price, strict=True)]
    pd.DataFrame({"event_id": [f"e{i}" for i in range(n)], "action": action,
                  "probability": 1 / len(arms), "tier": tiers, "tags": tags,
                  "item_price": price,
                  "reward": (action == np.array(best)).astype(float)}).to_parquet(path)
    return path


def promotions(settings: Settings) -> list[dict]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("policy_promotion")
    return [{"tags": r.data.tags, "metrics": r.data.metrics}
            for r in client.search_runs([experiment.experiment_id])]


def test_promotion_is_refused_when_the_interval_includes_a_loss_and_accepted_when_not(
        settings, tmp_path):
    settings = with_policies(settings)
    log = read_log(rule_log(settings, tmp_path / "log.parquet"), settings)
    with pytest.raises(Conflict, match="includes a loss|lose"):
        promote(log, settings, "coin")
    assert live_policy(settings) is None  # nothing changed
    report, _run, path = promote(log, settings, "rules")
    gain = report.candidates["rules"].gain
    assert 0 < gain.low <= gain.mean == pytest.approx(2 / 3, abs=0.1)
    assert path.is_file() and live_policy(settings)["policy"] == "static"
    runs = {r["tags"]["decision"]: r for r in promotions(settings)}
    assert set(runs) == {"refused", "promoted"}
    assert runs["refused"]["metrics"]["gain_low"] < 0 < runs["promoted"]["metrics"]["gain_low"]
    # A durable engine now decides with the promoted rule book.
    with DecisionEngine(settings) as engine:
        assert engine.spec.kind == "static"


def test_the_cli_refuses_in_one_line_with_the_reason(settings, tmp_path, capsys):
    config = tmp_path / "nextbest.yaml"
    config.write_text(yaml.safe_dump({"policies": {"candidates": CANDIDATES},
                                      "mlflow_tracking_uri": settings.mlflow_tracking_uri,
                                      "paths": {"bandit_dir": str(tmp_path / "bandit")}}))
    log = rule_log(settings, tmp_path / "log.parquet")
    code = main(["--config", str(config), "policies", "promote", "coin", "--logs", str(log)])
    err = capsys.readouterr().err
    assert code != 0 and "refused to promote 'coin'" in err and "interval" in err
    assert not (tmp_path / "bandit" / "live_policy.json").exists()


def test_a_shadow_logs_its_choices_and_never_reaches_a_user(settings, tmp_path):
    settings = with_policies(settings, shadow="coin")
    log_path = tmp_path / "live.sqlite"
    engine = DecisionEngine(settings, log_path=log_path, durable=False,
                            chooser=ChooserSpec("static"))
    context = RequestContext(channel="web", page="item", item_price=80.0, category="bags",
                             hour=14)
    returned = []
    for i in range(300):
        decision = engine.decide(UserView(user_id=f"u{i}", tier="gold"), context)
        returned.append(decision)
        if decision.action is not None:
            engine.feedback(decision.event_id, converted=i % 3 == 0,
                            revenue=80.0 if i % 3 == 0 else 0.0)
    engine.close()
    shown = [d for d in returned if d.action is not None]
    # The live rule book answers gold users with certification, always, probability 1.
    assert {d.action for d in shown} == {"certification"}
    assert all(d.probability == 1.0 == d.pmf["certification"] for d in shown)
    assert all("shadow" not in json.dumps(d.model_dump(mode="json")) for d in returned)
    with sqlite3.connect(log_path) as conn:
        rows = conn.execute("SELECT event_id, action, probability FROM shadow_decisions "
                            "WHERE policy = 'coin'").fetchall()
        logged = {r[0]: r[1] for r in conn.execute("SELECT event_id, action FROM decisions")}
    assert len(rows) == len(shown)  # every bandit decision shadowed
    assert {r[1] for r in rows} > {"certification"}  # the coin would have chosen others
    assert all(logged[event_id] == "certification" for event_id, _a, _p in rows)
    report = compare_shadow(log_path, read_log(log_path, settings), settings)
    assert report.shadow == "coin" and report.decisions == len(shown)
    assert 0.15 < report.agreement < 0.55  # a coin over three arms agrees about a third
