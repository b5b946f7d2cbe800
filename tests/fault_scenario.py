"""Issue 14's fault scenario, shared by tests/serving/test_fault.py and benchmarks/fault.py.

Two ``nextbest serve`` replicas (separate processes, separate ports) and two ``nextbest
learner`` processes (the active one and a ``--standby``) share only PostgreSQL (decision
log, checkpoints, learner lease) and Redis (the online store): no files. Under a bounded
load of decisions and feedback on each replica, one replica and then the active learner
are killed with SIGKILL. :func:`run_fault_scenario` returns what happened
(:class:`FaultReport`); the test asserts on it, the benchmark writes it out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import httpx
from api_key import HEADERS
from served_world import Server, UserPool, World, own_bandit_env, start_server

from decisions.decision_log import DecisionLog
from decisions.learner import DatabaseCheckpointStore
from features.build import load_features, refresh_online_store
from features.store import open_store
from nextbest.config import load_settings

CONTEXT = {"channel": "app", "page": "item", "item_price": 120.0, "category": "shoes", "hour": 10}
USERS_PER_REPLICA = 3


class Load(threading.Thread):
    """One client deciding and giving feedback to one replica until stopped; remembers the
    feedback answered "accepted", when each answer came and when requests failed."""

    def __init__(self, url: str, users: list[str]):
        super().__init__(daemon=True)
        self.url, self.users = url, users
        self.accepted: list[tuple[str, bool]] = []  # (event_id, learnable)
        self.answered_at: list[float] = []
        self.failed_at: list[float] = []
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
                    self.failed_at.append(time.monotonic())
                    time.sleep(0.05)
                    continue
                if fb.get("status") == "accepted":
                    self.accepted.append((d["event_id"], bool(fb["learnable"])))
                    self.answered_at.append(time.monotonic())
                time.sleep(0.01)  # bounded load: about 40 decisions + feedback per second


@dataclass
class FaultReport:
    """What the scenario saw; ``learned_exactly_once`` is its verdict on the learning."""

    accepted_feedback: int
    accepted_learnable: int
    accepted_missing_from_log: list[str]  # accepted, yet not in the log as answered
    rewards_in_log: int
    learnable_rewards_in_log: int
    last_seq: int
    checkpoint_seq: int
    checkpoint_rewards_seen: int
    checkpoint_rewards_learned: int
    standby_takeover_s: float  # from the active learner's death to the standby's lease
    survivor_answers_after_kill: int  # accepted feedback of the surviving replica after it
    survivor_errors: int  # failed requests of the surviving replica, the whole run
    survivor_errors_during_kill: int  # ... from the replica's kill to the new checkpoint
    killed_replica_errors: int  # failed requests to the killed replica (it is gone)
    standby_exit_code: int | None
    online_store: str = "redis"
    replica_roles: list[str] = field(default_factory=list)

    @property
    def learned_exactly_once(self) -> bool:
        """The chain of checkpoints (the first learner's, then the standby's after replaying
        from the last one it found) consumed every reward row once: none skipped, none
        twice, and every accepted feedback is in the log."""
        return (self.checkpoint_seq == self.last_seq
                and self.checkpoint_rewards_seen == self.rewards_in_log
                and self.checkpoint_rewards_learned == self.learnable_rewards_in_log
                and not self.accepted_missing_from_log)

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"learned_exactly_once": self.learned_exactly_once}

    def line(self) -> str:
        return (f"fault scenario: {self.accepted_feedback} feedback accepted, "
                f"{self.rewards_in_log} rewards learned "
                f"{'exactly once' if self.learned_exactly_once else 'NOT exactly once'}, "
                f"standby took over {self.standby_takeover_s:.2f} s after the kill, the "
                f"surviving replica answered {self.survivor_answers_after_kill} times after "
                f"it with {self.survivor_errors} errors")


def redis_store_env(redis_url: str, prefix: str) -> dict[str, str]:
    """Variables putting a process's online store on Redis under ``prefix``."""
    return {"NEXTBEST__STORE__BACKEND": "redis", "NEXTBEST__STORE__REDIS_URL": redis_url,
            "NEXTBEST__STORE__REDIS_PREFIX": prefix}


def load_redis(world: World, store_env: dict[str, str]) -> int:
    """Load the world's newest features and preferences into the Redis online store of
    ``store_env``; the users loaded."""
    with open_store(world.settings) as files:
        as_of = files.meta()["as_of"]
    settings = load_settings(None, environ=world.env | store_env)
    day = date.fromisoformat(str(as_of)[:10])
    frame = load_features(settings, day)
    refresh_online_store(settings, frame, day)
    return len(frame)


def start_learner(env: dict[str, str], root: Path, name: str, *extra: str
                  ) -> tuple[subprocess.Popen, Path]:
    """``nextbest learner`` (``--standby`` in ``extra``) in its own session; its output file."""
    out = root / f"{name}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "nextbest.cli", "learner", *extra],
                                env=env, cwd=root, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, out


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    """Poll ``predicate`` until true; the seconds it took (TimeoutError naming ``what``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def run_fault_scenario(world: World, database_url: str, redis_url: str, pool: UserPool,
                       *, name: str = "fault", load_seconds: float = 2.0) -> FaultReport:
    """Run the scenario on ``world`` with the decision log in ``database_url`` (an empty
    PostgreSQL database) and the online store on ``redis_url``; every process it starts is
    stopped before it returns."""
    store_env = redis_store_env(redis_url, f"nextbest-{name}:")
    load_redis(world, store_env)
    storage = {"NEXTBEST__STORAGE__URL": database_url,
               "NEXTBEST__BANDIT__CHECKPOINT_EVERY": "25",
               "NEXTBEST__BANDIT__CHECKPOINT_SECONDS": "0.5"} | store_env
    env = world.env | storage
    checkpoints = DatabaseCheckpointStore(database_url, "bandit")
    learners: list[subprocess.Popen] = []
    replicas: list[Server] = []
    try:
        active, _ = start_learner(env, world.root, f"{name}-learner-active")
        learners.append(active)
        wait_for(lambda: checkpoints.latest() is not None, "the learner's first checkpoint")
        standby, standby_out = start_learner(env, world.root, f"{name}-learner-standby",
                                             "--standby")
        learners.append(standby)
        wait_for(lambda: "waiting for the learner lease" in standby_out.read_text(),
                 "the standby waiting")

        def replica(i: int) -> Server:
            replica_name = f"{name}replica{i}"
            return start_server(world, name=replica_name,
                                env=own_bandit_env(world, replica_name) | storage)

        with ThreadPoolExecutor(2) as starting:  # start both replicas at once
            replicas.extend(starting.map(replica, range(2)))
        roles = [httpx.get(f"{srv.url}/bandit/stats", headers=HEADERS, timeout=30).json()["role"]
                 for srv in replicas]  # the lease is held: both serve as scorers
        loads = [Load(srv.url, [pool.take() for _ in range(USERS_PER_REPLICA)])
                 for srv in replicas]
        for load in loads:
            load.start()
        time.sleep(load_seconds)
        replica_killed_at = time.monotonic()
        replicas[0].stop(signal.SIGKILL)  # a replica dies mid-traffic
        time.sleep(1.5)
        active.kill()  # SIGKILL: the active learner dies holding the lease
        active.wait(20)
        killed_at = time.monotonic()
        takeover = wait_for(lambda: "took over the learner lease" in standby_out.read_text(),
                            "the standby taking over", timeout=30)
        before = checkpoints.latest().seq
        wait_for(lambda: checkpoints.latest().seq > before, "a checkpoint by the new learner")
        recovered_at = time.monotonic()
        time.sleep(1.0)
        for load in loads:
            load.stop_event.set()
            load.join(30)
        standby.send_signal(signal.SIGTERM)  # learns the rest, checkpoints, exits 0
        try:
            standby_code: int | None = standby.wait(60)
        except subprocess.TimeoutExpired:
            standby_code = None
    finally:
        for proc in learners:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for srv in replicas:
            srv.stop(signal.SIGKILL)
    return _report(database_url, checkpoints, loads, roles, takeover, standby_code,
                   replica_killed_at, killed_at, recovered_at)


def _report(database_url: str, checkpoints: DatabaseCheckpointStore, loads: list[Load],
            roles: list[str], takeover: float, standby_code: int | None,
            replica_killed_at: float, killed_at: float, recovered_at: float) -> FaultReport:
    """Compare what the clients were told with the log and the last checkpoint."""
    accepted = [e for load in loads for e in load.accepted]
    log = DecisionLog(database_url)
    try:
        missing = []
        for event_id, learnable in accepted:
            stored = log.get_reward(event_id)
            if stored is None or stored.source != "feedback" or stored.learnable != learnable:
                missing.append(event_id)
        rewards, learnable_rewards, last_seq = (log.count_rewards(),
                                                log.count_rewards(learnable_only=True),
                                                log.last_seq())
    finally:
        log.close()
    meta = checkpoints.latest()
    checkpoints.close()
    survivor = loads[1]
    return FaultReport(
        accepted_feedback=len(accepted),
        accepted_learnable=sum(learnable for _, learnable in accepted),
        accepted_missing_from_log=missing, rewards_in_log=rewards,
        learnable_rewards_in_log=learnable_rewards, last_seq=last_seq,
        checkpoint_seq=meta.seq, checkpoint_rewards_seen=meta.rewards_seen,
        checkpoint_rewards_learned=meta.rewards_learned,
        standby_takeover_s=round(takeover, 3),
        survivor_answers_after_kill=sum(t > killed_at for t in survivor.answered_at),
        survivor_errors=len(survivor.failed_at),
        survivor_errors_during_kill=sum(replica_killed_at <= t <= recovered_at
                                        for t in survivor.failed_at),
        killed_replica_errors=len(loads[0].failed_at), standby_exit_code=standby_code,
        replica_roles=roles)
