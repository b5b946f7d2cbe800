"""Benchmark of the campaign layer: events in at a fixed rate, and a scheduled campaign over
1,000,000 users.

``--events``: a real ``nextbest serve`` (one worker, API keys on: the generator sends a key
with the ``platform`` scope) over a small synthetic world (``benchmarks/serve.py``'s: synth,
features build, both champions), a fresh campaign store and decision log. The open-loop
generator (benchmarks/openloop.py ``--kind events``, its own process) posts one ``view``
event per request to ``POST /events`` at ``--rate`` per second on a fixed schedule
(``constant`` arrivals, not saturation) for ``--seconds``: users of a pool of ``--pool``
and three categories, so users who view one category five times fire ``browse_no_buy``
(a decision by the bandit and a ``pending`` outbox row; later views of the same user and
category are ``suppressed`` rows with reason ``cooldown``). The reply comes after the event
is kept, the trigger decided and the outbox row written, so its latency (from the scheduled
send time, coordinated omission corrected) is the goal's. After the run the campaign store
is read back: events sent, accepted (the replies) and kept (the ``events`` table) must
agree (zero lost), and the outbox rows must be those the replies carried. Goal: p99 < 30 ms
at 200 events/s, zero lost. Writes benchmarks/results/campaign_events.json.

``--scheduled``: an online store (SQLite, the default) of ``--users`` users (default
1,000,000), filled the way ``features build`` refreshes it (``load_preferences``, then
``load_records``), from the small world's real features and preferences, repeated under new
user ids (the base world's users tiled: ``--users`` / base users copies of each, each copy
with its own id, so its own holdout hash and decisions). The campaign: the built-in
``win_back`` audience widened to a large share of the store (``--condition``, default
dormant or churned users with churn probability >= 0.5), holdout 10%, weekly. Then, in its
own process, as a user runs it: ``nextbest campaigns run bench_win_back --now ... --json``
(audience over the store with both champions scoring every user, holdout, a bandit decision
per reachable user, one outbox row per firing), timed wall clock, its peak RSS measured by
the process itself (``ru_maxrss``) and by polling its RSS. References in the same run: a scan
of the store alone (``OnlineStore.iter_frames`` in the audience's chunks, every record
parsed) and the dry run
(``--dry-run``: audience and holdout, no decisions, no writes; with
``--dry-run-reference``). The outbox is read back:
one row per audience member, the held-out ones ``suppressed`` with reason ``holdout``.
Goal: under 5 minutes and 4 GiB. Writes benchmarks/results/campaign_scheduled.json.

    .venv/bin/python benchmarks/campaigns.py --events [--rate 200 --seconds 20]
    .venv/bin/python benchmarks/campaigns.py --scheduled [--users 1000000] [--world DIR]

Both at once with ``--events --scheduled``. ``--world DIR`` keeps the base world and the
filled store between runs (rebuilt when absent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# The repository before this file's folder: ``campaigns`` is the package, not this script
# (benchmarks/serve.py is still found in the folder).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402
from serve import build_world, start_service, stop_service, world_env  # noqa: E402

from campaigns.layer import AUDIENCE_CHUNK  # noqa: E402
from features.build import available_as_of, load_features  # noqa: E402
from features.contract import raw_path  # noqa: E402
from features.store import open_store  # noqa: E402
from nextbest.config import load_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
OPENLOOP = REPO / "benchmarks" / "openloop.py"
P99_GOAL_MS = 30.0
GOAL_SECONDS, GOAL_GIB = 300.0, 4.0
CAMPAIGN = "bench_win_back"
NOW = "2026-01-05T10:00:00+00:00"  # a Monday at 10:00 UTC, win_back's slot
# `nextbest ARGS` that reports its own peak memory (GiB) on its last line (as score_all.py).
MEASURED_CLI = ("import resource, sys\nfrom nextbest.cli import main\ncode = main(sys.argv[1:])\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)\n"
                "sys.exit(code)")


def ensure_world(root: Path, users: int, seed: int) -> dict[str, str]:
    """The small world of benchmarks/serve.py under ``root`` (built when absent)."""
    marker = root / "world.json"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        build_world(root, users, seed)
        marker.write_text(json.dumps({"users": users, "seed": seed,
                                      "seconds": round(time.perf_counter() - began, 1)}))
    return world_env(root)


def fresh_files(*paths: Path) -> None:
    """Delete SQLite files (with their WAL) and directories, for a fresh run."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def with_config(root: Path, changes: dict[str, Any]) -> None:
    """Merge ``changes`` (top-level sections) into ``root/nextbest.yaml``."""
    path = root / "nextbest.yaml"
    config = yaml.safe_load(path.read_text()) or {}
    config.update(changes)
    path.write_text(yaml.safe_dump(config))


class RssPoller:
    """The peak resident memory of a process tree, polled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def campaign_store_counts(path: Path) -> dict[str, Any]:
    """Events kept, outbox rows by status and suppression reason, of a campaign store."""
    conn = sqlite3.connect(path)
    try:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        by_status = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status"))
        reasons = dict(conn.execute(
            "SELECT reason, count(*) FROM outbox WHERE status = 'suppressed' GROUP BY reason"))
        by_campaign = dict(conn.execute("SELECT campaign, count(*) FROM outbox GROUP BY campaign"))
    finally:
        conn.close()
    return {"events": int(events), "outbox_rows": int(sum(by_status.values())),
            "outbox_by_status": by_status, "suppressed_by_reason": reasons,
            "outbox_by_campaign": by_campaign}


# -- 1. events in, triggers decided, outbox rows written ------------------------------------------

def events_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    env = ensure_world(root, args.base_users, args.seed)
    key = "nb_" + secrets.token_urlsafe(24)
    with_config(root, {"auth": {"enabled": True, "keys": [{
        "id": "bench", "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "scopes": ["platform", "operator"]}]}})
    data = root / "data"
    fresh_files(data / "campaigns.sqlite", data / "decisions.sqlite", data / "bandit")
    settings = load_settings(None, environ=env)
    proc, url = start_service(env, root, workers=1)
    out = root / "open_events.json"
    load_before = os.getloadavg()[0]
    try:
        cmd = [sys.executable, str(OPENLOOP), "--url", url, "--path", "/events", "--kind",
               "events", "--rate", str(args.rate), "--seconds", str(args.seconds),
               "--arrivals", "constant", "--warmup", str(args.warmup), "--users",
               str(args.pool), "--seed", str(args.seed), "--header",
               f"Authorization: Bearer {key}", "--out", str(out)]
        with RssPoller(proc.pid) as rss:
            run = subprocess.run(cmd, capture_output=True, text=True,
                                 timeout=args.seconds + 120)
        if run.returncode != 0:
            raise RuntimeError(f"the open-loop generator failed: {run.stderr or run.stdout}")
        result = json.loads(out.read_text())
        # The first request with a bad key must be refused: the run above went through auth.
        refused = subprocess.run(
            [sys.executable, "-c", "import httpx, sys; print(httpx.post(sys.argv[1], json={}, "
             "headers={'Authorization': 'Bearer nb_wrong'}).status_code)", f"{url}/events"],
            capture_output=True, text=True).stdout.strip()
    finally:
        stop_service(proc)
    kept = campaign_store_counts(Path(settings.paths.campaign_store))
    sent = result["scheduled"]
    lost = sent - kept["events"]
    report = {
        "benchmark": "campaign_events", "cores": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2),
        "world_users": args.base_users, "user_pool": args.pool, "workers": 1,
        "auth": f"API key (platform scope); a wrong key answered {refused}",
        "offered_rps": args.rate, "seconds": args.seconds, "arrivals": "constant",
        "generator": "benchmarks/openloop.py --kind events (its own process; latency from the "
                     "scheduled send time)",
        "events_sent": sent, "replies_ok": result["ok"], "errors": result["errors"],
        "events_accepted": result["events_accepted"], "events_kept": kept["events"],
        "events_lost": lost, "achieved_rps": result["achieved_rps"],
        "p50_ms": result["p50_ms"], "p95_ms": result["p95_ms"], "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"], "dispatch_lag_p99_ms": result["dispatch_lag_p99_ms"],
        "outbox_rows": kept["outbox_rows"], "messages_in_replies": result["messages_answered"],
        "outbox_by_status": kept["outbox_by_status"],
        "suppressed_by_reason": kept["suppressed_by_reason"],
        "peak_rss_mib_service": round(rss.peak / 2**20, 1),
        "goals": {"p99_lt_30ms": result["p99_ms"] is not None and result["p99_ms"] < P99_GOAL_MS,
                  "zero_lost": lost == 0 and result["events_accepted"] == sent
                  and result["errors"] == 0,
                  "outbox_rows_as_replied": kept["outbox_rows"] == result["messages_answered"]},
    }
    report["goal_met"] = all(report["goals"].values())
    return report


# -- 2. a scheduled campaign over the online store ------------------------------------------------

def big_env(root: Path, env: dict[str, str], condition: str) -> dict[str, str]:
    """The environment of the big store: its own store, campaign store, decision log, bandit
    and config (the base world's models)."""
    big = root / "big"
    big.mkdir(exist_ok=True)
    base = yaml.safe_load((root / "nextbest.yaml").read_text()) or {}
    settings = load_settings(None, environ=env)
    campaigns = [c.model_dump(exclude_defaults=True) for c in settings.campaigns.campaigns]
    campaigns.append({"name": CAMPAIGN, "kind": "scheduled", "schedule": "0 10 * * 1",
                      "condition": condition, "holdout_share": 0.1, "cooldown_hours": 144,
                      "description": "win_back widened for the benchmark"})
    config = {k: v for k, v in base.items() if k != "auth"} | {"campaigns": {
        "campaigns": campaigns}}
    (big / "nextbest.yaml").write_text(yaml.safe_dump(config))
    return env | {"NEXTBEST_CONFIG": str(big / "nextbest.yaml"),
                  "NEXTBEST__PATHS__STORE_PATH": str(big / "online_store.sqlite"),
                  "NEXTBEST__PATHS__CAMPAIGN_STORE": str(big / "campaigns.sqlite"),
                  "NEXTBEST__PATHS__DECISION_LOG": str(big / "decisions.sqlite"),
                  "NEXTBEST__PATHS__BANDIT_DIR": str(big / "bandit")}


def fill_store(env: dict[str, str], users: int) -> dict[str, Any]:
    """``users`` users in the big store: the base world's features and preferences, each
    base user repeated under new ids (``b0000000``...), loaded as ``features build`` does."""
    settings = load_settings(None, environ=env)
    marker = Path(settings.paths.store_path).with_suffix(".json")
    if marker.exists() and json.loads(marker.read_text())["users"] == users:
        return json.loads(marker.read_text())
    fresh_files(Path(settings.paths.store_path))
    as_of = available_as_of(settings)[-1]
    features = load_features(settings, as_of)
    prefs = pd.read_parquet(raw_path(Path(settings.paths.raw_dir), "preferences"))
    prefs = features[["user_id"]].merge(prefs, on="user_id", how="left")
    began = time.perf_counter()
    base = len(features)
    with open_store(settings) as store:
        for start in range(0, users, base):
            n = min(base, users - start)
            ids = [f"b{start + i:07d}" for i in range(n)]
            part = prefs.iloc[:n].assign(user_id=ids).dropna(subset=["updated_ts"])
            store.load_preferences(part)
            store.load_records(features.iloc[:n].assign(user_id=ids), as_of)
        stored = int(store.meta()["users"])
    filled = {"users": stored, "base_users": base, "as_of": as_of.isoformat(),
              "seconds": round(time.perf_counter() - began, 1),
              "store_mib": round(Path(settings.paths.store_path).stat().st_size / 2**20, 1)}
    marker.write_text(json.dumps(filled))
    return filled


def scan_seconds(env: dict[str, str]) -> tuple[float, int]:
    """The reference: a scan of the store alone, every record parsed, in the chunks and the
    way the audience reads them (``OnlineStore.iter_frames``)."""
    settings = load_settings(None, environ=env)
    began, n = time.perf_counter(), 0
    with open_store(settings) as store:
        for frame in store.iter_frames(AUDIENCE_CHUNK):
            n += len(frame)
    return time.perf_counter() - began, n


def run_cli(env: dict[str, str], cwd: Path, args: list[str]) -> dict[str, Any]:
    """``nextbest ARGS`` in its own process: wall seconds, its own peak RSS and the polled
    one (GiB), and its JSON output."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", MEASURED_CLI, *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RssPoller(proc.pid, interval=0.5) as rss:
        stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"nextbest {' '.join(args)} failed:\n{stdout}\n{stderr}")
    *said, child_rss = stdout.strip().splitlines()
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(float(child_rss), 3),
            "peak_rss_gib_polled": round(rss.peak / 2**30, 3),
            "report": json.loads("\n".join(said))}


def scheduled_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    env = big_env(root, ensure_world(root, args.base_users, args.seed), args.condition)
    filled = fill_store(env, args.users)
    settings = load_settings(None, environ=env)
    big = root / "big"
    fresh_files(Path(settings.paths.campaign_store), Path(settings.paths.decision_log),
                Path(settings.paths.bandit_dir))
    load_before = os.getloadavg()[0]
    scan, scanned = scan_seconds(env)
    dry = run_cli(env, big, ["campaigns", "run", CAMPAIGN, "--now", args.now, "--dry-run",
                             "--json"]) if args.dry_run_reference else None
    run = run_cli(env, big, ["campaigns", "run", CAMPAIGN, "--now", args.now, "--json"])
    kept = campaign_store_counts(Path(settings.paths.campaign_store))
    conn = sqlite3.connect(settings.paths.decision_log)
    decisions = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
    conn.close()
    report = run["report"]
    seconds = run["seconds"]
    peak = max(run["peak_rss_gib"], run["peak_rss_gib_polled"])
    result = {
        "benchmark": "campaign_scheduled", "cores": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2),
        "store": {"backend": settings.store.backend, **filled, "scanned": scanned},
        "campaign": CAMPAIGN, "condition": args.condition, "now": args.now,
        "command": f"nextbest campaigns run {CAMPAIGN} --now {args.now} --json (own process)",
        "seconds": seconds, "users_per_second": round(filled["users"] / seconds),
        "audience": report["audience"], "audience_share": round(
            report["audience"] / filled["users"], 3),
        "holdout": report["holdout"], "messages": report["messages"],
        "suppressed": report["suppressed"], "already": report["already"],
        "decisions_logged": int(decisions), "outbox_rows": kept["outbox_rows"],
        "outbox_by_status": kept["outbox_by_status"],
        "peak_rss_gib": run["peak_rss_gib"], "peak_rss_gib_polled": run["peak_rss_gib_polled"],
        "reference_scan_seconds": round(scan, 2),
        "reference_dry_run_seconds": dry["seconds"] if dry else None,
        "ratio_to_scan": round(seconds / scan, 2),
        "checks": {
            "one_outbox_row_per_audience_member": kept["outbox_rows"] == report["audience"],
            "holdout_rows": kept["suppressed_by_reason"].get("holdout", 0) == report["holdout"],
            **({"dry_run_same_audience": dry["report"]["audience"] == report["audience"]}
               if dry else {})},
        "goals": {"under_5_min": seconds < GOAL_SECONDS, "under_4_gib": peak < GOAL_GIB},
        "peak_rss_gib_this_process": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    result["goal_met"] = all(result["goals"].values()) and all(result["checks"].values())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", action="store_true", help="POST /events at a fixed rate")
    parser.add_argument("--scheduled", action="store_true",
                        help="a scheduled campaign over --users users")
    parser.add_argument("--world", type=Path, default=None,
                        help="keep the world (and the filled store) here between runs")
    parser.add_argument("--base-users", type=int, default=20_000,
                        help="users of the synthetic world (models, features, the service)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds at the start left out of the latencies")
    parser.add_argument("--pool", type=int, default=300,
                        help="users the events come from (a small pool fires browse_no_buy)")
    parser.add_argument("--users", type=int, default=1_000_000, help="users in the big store")
    parser.add_argument("--condition", default="tier in ['dormant', 'churned'] and "
                        "churn_probability >= 0.5", help="the audience of the campaign")
    parser.add_argument("--now", default=NOW)
    parser.add_argument("--dry-run-reference", action="store_true",
                        help="also time `campaigns run --dry-run` (audience and holdout only)")
    args = parser.parse_args()
    if not (args.events or args.scheduled):
        parser.error("say --events, --scheduled or both")
    with tempfile.TemporaryDirectory(prefix="nextbest-campaigns-") as tmp:
        root = args.world or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for wanted, run, name in ((args.events, events_benchmark, "campaign_events.json"),
                                  (args.scheduled, scheduled_benchmark,
                                   "campaign_scheduled.json")):
            if not wanted:
                continue
            result = run(args, root)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
