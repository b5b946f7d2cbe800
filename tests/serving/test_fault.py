"""Beyond one host, under faults: two replicas, a learner and a standby on one PostgreSQL
and one Redis, no shared files (the scenario: tests/fault_scenario.py, which
benchmarks/fault.py runs too).

Under a bounded load of decisions and feedback, one replica and then the active learner are
killed with SIGKILL: the standby takes the lease over, the surviving replica keeps
answering, and the final checkpoint covers every reward of the log exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_scenario import run_fault_scenario
from postgres_server import create_database


@pytest.mark.integration
def test_replica_and_learner_killed_standby_takes_over_and_nothing_is_lost(
        world, pool, postgres_server, redis_url, tmp_path: Path) -> None:
    url = create_database(postgres_server, "fault_test")
    report = run_fault_scenario(world, url, redis_url, pool)
    assert report.replica_roles == ["scorer", "scorer"]  # the lease is held by the learner
    assert report.online_store == "redis"
    # Every accepted feedback is in the log as answered, and the chain of checkpoints (the
    # first learner's, then the standby's replay after the last one it found) consumed
    # every reward row once: none skipped, none twice.
    assert report.accepted_missing_from_log == []
    assert report.checkpoint_seq == report.last_seq
    assert report.checkpoint_rewards_seen == report.rewards_in_log
    assert report.checkpoint_rewards_learned == report.learnable_rewards_in_log
    assert report.learned_exactly_once
    assert report.accepted_feedback > 50 and report.accepted_learnable > 0
    # The standby took over and learned the rest; the surviving replica kept answering.
    assert report.standby_exit_code == 0
    assert report.survivor_answers_after_kill > 0 and report.survivor_errors == 0
    print(report.line())
