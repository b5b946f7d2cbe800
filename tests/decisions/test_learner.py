"""The single-writer learner: checkpoints, replay, and a real ``kill -9`` mid-traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from decisions.bandit import make_bandit
from decisions.decision_log import DecisionLog
from decisions.encoding import BanditExample, DecisionInput
from decisions.engine import DecisionEngine, RequestContext, UserView
from decisions.learner import CheckpointStore, Learner, open_checkpoints
from nextbest.config import Settings
from nextbest.storage import location

REPO = Path(__file__).resolve().parents[2]
CONTEXT = RequestContext(channel="app", page="item", item_price=150.0, category="shoes", hour=9)
NO_CAPS: dict[str, Any] = {}
# A learner-role engine in its own process: it runs until the stop file appears.
LEARNER_PROCESS = """
import sys, time
from pathlib import Path
from nextbest.config import Settings
from decisions.engine import DecisionEngine
settings = Settings.model_validate_json(Path(sys.argv[1]).read_text())
engine = DecisionEngine(settings, role="learner")
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.02)
engine.close()
"""


def with_bandit(settings: Settings, **changes: Any) -> Settings:
    data = settings.model_dump()
    data["decision_points"]["buyer_offer"].update(changes)
    return Settings.model_validate(data)


def kind(i: int) -> UserView:
    """Three kinds of users, so the model has several things to learn."""
    tier, tags = [("gold", ["price_sensitive"]), ("platinum", ["high_value"]),
                  ("silver", [])][i % 3]
    return UserView(user_id=f"user-{i}", tier=tier, tags=tags, churn_probability=(i % 10) / 10)


def converts(i: int, action: str | None) -> bool:
    return action == ["coupon", "certification", "installment"][i % 3]


class LearnerProcess:
    """A learner-role engine in a child process, started and stopped (or killed) by the test."""

    def __init__(self, settings_file: Path, stop_file: Path):
        self.stop_file = stop_file
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LEARNER_PROCESS, str(settings_file), str(stop_file)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            pytest.fail(f"learner process did not start: {self.proc.stderr.read()}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=20) == -signal.SIGKILL

    def stop(self) -> None:
        self.stop_file.touch()
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read()
        self.stop_file.unlink()


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_kill_9_mid_traffic_loses_no_accepted_feedback(settings: Settings, tmp_path: Path,
                                                       storage):
    """On SQLite files and on PostgreSQL (log, checkpoints and lease in the database)."""
    tuned = with_bandit(storage.apply(settings), checkpoint_every=25,
                        checkpoint_seconds=3600.0, **NO_CAPS)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(tuned.model_dump_json())
    store = open_checkpoints(tuned)
    scorer = DecisionEngine(tuned, role="scorer")
    decisions = [scorer.decide(kind(i), CONTEXT) for i in range(600)]
    learned = 0

    def give_feedback(first: int, last: int, during: Any = None) -> None:
        nonlocal learned
        for i in range(first, last):
            d = decisions[i]
            converted = converts(i, d.action)
            result = scorer.feedback(d.event_id, converted, 120.0 if converted else 0.0)
            assert result.status == "accepted"
            learned += result.learnable
            if during is not None and i == during[0]:
                during[1]()

    child = LearnerProcess(settings_file, tmp_path / "stop")
    give_feedback(0, 100)
    wait_for(lambda: (meta := store.latest()) is not None and meta.seq >= 50)
    give_feedback(100, 400, during=(200, child.kill9))  # killed while feedback streams in
    assert store.latest().seq < scorer.log.last_seq()   # something is left to replay
    child = LearnerProcess(settings_file, tmp_path / "stop")  # restart: reload + replay
    give_feedback(400, 600)
    child.stop()
    scorer.close()

    meta = store.latest()
    log = DecisionLog(location(tuned, "decision_log"))
    assert meta.seq == log.last_seq()
    assert meta.rewards_seen == 600 and meta.rewards_learned == learned > 500
    reference = Learner(tuned, log, store=None)  # a learner that never crashed
    reference.catch_up()
    recovered = make_bandit(tuned.bandit, model_file=store.model_path(meta),
                            learned=meta.rewards_learned)
    probes = [DecisionInput(UserView(user_id=d.user_id), CONTEXT, BanditExample.model_validate(
        log.get_decision(d.event_id).features)) for d in decisions[:30] if d.learnable]
    assert [recovered.pmf(p) for p in probes] == [reference.chooser.pmf(p) for p in probes]
    log.close()
    store.close()


def test_a_checkpoint_of_another_config_is_not_reused(settings: Settings):
    tuned = with_bandit(settings, **NO_CAPS)
    with DecisionEngine(tuned) as eng:
        for i in range(30):
            d = eng.decide(kind(i), CONTEXT)
            eng.feedback(d.event_id, True, 60.0)
        learned = eng.stats()["rewards_learned"]
        version = eng.policy_version
    data = tuned.model_dump()
    data["decision_points"]["buyer_offer"]["exploration"]["algorithm"] = "epsilon"
    changed = Settings.model_validate(data)
    with DecisionEngine(changed) as eng:
        stats = eng.stats()
    assert stats["rewards_learned"] == learned  # relearned from the log under the new config
    assert stats["policy_version"].split(".")[0] != version.split(".")[0]
    store = CheckpointStore(tuned.paths.bandit_dir)
    assert len(list(store.dir.glob("model-*.vw"))) <= 3  # old checkpoints are pruned


def test_a_staged_checkpoint_is_invisible_until_published(settings: Settings):
    tuned = with_bandit(settings, **NO_CAPS)
    with DecisionEngine(tuned) as eng:
        for i in range(20):
            d = eng.decide(kind(i), CONTEXT)
            eng.feedback(d.event_id, converts(i, d.action), 90.0 if converts(i, d.action) else 0)
    store = CheckpointStore(tuned.paths.bandit_dir)
    published = store.latest()
    bandit = make_bandit(tuned.bandit, model_file=store.model_path(published))
    staged = store.stage(bandit, published.model_copy(update={"seq": published.seq + 5}))
    assert staged.path.exists() and staged.path.name.startswith(".")
    assert store.latest() == published  # readers still see the published one
    assert store.publish(staged).seq == published.seq + 5
    assert store.latest().seq == published.seq + 5 and not staged.path.exists()
    assert store.model_path(store.latest()).exists()
    leftover = store.stage(bandit, store.latest())  # as if the learner died before publishing
    bandit.close()
    log = DecisionLog(tuned.paths.decision_log)
    learner = Learner(tuned, log, store=store)  # the next learner clears it away
    assert not leftover.path.exists()
    learner.chooser.close()
    log.close()


def test_inline_checkpoints_published_in_the_background_cover_every_reward(settings: Settings):
    tuned = with_bandit(settings, checkpoint_every=7, **NO_CAPS)
    with DecisionEngine(tuned) as eng:  # inline: checkpoints staged, published by a thread
        decisions = [eng.decide(kind(i), CONTEXT) for i in range(60)]
        for i, d in enumerate(decisions):
            eng.feedback(d.event_id, converts(i, d.action), 0.0)
        last_seq = eng.log.last_seq()
    store = CheckpointStore(tuned.paths.bandit_dir)
    meta = store.latest()
    assert meta.seq == last_seq == 60 and meta.rewards_seen == 60  # close() waited for it
    assert not list(store.dir.glob(".*.tmp"))
    assert len(list(store.dir.glob("model-*.vw"))) == 3  # published in order, then pruned
    log = DecisionLog(tuned.paths.decision_log)
    reference = Learner(tuned, log, store=None)
    reference.catch_up()
    reloaded = make_bandit(tuned.bandit, model_file=store.model_path(meta),
                           learned=meta.rewards_learned)
    probes = [DecisionInput(UserView(user_id=d.user_id), CONTEXT, BanditExample.model_validate(
        log.get_decision(d.event_id).features)) for d in decisions[:20] if d.learnable]
    assert probes and [reloaded.pmf(p) for p in probes] == [reference.chooser.pmf(p)
                                                             for p in probes]
    reloaded.close()
    reference.chooser.close()
    log.close()


def test_an_inline_checkpoint_is_published_off_the_deciding_thread(
        settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """The service's event loop decides and learns inline: only staging (VW's save, a few
    ms) happens there; the fsync, renames and pruning run on the publisher thread."""
    publishers: list[int] = []
    publish = CheckpointStore.publish

    def recording(self: CheckpointStore, staged: Any) -> Any:
        publishers.append(threading.get_ident())
        return publish(self, staged)

    monkeypatch.setattr(CheckpointStore, "publish", recording)
    tuned = with_bandit(settings, checkpoint_every=5, **NO_CAPS)
    with DecisionEngine(tuned) as eng:
        for i in range(10):
            d = eng.decide(kind(i), CONTEXT)
            eng.feedback(d.event_id, converts(i, d.action), 0.0)
    assert len(publishers) >= 2 and threading.get_ident() not in publishers


def test_the_learner_imports_the_reward_model_when_it_loads_not_on_its_first_reward():
    """The inline learner learns on the service's event loop: a module imported on the
    first learned reward (``_maybe_refit`` used to import decisions.reward_model there)
    stalled every request of the worker while it loaded (a 12+ ms stall trace)."""
    code = ("import sys; import decisions.learner; "
            "print('decisions.reward_model' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
