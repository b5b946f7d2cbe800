"""The decision engine end to end, in-process: decide, log, feedback, learn, roles."""

from __future__ import annotations

import gc
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from decisions.engine import DecisionEngine, RequestContext, UserView
from decisions.policy import ContactCounts
from nextbest.config import Settings
from nextbest.errors import ConfigError, Conflict, NotFound, ValidationFailed
from nextbest.storage import BOUNDED_WAL_PAGES

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONTEXT = RequestContext(channel="web", page="item", item_price=80.0, category="bags", hour=14)
NO_CAPS: dict[str, Any] = {"arms": [{"name": "coupon", "cost": 5.0, "cost_rate": 0.1,
                                     "exclude_tags": ["coupon_abuser"]},
                                    {"name": "installment", "cost_rate": 0.03},
                                    {"name": "certification", "cost": 0.5}]}


def with_bandit(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with some ``bandit`` fields replaced (validated again)."""
    data = settings.model_dump()
    data["decision_points"]["buyer_offer"].update(changes)
    return Settings.model_validate(data)


def user(i: int, **fields: Any) -> UserView:
    return UserView(user_id=f"user-{i}", **fields)


@pytest.fixture
def engine(settings: Settings):
    """A fast in-memory inline engine (the simulator's set-up) without contact caps."""
    eng = DecisionEngine(with_bandit(settings, **NO_CAPS), durable=False)
    yield eng
    eng.close()


def test_pmf_sums_to_one_and_probability_is_the_chosen_entry(engine: DecisionEngine):
    seen = set()
    for i in range(300):
        d = engine.decide(user(i, tier=["gold", "new"][i % 2]), CONTEXT, now=T0)
        if d.control:
            assert d.action is None and d.pmf == {} and not d.learnable
            continue
        assert set(d.pmf) == set(d.eligible) == {"coupon", "installment", "certification"}
        assert sum(d.pmf.values()) == pytest.approx(1.0, abs=1e-9)
        assert d.probability == d.pmf[d.action] and d.personalized and d.learnable
        assert d.reason.startswith(f"squarecb chose {d.action} (p=")
        seen.add(d.action)
    assert seen == {"coupon", "installment", "certification"}  # it explores


def test_ineligible_arm_is_never_chosen(engine: DecisionEngine):
    for i in range(200):
        d = engine.decide(user(i, tags=["coupon_abuser"]), CONTEXT, now=T0)
        assert d.action != "coupon" and "coupon" not in d.pmf
        if not d.control:
            assert "coupon removed: coupon_abuser" in d.reason


def test_weekly_caps_apply_to_campaign_counts_never_to_in_page_answers(settings: Settings):
    with DecisionEngine(with_bandit(settings, control_share=0.0), durable=False) as eng:
        in_page = [eng.decide(user(1), CONTEXT, now=T0 + timedelta(minutes=i))
                   for i in range(30)]
        assert all(set(d.eligible) == {"coupon", "installment", "certification"}
                   for d in in_page)  # anonymous calls cannot use up anyone's caps
        capped = eng.decide(user(1), CONTEXT, now=T0, campaign="win_back",
                            counts=ContactCounts(per_arm_week={"coupon": 2}))
        assert set(capped.eligible) == {"installment", "certification"}
        assert "coupon removed: weekly cap 2 reached" in capped.reason


def test_opted_out_user_gets_the_default_and_is_not_learned(engine: DecisionEngine):
    d = engine.decide(user(7, personalization=False), CONTEXT, now=T0)
    if d.control:
        pytest.fail("pick a user outside the control group")
    assert (d.action, d.probability, d.pmf) == ("certification", 1.0, {"certification": 1.0})
    assert not d.personalized and not d.learnable
    assert d.reason == "opted out of personalisation: default action certification"
    result = engine.feedback(d.event_id, True, 100.0, now=T0)
    assert result.status == "accepted" and not result.learnable
    assert engine.stats()["rewards_learned"] == 0
    assert engine.export_user("user-7")[0]["features"] == {"shared": {}, "arms": {},
                                                           "value": None}


def test_control_group_gets_no_action_and_is_logged(settings: Settings):
    with DecisionEngine(with_bandit(settings, control_share=0.5), durable=False) as eng:
        decisions = [eng.decide(user(i), CONTEXT, now=T0) for i in range(100)]
        control = [d for d in decisions if d.control]
        assert 30 < len(control) < 70
        assert all(d.action is None and d.reason == "control group: no action" for d in control)
        result = eng.feedback(control[0].event_id, True, 40.0, now=T0)
        assert (result.status, result.reward, result.learnable) == ("accepted", 40.0, False)
        assert eng.stats()["arms"]["none"]["decisions"] == len(control)


def test_feedback_unknown_duplicate_late_and_invalid(engine: DecisionEngine):
    with pytest.raises(NotFound, match="event_id"):
        engine.feedback("no-such-event", True, 1.0)
    d = next(d for d in (engine.decide(user(i), CONTEXT, now=T0) for i in range(50))
             if not d.control)
    with pytest.raises(ValidationFailed, match="revenue"):
        engine.feedback(d.event_id, True, float("nan"), now=T0)
    with pytest.raises(ValidationFailed, match="revenue 500 with converted false"):
        engine.feedback(d.event_id, False, 500.0, now=T0)
    first = engine.feedback(d.event_id, True, 200.0, now=T0 + timedelta(hours=1))
    again = engine.feedback(d.event_id, True, 200.0, now=T0 + timedelta(hours=2))
    assert first.status == "accepted" and first.learnable
    assert (first.action, first.tier) == (d.action, user(0).tier)
    assert again.status == "duplicate" and again.reward == first.reward
    with pytest.raises(Conflict, match="already accepted with converted=true, revenue 200; "
                                       "this one says converted=true, revenue 700"):
        engine.feedback(d.event_id, True, 700.0, now=T0 + timedelta(hours=2))
    assert engine.stats()["rewards_learned"] == 1
    late_d = engine.decide(user(1000), CONTEXT, now=T0)
    late = engine.feedback(late_d.event_id, True, 50.0, now=T0 + timedelta(days=8))
    assert late.status == "late" and not late.learnable
    assert "after the reward window of 7 days" in late.detail
    assert engine.stats()["rewards_learned"] == 1


def test_closed_windows_are_swept_and_learned(engine: DecisionEngine):
    first = [engine.decide(user(i), CONTEXT, now=T0) for i in range(20)]
    engine.decide(user(99), CONTEXT, now=T0 + timedelta(days=8))  # triggers the lazy sweep
    stats = engine.stats()
    assert stats["rewards"] == 20
    assert stats["rewards_learned"] == sum(d.learnable for d in first)
    late = engine.feedback(first[0].event_id, True, 10.0, now=T0 + timedelta(days=8))
    assert late.status == "late"


def test_served_in_steps_a_sweep_backlog_is_learned_a_step_at_a_time(settings: Settings):
    """The service's way (learn_in_steps): decide() no longer sweeps; sweep_rows writes the
    timeouts without learning them; a feedback behind that backlog learns one step of it,
    not all; learn_pending drains the rest in steps, in order, exactly once."""
    engine = DecisionEngine(with_bandit(settings, **NO_CAPS), role="inline")
    try:
        engine.learn_in_steps(50)
        old = [engine.decide(user(i), CONTEXT, now=T0) for i in range(120)]
        later = T0 + timedelta(days=8)
        fresh = engine.decide(user(999), CONTEXT, now=later)  # no lazy sweep any more
        assert engine.stats()["rewards"] == 0
        assert engine.sweep_rows(now=later) == 120 and engine.learner_lag() == 120
        assert engine.feedback(fresh.event_id, True, 10.0, now=later).status == "accepted"
        assert engine.learner_lag() == 121 - 50  # one step of the backlog, not all of it
        steps = [engine.learn_pending(50), engine.learn_pending(50)]
        assert steps == [50, 21] and engine.learner_lag() == 0
        assert engine.learn_pending(50) == 0
        stats = engine.stats()
        assert stats["rewards"] == 121
        assert stats["rewards_learned"] == sum(d.learnable for d in [*old, fresh])
    finally:
        engine.close()


def test_the_rewarded_arm_gains_share_for_its_kind_of_user(engine: DecisionEngine):
    """Price-sensitive gold users always convert on a coupon, platinum high-value users on a
    certification; nothing else ever converts. Each kind's arm must come to dominate."""
    kinds = {"coupon": {"tier": "gold", "tags": ["price_sensitive"]},
             "certification": {"tier": "platinum", "tags": ["high_value"]}}
    late_share: dict[str, list[bool]] = {arm: [] for arm in kinds}
    for i in range(3000):
        best = "coupon" if i % 2 else "certification"
        d = engine.decide(user(i, **kinds[best]), CONTEXT, now=T0)
        if d.control:
            continue
        engine.feedback(d.event_id, d.action == best, 100.0 if d.action == best else 0.0,
                        now=T0)
        if i >= 2500:
            late_share[best].append(d.action == best)
    for arm, hits in late_share.items():
        assert sum(hits) / len(hits) > 0.7, f"{arm} share stayed at {sum(hits) / len(hits)}"
    tiers = engine.stats()["tiers"]
    assert tiers["gold"]["coupon"]["share"] > 0.5
    assert tiers["platinum"]["certification"]["share"] > 0.5


def test_same_seed_same_decisions(settings: Settings, tmp_path: Path):
    runs = []
    for name in ("a", "b"):
        with DecisionEngine(with_bandit(settings, **NO_CAPS), durable=False,
                            log_path=tmp_path / f"{name}.sqlite") as eng:
            runs.append([eng.decide(user(i), CONTEXT, now=T0).action for i in range(100)])
    assert runs[0] == runs[1]


def test_durable_inline_engine_restarts_where_it_stopped(settings: Settings):
    tuned = with_bandit(settings, checkpoint_every=7, **NO_CAPS)
    eng = DecisionEngine(tuned)
    for i in range(40):
        d = eng.decide(user(i), CONTEXT, now=T0)
        eng.feedback(d.event_id, True, 30.0 + i, now=T0)
    before = eng.stats()
    probe = [eng.decide(user(i), CONTEXT, now=T0).pmf for i in range(5)]
    with pytest.raises(Conflict, match="learner"):
        DecisionEngine(tuned)  # the learner lock is held
    auto = DecisionEngine(tuned, role="auto")
    assert auto.role == "scorer"
    auto.close()
    eng.close()
    again = DecisionEngine(tuned)
    after = again.stats()
    assert after["rewards_learned"] == before["rewards_learned"] > 30
    assert after["policy_version"] == before["policy_version"]
    assert [again.decide(user(i), CONTEXT, now=T0).pmf for i in range(5)] == probe
    again.close()


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.02)


def test_scorer_learns_through_the_learner_checkpoints(settings: Settings):
    tuned = with_bandit(settings, checkpoint_seconds=0.05, reload_seconds=0.01, **NO_CAPS)
    learner = DecisionEngine(tuned, role="learner")
    scorer = DecisionEngine(tuned, role="scorer")
    try:
        accepted = 0
        for i in range(60):
            d = scorer.decide(user(i), CONTEXT)
            result = scorer.feedback(d.event_id, True, 50.0)
            accepted += result.learnable
        assert result.detail == "reward accepted; the learner will learn it"
        wait_for(lambda: scorer.stats()["rewards_learned"] == accepted)
        assert scorer.policy_version.endswith(f".{scorer.log.last_seq()}")
    finally:
        scorer.close()
        learner.close()


def test_a_scorer_looks_for_and_loads_new_checkpoints_off_the_request_thread(
        settings: Settings):
    """The scorer's model watcher asks the checkpoint store and loads a new model in a
    thread of its own; the deciding thread only swaps it in, and keeps deciding."""
    tuned = with_bandit(settings, checkpoint_every=5, reload_seconds=0.01, **NO_CAPS)
    learner = DecisionEngine(tuned, role="inline")
    scorer = DecisionEngine(tuned, role="scorer")
    try:
        watcher = scorer._watcher
        looked_from: set[str] = set()
        latest_stamp = watcher.store.latest_stamp

        def recorded() -> Any:
            looked_from.add(threading.current_thread().name)
            return latest_stamp()
        watcher.store.latest_stamp = recorded
        before = scorer.policy_version
        for i in range(10):
            d = learner.decide(user(i), CONTEXT)
            learner.feedback(d.event_id, True, 40.0)
        # Checkpoints at 5 and 10 rewards: the scorer may see the first, then the second.
        wait_for(lambda: scorer.decide(user(1), CONTEXT) is not None
                 and scorer.policy_version.endswith(".10"))
        assert scorer.policy_version != before
        assert looked_from and all(name.startswith("checkpoint-loader") for name in looked_from)
    finally:
        scorer.close()
        learner.close()


def test_feedback_joins_the_same_with_and_without_the_decision_cache(settings: Settings,
                                                                       tmp_path: Path):
    """Recent decisions are joined from memory; the result must equal a join from the log."""
    outcomes = []
    for size in (0, 50):  # 50: older decisions fall out of the cache and are read back
        tuned = with_bandit(settings, decision_cache_size=size, **NO_CAPS)
        with DecisionEngine(tuned, durable=False, log_path=tmp_path / f"{size}.sqlite") as eng:
            decisions = [eng.decide(user(i), CONTEXT, now=T0) for i in range(200)]
            results = [eng.feedback(d.event_id, i % 3 == 0, 90.0 * (i % 3 == 0), now=T0)
                       for i, d in enumerate(decisions)]
            again = eng.feedback(decisions[198].event_id, True, 90.0, now=T0)  # as before
            outcomes.append(([d.action for d in decisions],
                             [(r.status, r.reward, r.learnable) for r in results],
                             again.status, eng.stats()["rewards_learned"]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2] == "duplicate"


def test_decisions_kept_for_feedback_add_nothing_for_the_garbage_collector(
        engine: DecisionEngine):
    """The cache holds plain rows: thousands of them as objects made every collection of
    the serving worker scan them (pauses of 100-300 ms, benchmarks/serve.py)."""
    for i in range(50):  # what the first decisions set up once
        engine.decide(user(i), CONTEXT, now=T0)
    gc.collect()
    before = len(gc.get_objects())
    last = [engine.decide(user(i), CONTEXT, now=T0) for i in range(50, 550)][-1].event_id
    gc.collect()
    assert len(engine.remembered_users()) == 550
    assert len(gc.get_objects()) - before < 100  # 500 decisions as objects: ~8,000
    # ... and feedback still joins them from memory.
    assert engine.feedback(last, True, 20.0, now=T0).status == "accepted"


def test_erased_user_is_forgotten_by_the_decision_cache(engine: DecisionEngine):
    d = engine.decide(user(1), CONTEXT, now=T0)
    engine.erase_user("user-1")
    with pytest.raises(NotFound, match="event_id"):
        engine.feedback(d.event_id, True, 20.0, now=T0)


def test_erase_and_export_user(engine: DecisionEngine):
    d = engine.decide(user(1), CONTEXT, now=T0)
    engine.feedback(d.event_id, True, 20.0, now=T0)
    engine.decide(user(2), CONTEXT, now=T0)
    exported = engine.export_user("user-1")
    assert len(exported) == 1 and exported[0]["reward"]["revenue"] == 20.0
    assert engine.erase_user("user-1") == 1
    assert engine.export_user("user-1") == []
    assert engine.stats()["decisions"] == 1


# --- red lines ---------------------------------------------------------------------------------

def test_a_student_never_gets_an_installment_and_the_reason_says_why(settings: Settings):
    with DecisionEngine(with_bandit(settings, control_share=0.0), durable=False) as eng:
        for i in range(100):
            student = user(i, tier="gold", features={"is_student": 1.0, "aov": 400.0})
            d = eng.decide(student, CONTEXT, now=T0)
            assert d.action != "installment" and "installment" not in d.eligible
            assert "installment removed: no credit: is_student == True" in d.reason
        others = {eng.decide(user(1000 + i, features={"is_student": 0.0}), CONTEXT,
                             now=T0).action for i in range(100)}
    assert "installment" in others


@pytest.mark.parametrize("field, context", [
    ("context.channel", RequestContext(channel="whatsapp", page="item")),
    ("context.page", RequestContext(channel="web", page="<script>alert(1)</script>")),
])
def test_an_unknown_channel_or_page_is_refused_before_anything_is_logged(
        engine: DecisionEngine, field: str, context: RequestContext):
    with pytest.raises(ValidationFailed) as exc:
        engine.decide(user(1), context, now=T0)
    assert exc.value.field == field
    assert engine.stats()["decisions"] == 0


def test_the_encoder_refuses_a_forbidden_feature(settings: Settings):
    data = settings.model_dump()
    data["policy"]["forbidden_features"] = ["coupon_share"]  # a FEATURE_BINS column
    with pytest.raises(ConfigError, match="bandit's encoder reads coupon_share.*policy."
                                          "forbidden_features"):
        DecisionEngine(Settings.model_validate(data), durable=False)
    data["policy"]["forbidden_features"] = ["carts_30d"]  # read as a number (namespace N)
    with pytest.raises(ConfigError, match="bandit's encoder reads carts_30d"):
        DecisionEngine(Settings.model_validate(data), durable=False)
    arms = [*NO_CAPS["arms"], {"name": "device_deal", "features": {"device_model": "iphone"}}]
    with pytest.raises(ConfigError, match="'device_deal' features reads device_model"):
        DecisionEngine(with_bandit(settings, arms=arms), durable=False)


def test_one_price_for_everyone_every_tier_gets_the_same_terms_per_arm(settings: Settings):
    """An arm's offer (its discount value, its installment terms) does not depend on who
    gets it: decisions for users of every tier carry identical terms for each arm, in the
    answer and in the logged example the bandit saw."""
    tiers = ["platinum", "gold", "silver", "dormant", "churned", "new"]
    terms: dict[str, set[str]] = {}
    tokens: dict[str, set[str]] = {}
    with DecisionEngine(with_bandit(settings, control_share=0.0), durable=False) as eng:
        arms = {arm.name: arm for arm in eng.config.arms}
        for i in range(600):
            tier = tiers[i % len(tiers)]
            d = eng.decide(user(i, tier=tier, features={"aov": 20.0 + 90 * (i % 7)}),
                           CONTEXT.model_copy(update={"item_price": 30.0 + i}), now=T0)
            assert d.offer is not None and d.offer.arm == d.action
            assert d.offer.terms == arms[d.action].features
            terms.setdefault(d.action, set()).add(d.offer.model_dump_json())
            logged = eng.log.get_decision(d.event_id)
            for arm, arm_tokens in logged.features["arms"].items():
                tokens.setdefault(arm, set()).add(" ".join(arm_tokens))
            terms.setdefault(f"{d.action}@{tier}", set()).add(d.offer.model_dump_json())
    assert {key.split("@")[1] for key in terms if "@" in key} == set(tiers)
    assert all(len(offers) == 1 for offers in terms.values())  # one offer per arm
    assert len(tokens) == 3 and all(len(t) == 1 for t in tokens.values())


def test_revenue_above_the_limit_is_refused_and_the_reward_is_clipped(settings: Settings):
    tuned = with_bandit(settings, control_share=0.0, reward={
        "max_revenue_multiple": 5.0, "max_revenue": 300.0, "clip_min": -10.0,
        "clip_max": 250.0}, **NO_CAPS)
    with DecisionEngine(tuned, durable=False) as eng:
        priced = eng.decide(user(1), CONTEXT, now=T0)  # item price 80: limit 400
        with pytest.raises(ValidationFailed, match=r"revenue 400\.5 is above the limit 400 .*"
                                                   "max_revenue_multiple") as refused:
            eng.feedback(priced.event_id, True, 400.5, now=T0, key_id="k")
        assert refused.value.field == "revenue"
        assert eng.stats()["rewards"] == 0  # nothing recorded
        result = eng.feedback(priced.event_id, True, 400.0, now=T0, key_id="k")
        assert result.reward == 250.0 and "clipped to 250" in result.detail
        assert eng.log.get_reward(priced.event_id).reward == 250.0  # what is learned
        unpriced = eng.decide(user(2), CONTEXT.model_copy(update={"item_price": None}), now=T0)
        with pytest.raises(ValidationFailed, match=r"above the limit 300 .*max_revenue"):
            eng.feedback(unpriced.event_id, True, 301.0, now=T0)
        assert eng.feedback(unpriced.event_id, True, 300.0, now=T0).status == "accepted"


def test_the_inline_learner_checkpoints_on_its_time_schedule(settings: Settings):
    tuned = with_bandit(settings, checkpoint_every=10_000, checkpoint_seconds=0.2, **NO_CAPS)
    eng = DecisionEngine(tuned)
    try:
        published = eng._learner.store.latest
        d = next(d for d in (eng.decide(user(i), CONTEXT, now=T0) for i in range(50))
                 if d.learnable)
        eng.feedback(d.event_id, True, 30.0, now=T0)
        eng.checkpoint_if_due()  # too early: nothing saved yet
        assert published() is None
        time.sleep(0.25)
        eng.checkpoint_if_due()
        wait_for(lambda: published() is not None and published().rewards_learned == 1)
    finally:
        eng.close()


def test_a_durable_engine_checkpoints_its_log_from_a_thread(settings: Settings):
    """A durable engine's decision log copies its WAL from a thread (the service's decisions
    commit on its event loop) and its own commits checkpoint only past BOUNDED_WAL_PAGES;
    closing the engine stops the thread. A scratch engine (``durable=False``) starts none."""
    engine = DecisionEngine(with_bandit(settings, **NO_CAPS), role="inline")
    try:
        conn = engine.log.conn
        name = f"wal-checkpoint:{conn.path.name}"
        assert conn.checkpointer is not None
        assert any(t.name == name and t.is_alive() for t in threading.enumerate())
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BOUNDED_WAL_PAGES
        engine.decide(user(1), CONTEXT, now=T0)
    finally:
        engine.close()
    assert not any(t.name == name and t.is_alive() for t in threading.enumerate())
    with DecisionEngine(with_bandit(settings, **NO_CAPS), durable=False) as scratch:
        assert scratch.log.conn.checkpointer is None


def test_choose_logs_nothing_and_record_logs_and_remembers_the_choice(engine: DecisionEngine):
    """The service's two halves of ``decide``: ``choose`` (computed while the log's gate may
    be held) writes nothing; ``record`` writes the row ``decide`` would and remembers it
    for its feedback."""
    before = engine.log.count_decisions()
    choice = engine.choose(user(1), CONTEXT, now=T0)
    assert choice.logged is not None and choice.logged.decision is choice.decision
    assert engine.log.count_decisions() == before
    assert not engine.remembers(choice.decision.event_id)
    assert engine.record(choice) is choice.decision
    assert engine.log.count_decisions() == before + 1
    assert engine.remembers(choice.decision.event_id)
    logged = engine.log.get_decision(choice.decision.event_id)
    assert logged is not None and logged.decision.action == choice.decision.action
    assert engine.feedback(choice.decision.event_id, True, 10.0, now=T0).status == "accepted"
    erased = engine.choose(user(2), CONTEXT, now=T0, record=False)
    assert erased.logged is None and engine.record(erased) is erased.decision
    assert engine.log.count_decisions() == before + 1
