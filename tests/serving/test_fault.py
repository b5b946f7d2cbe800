"""Beyond one host, under faults: two replicas, a learner and a standby on one PostgreSQL.

Separate ``nextbest serve`` processes on their own ports and two ``nextbest learner``
processes share only the PostgreSQL database (decision log, checkpoints, learner lease).
Under a bounded load of decisions and feedback, one replica and then the active learner are
killed with SIGKILL: the standby takes the lease over, the surviving replica keeps
answering, and the final checkpoint covers every reward of the log exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from api_key import HEADERS
from postgres_server import create_database

from decisions.decision_log import DecisionLog
from decisions.learner import DatabaseCheckpointStore

CONTEXT = {"channel": "app", "page": "item", "item_price": 120.0, "category": "shoes", "hour": 10}


class Load(threading.Thread):
    """One client deciding and giving feedback to one replica until stopped; remembers the
    feedback answered "accepted" and how many requests failed (the replica died)."""

    def __init__(self, url: str, users: list[str]):
        super().__init__(daemon=True)
        self.url, self.users = url, users
        self.accepted: list[tuple[str, bool]] = []  # (event_id, learnable)
        self.answered_at: list[float] = []
        self.failures = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5.0, headers=HEADERS) as http:
            i = 0
            while not self.stop_event.is_set():
                i += 1
                try:
                    d = http.post("/next_best_action", json={
                        "user_id": self.users[i % len(self.users)], "context": CONTEXT}).json()
                    fb = http.post("/feedback", json={
                        "event_id": d["event_id"], "converted": i % 3 == 0,
                        "revenue": 50.0 * (i % 3 == 0)}).json()
                except (httpx.HTTPError, KeyError):
                    self.failures += 1
                    time.sleep(0.05)
                    continue
                if fb.get("status") == "accepted":
                    self.accepted.append((d["event_id"], bool(fb["learnable"])))
                    self.answered_at.append(time.monotonic())
                time.sleep(0.01)  # bounded load: about 40 decisions + feedback per second


def _start_learner(env: dict[str, str], root: Path, name: str, *extra: str
                   ) -> tuple[subprocess.Popen, Path]:
    out = root / f"{name}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "nextbest.cli", "learner", *extra],
                                env=env, cwd=root, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, out


def _wait(predicate, what: str, timeout: float = 60.0) -> float:
    """Poll ``predicate`` until true; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.integration
def test_replica_and_learner_killed_standby_takes_over_and_nothing_is_lost(
        world, spawn, pool, postgres_server, tmp_path: Path) -> None:
    url = create_database(postgres_server, "fault_test")
    storage = {"NEXTBEST__STORAGE__URL": url, "NEXTBEST__BANDIT__CHECKPOINT_EVERY": "25",
               "NEXTBEST__BANDIT__CHECKPOINT_SECONDS": "0.5"}
    env = world.env | storage
    checkpoints = DatabaseCheckpointStore(url, "bandit")
    active, active_out = _start_learner(env, world.root, "learner-active")
    standby = None
    try:
        _wait(lambda: checkpoints.latest() is not None, "the learner's first checkpoint")
        standby, standby_out = _start_learner(env, world.root, "learner-standby", "--standby")
        _wait(lambda: "waiting for the learner lease" in standby_out.read_text(),
              "the standby waiting")
        with ThreadPoolExecutor(2) as starting:  # start both replicas at once
            replicas = list(starting.map(lambda i: spawn(f"faultreplica{i}", env=storage),
                                         range(2)))
        for srv in replicas:  # the lease is held: both serve as scorers
            stats = httpx.get(f"{srv.url}/bandit/stats", headers=HEADERS, timeout=30).json()
            assert stats["role"] == "scorer", stats
        loads = [Load(srv.url, [pool.take() for _ in range(3)]) for srv in replicas]
        for load in loads:
            load.start()
        time.sleep(2.0)
        replicas[0].stop(signal.SIGKILL)  # a replica dies mid-traffic
        time.sleep(1.5)
        active.kill()  # SIGKILL: the active learner dies holding the lease
        active.wait(20)
        killed_at = time.monotonic()
        takeover = _wait(lambda: "took over the learner lease" in standby_out.read_text(),
                         "the standby taking over", timeout=30)
        before = checkpoints.latest().seq
        answered_after_kill = len(loads[1].accepted)
        _wait(lambda: checkpoints.latest().seq > before, "a checkpoint by the new learner")
        time.sleep(1.0)
        for load in loads:
            load.stop_event.set()
            load.join(30)
        survivor_answers = sum(t > killed_at for t in loads[1].answered_at)
        assert len(loads[1].accepted) > answered_after_kill and survivor_answers > 0
        standby.send_signal(signal.SIGTERM)  # learns the rest, checkpoints, exits 0
        assert standby.wait(60) == 0, standby_out.read_text()
    finally:
        for proc in (active, standby):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    accepted = [e for load in loads for e in load.accepted]
    log = DecisionLog(url)
    try:
        for event_id, learnable in accepted:  # every accepted feedback is in the log
            stored = log.get_reward(event_id)
            assert stored is not None and stored.source == "feedback"
            assert stored.learnable == learnable
        rewards, learnable_rewards, last_seq = (log.count_rewards(),
                                                log.count_rewards(learnable_only=True),
                                                log.last_seq())
    finally:
        log.close()
    meta = checkpoints.latest()
    checkpoints.close()
    # The chain of checkpoints (first learner, then the standby replaying after the last
    # one it found) consumed every reward row once: none skipped, none twice.
    assert meta.seq == last_seq
    assert meta.rewards_seen == rewards and meta.rewards_learned == learnable_rewards
    assert len(accepted) > 50 and sum(learnable for _, learnable in accepted) > 0
    print(f"fault test: {len(accepted)} feedback accepted, {rewards} rewards learned once, "
          f"standby took over {takeover:.2f} s after the kill, the surviving replica "
          f"answered {survivor_answers} times after it")
