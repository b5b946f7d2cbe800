"""The LightGBM reward model inside the bandit: refits, versions in the log, checkpoints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from decisions.decision_log import DecisionLog
from decisions.engine import DecisionEngine, RequestContext, UserView
from decisions.reward_model import RewardModelBandit
from nextbest.config import Settings

CONTEXT = RequestContext(channel="web", page="item", item_price=120.0, category="bags", hour=9)


def lgbm_settings(settings: Settings, **reward_model) -> Settings:
    data = settings.model_dump()
    data["decision_points"]["buyer_offer"]["reward_model"] = {"kind": "lightgbm", "min_rewards": 150,
                                      "refit_every": 150, "n_estimators": 20,
                                      "min_child_samples": 10, **reward_model}
    for arm in data["decision_points"]["buyer_offer"]["arms"]:
        arm["max_per_user_per_week"] = None
    return Settings.model_validate(data)


def run(engine: DecisionEngine, n: int) -> list[str | None]:
    """``n`` decisions with immediate feedback (coupon users with many coupons convert)."""
    actions = []
    for i in range(n):
        tags = ["price_sensitive"] if i % 2 else []
        user = UserView(user_id=f"u{i % 40}", tier="silver", tags=tags,
                        features={"coupon_share": 0.9 if i % 2 else 0.0, "aov": 100.0})
        d = engine.decide(user, CONTEXT)
        actions.append(d.action)
        if d.action is not None:
            won = (d.action == "coupon") == bool(i % 2) and i % 3 != 0
            engine.feedback(d.event_id, converted=won, revenue=120.0 if won else 0.0)
    return actions


def logged_versions(path: Path) -> list[str | None]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute(
            "SELECT reward_model FROM decisions WHERE action IS NOT NULL ORDER BY ts, rowid")]


def test_refits_on_the_log_and_records_the_version_of_every_decision(settings, tmp_path):
    settings = lgbm_settings(settings)
    path = tmp_path / "log.sqlite"
    with DecisionEngine(settings, log_path=path, durable=False) as engine:
        first = run(engine, 500)
        chooser = engine._model()[0]
        assert isinstance(chooser, RewardModelBandit)
        assert chooser.model is not None and chooser.model.report.holdout_rows > 0
    versions = logged_versions(path)
    assert versions[0] is None  # VW alone until min_rewards
    fitted = [v for v in versions if v]
    assert len(set(fitted)) >= 2 and all(v.startswith("lgbm.") for v in fitted)
    seqs = [int(v.split(".")[1]) for v in fitted]
    assert seqs == sorted(seqs)  # each decision names the model that was in force
    # Deterministic: the same run again makes the same choices with the same models.
    path2 = tmp_path / "again.sqlite"
    with DecisionEngine(settings, log_path=path2, durable=False) as engine:
        assert run(engine, 500) == first
    assert logged_versions(path2) == versions


def test_a_checkpoint_keeps_the_reward_model(settings, tmp_path):
    settings = lgbm_settings(settings)
    with DecisionEngine(settings, log_path=tmp_path / "log.sqlite", durable=False) as engine:
        run(engine, 400)
        chooser = engine._model()[0]
        chooser.save(tmp_path / "model.vw")
        from decisions.encoding import DecisionInput, build_example, encode_arms

        user = UserView(user_id="x", tier="silver", features={"coupon_share": 0.9})
        example = build_example(encode_arms(settings.bandit), user, CONTEXT,
                                ["coupon", "installment", "certification"])
        before = chooser.pmf(DecisionInput(user, CONTEXT, example))
        loaded = RewardModelBandit(settings.bandit, model_file=tmp_path / "model.vw",
                                   learned=chooser.learned)
        assert loaded.reward_model_version == chooser.reward_model_version is not None
        assert loaded.pmf(DecisionInput(user, CONTEXT, example)) == before
        loaded.close()


def test_the_service_learner_refits_off_the_request_path_and_logs_to_mlflow(settings):
    from mlflow import MlflowClient

    settings = lgbm_settings(settings, refit_every=1000, min_rewards=60)
    with DecisionEngine(settings) as engine:  # durable inline: refits in a worker thread
        run(engine, 80)
    models = list((Path(settings.paths.bandit_dir) / "reward_models").glob("lgbm.*.json"))
    assert models
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("reward_model")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and {"holdout_log_loss", "holdout_base_log_loss"} <= set(runs[0].data.metrics)
    assert int(runs[0].data.params["last_seq"]) >= 60
    # Restarted, the engine decides with the checkpointed reward model.
    with DecisionEngine(settings) as engine:
        assert engine._model()[0].reward_model_version == runs[0].data.params["version"]


def test_an_old_log_gains_the_reward_model_column(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE decisions (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
                     "ts REAL NOT NULL, tier TEXT NOT NULL, features TEXT NOT NULL, eligible "
                     "TEXT NOT NULL, action TEXT, probability REAL NOT NULL, pmf TEXT NOT NULL, "
                     "policy_version TEXT NOT NULL, personalized INTEGER NOT NULL, control "
                     "INTEGER NOT NULL, learnable INTEGER NOT NULL, campaign TEXT, item_price "
                     "REAL, reason TEXT NOT NULL)")
        conn.execute("INSERT INTO decisions VALUES ('e1', 'u', 0, 'gold', '{}', '[\"coupon\"]', "
                     "'coupon', 1.0, '{\"coupon\": 1.0}', 'abc.0', 1, 0, 1, NULL, 10.0, 'r')")
    log = DecisionLog(path)
    logged = log.get_decision("e1")
    log.close()
    assert logged is not None and logged.reward_model is None


def test_a_refit_window_reads_its_positions_only(settings, tmp_path):
    """What the fitting process is given is fixed when the refit is due: rewards written to
    the log later are not read, so the model and its version do not depend on timing."""
    from decisions.learner import RefitWindow, fit_window
    from decisions.reward_model import FittedRewardModel

    settings = lgbm_settings(settings, min_rewards=10_000)  # no refit while the log fills
    path = tmp_path / "log.sqlite"
    with DecisionEngine(settings, log_path=path, durable=False) as engine:
        run(engine, 200)
    log = DecisionLog(path)
    try:
        last = log.last_seq()
        rows = RefitWindow(first=20, last=last - 30).rows(log, 1000)
    finally:
        log.close()
    assert rows and rows[0].seq > 20 and rows[-1].seq <= last - 30
    text = fit_window(path, RefitWindow(first=20, last=last - 30),
                      settings.bandit.reward_model, settings.bandit.seed)
    assert text is not None
    model = FittedRewardModel.from_json(text)
    assert model.version == f"lgbm.{rows[-1].seq}"
    assert fit_window(path, RefitWindow(first=last, last=last),
                      settings.bandit.reward_model, 0) is None  # nothing to fit
