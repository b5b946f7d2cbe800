"""Benchmark of issue 14's fault scenario: replicas and learners killed with SIGKILL.

Builds the serving tests' tiny world (tests/served_world.py) in a temporary directory,
starts a throw-away PostgreSQL cluster and redis-server on 127.0.0.1, then runs the same
scenario as tests/serving/test_fault.py (tests/fault_scenario.py): two ``nextbest serve``
replicas and two ``nextbest learner`` processes (one ``--standby``) sharing only PostgreSQL
and Redis, a bounded load of decisions and feedback on each replica, one replica and then
the active learner killed with SIGKILL. Reports the feedback accepted, whether every
reward was learned exactly once (the counts), the standby's takeover time after the kill,
the surviving replica's answers after it and the errors clients saw.

    .venv/bin/python benchmarks/fault.py [--runs 1]

Writes benchmarks/results/fault.json and prints it. Needs ``postgresql`` and
``redis-server`` (Debian packages); exits 4 with what to install when one is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests"))

from fault_scenario import run_fault_scenario  # noqa: E402
from postgres_server import PostgresServerError, create_database, running_postgres  # noqa: E402
from redis_server import RedisServerError, running_redis  # noqa: E402
from served_world import UserPool, build_world  # noqa: E402

RESULTS = _HERE / "results" / "fault.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1,
                        help="scenarios on the same world, each on a fresh database")
    parser.add_argument("--load-seconds", type=float, default=2.0,
                        help="seconds of load before the first kill")
    args = parser.parse_args()
    started = time.perf_counter()
    # Child processes must not pick up a developer's settings.
    for key in [k for k in os.environ if k.startswith("NEXTBEST")]:
        del os.environ[key]
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    try:
        with tempfile.TemporaryDirectory(prefix="nextbest-fault-") as tmp, \
                running_postgres() as server, running_redis(Path(tmp)) as redis_url:
            world = build_world(Path(tmp) / "world")
            world_seconds = time.perf_counter() - started
            pool = UserPool(world.settings)
            runs = []
            for run in range(args.runs):
                database = create_database(server, f"fault_{run}")
                report = run_fault_scenario(world, database, redis_url, pool,
                                            name=f"fault{run}", load_seconds=args.load_seconds)
                print(report.line(), file=sys.stderr)
                runs.append(report.as_dict())
    except (PostgresServerError, RedisServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    takeovers = [r["standby_takeover_s"] for r in runs]
    result = {
        "benchmark": "fault", "time_s": round(time.perf_counter() - started, 1),
        "world_build_s": round(world_seconds, 1), "cpu_count": os.cpu_count(),
        "replicas": 2, "learners": 2, "online_store": "redis", "storage": "postgresql",
        "load": "one client per replica: decision then feedback, 10 ms apart",
        "accepted_feedback": sum(r["accepted_feedback"] for r in runs),
        "learned_exactly_once": all(r["learned_exactly_once"] for r in runs),
        "standby_takeover_s_median": statistics.median(takeovers),
        "standby_takeover_s_max": max(takeovers),
        "survivor_answers_after_kill": sum(r["survivor_answers_after_kill"] for r in runs),
        "survivor_errors": sum(r["survivor_errors"] for r in runs),
        "killed_replica_errors": sum(r["killed_replica_errors"] for r in runs),
        "runs": runs,
        "goals": {
            "every_accepted_feedback_learned_exactly_once":
                all(r["learned_exactly_once"] for r in runs),
            "standby_took_over_within_5s": max(takeovers) < 5.0,
            "surviving_replica_kept_answering": all(
                r["survivor_answers_after_kill"] > 0 and r["survivor_errors"] == 0
                for r in runs),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
