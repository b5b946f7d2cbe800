"""Benchmark of the real service: throughput and latency of /score, /next_best_action and
/feedback, each as a ratio to the no-op endpoint of the same service in the same run.

Starts ``nextbest serve`` (BentoML, ``--workers``, default 1) over a small synthetic world
in a temporary directory, then drives it from a second process, ``wrk`` (``apt-get install
wrk``), over loopback with ``--connections`` concurrent clients for ``--seconds`` per
endpoint (bounded). The /feedback run replays the event ids the /next_best_action run
produced, in order (cycling, so as duplicates, only if it outlasts them), so it measures
accepted feedback; the learning rate is rewards learned per second during that run. The
no-op endpoint and the three endpoints are measured in ``--rounds`` interleaved rounds.

    .venv/bin/python benchmarks/serve.py [--users 2000] [--seconds 3] [--rounds 5] [--connections 50]

Writes benchmarks/results/serve.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml
from pydantic import BaseModel

from nextbest.config import path_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serve.json"
CONTEXT = ('"context":{"channel":"web","page":"item","item_id":"i1","item_price":120.0,'
           '"category":"bags","hour":14}')

# wrk scripts. ``%USERS%`` is replaced by the number of users; args[1] is a file path.
LUA_COMMON = """
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
"""
LUA_NOOP = LUA_COMMON + """
request = function()
  n = n + 1
  return wrk.format(nil, "/noop", nil, string.format('{"user_id":"u%06d"}', n % %USERS%))
end
"""
LUA_SCORE = LUA_COMMON + """
request = function()
  n = n + 1
  return wrk.format(nil, "/score", nil, string.format('{"user_id":"u%06d"}', n % %USERS%))
end
"""
LUA_DECIDE = LUA_COMMON + """
local out = nil
init = function(args) out = io.open(args[1], "w") end
request = function()
  n = n + 1
  return wrk.format(nil, "/next_best_action", nil,
    string.format('{"user_id":"u%06d",%CONTEXT%}', n % %USERS%))
end
response = function(status, headers, body)
  local id = string.match(body, '"event_id":"([^"]+)"')
  if id then out:write(id, "\\n") end
  if n % 500 == 0 then out:flush() end
end
"""
LUA_FEEDBACK = LUA_COMMON + """
local ids = {}
init = function(args) for line in io.lines(args[1]) do ids[#ids + 1] = line end end
request = function()
  n = n + 1
  local id = ids[(n - 1) % #ids + 1]
  local converted = (n % 4 == 0) and "true" or "false"
  local revenue = (n % 4 == 0) and "80.0" or "0"
  return wrk.format(nil, "/feedback", nil, string.format(
    '{"event_id":"%s","converted":%s,"revenue":%s}', id, converted, revenue))
end
"""


class WrkResult(BaseModel):
    """One wrk run against one endpoint."""

    endpoint: str
    requests: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    """A wrk duration (``850.00us``, ``1.20ms``, ``2.01s``) in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(endpoint: str, output: str) -> WrkResult:
    """The numbers of a ``wrk --latency`` report."""
    requests, seconds = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output).group(1, 2)
    socket_errors = sum(int(x) for x in re.findall(
        r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        endpoint=endpoint, requests=int(requests), seconds=float(seconds),
        throughput_rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        p50_ms=_ms(re.search(r"^[ \t]*50%[ \t]+(\S+)", output, re.M).group(1)),
        p99_ms=_ms(re.search(r"^[ \t]*99%[ \t]+(\S+)", output, re.M).group(1)),
        errors=socket_errors + (int(non_2xx.group(1)) if non_2xx else 0))


def run_wrk(url: str, endpoint: str, script: str, args: argparse.Namespace,
            work: Path, script_arg: Path | None = None) -> WrkResult:
    """Drive ``endpoint`` with the wrk ``script`` for ``args.seconds`` at
    ``args.connections`` clients; ``script_arg`` is handed to the script's ``init``."""
    path = work / f"{endpoint.strip('/').replace('/', '_')}.lua"
    path.write_text(script.replace("%USERS%", str(args.users)).replace("%CONTEXT%", CONTEXT))
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
           "--timeout", "10s", "-s", str(path), url]
    if script_arg is not None:
        cmd += ["--", str(script_arg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
    return parse_wrk(endpoint, proc.stdout)


def world_env(root: Path) -> dict[str, str]:
    """This environment with every nextbest path moved under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST")}
    return env | path_overrides(root) | {
        "NEXTBEST_CONFIG": str(root / "nextbest.yaml"),
        "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
        "NEXTBEST__SERVING__BENCHMARK_NOOP": "true",  # the reference endpoint /noop
    }


def nextbest(args: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run one ``nextbest`` command; raise with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nextbest {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


def build_world(root: Path, users: int, seed: int) -> dict[str, str]:
    """Synthetic users, their features in the online store, both champion models."""
    config = {"training": {"num_boost_round": 50, "early_stopping_rounds": 10}}
    (root / "nextbest.yaml").write_text(yaml.safe_dump(config))
    env = world_env(root)
    data = root / "data"
    nextbest(["data", "synth", "--users", str(users), "--days", "400", "--seed", str(seed),
              "--out", str(data / "raw"), "--latent-out", str(data / "latent")], env, root)
    code = "from features.build import build_features as b; from nextbest.config import " \
           "load_settings as s; b(s(), progress=False)"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True)
    for model in ("churn", "propensity"):
        nextbest(["train", model, "--cutoffs", "2"], env, root)
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(env: dict[str, str], root: Path,
                  workers: int) -> tuple[subprocess.Popen, str]:
    """``nextbest serve`` on a free port, once ``/readyz`` answers 200."""
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "nextbest.cli", "serve", "--port",
                             str(port), "--workers", str(workers)], env=env, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited; see {root / 'server.log'}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("the service did not become ready in 120 s")


def tree_rss_mb(proc: subprocess.Popen) -> float:
    """Resident memory of the service's whole process tree, in MB."""
    try:
        root = psutil.Process(proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM the service (it checkpoints and exits); SIGKILL its tree if it hangs."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=30)
    for p in alive:
        p.kill()


def learned(url: str) -> int:
    """Rewards the service's model has learned so far."""
    return int(httpx.get(f"{url}/bandit/stats", timeout=30).json()["rewards_learned"])


def combine(endpoint: str, runs: list[WrkResult]) -> WrkResult:
    """Several rounds of one endpoint as one result: total requests over total time; the
    median p50 and the worst p99 of the rounds."""
    seconds = sum(r.seconds for r in runs)
    p50s = sorted(r.p50_ms for r in runs)
    return WrkResult(endpoint=endpoint, requests=sum(r.requests for r in runs), seconds=seconds,
                     throughput_rps=sum(r.requests for r in runs) / seconds,
                     p50_ms=p50s[len(p50s) // 2], p99_ms=max(r.p99_ms for r in runs),
                     errors=sum(r.errors for r in runs))


def measure(url: str, args: argparse.Namespace, work: Path,
            proc: subprocess.Popen) -> dict[str, object]:
    """``args.rounds`` rounds of no-op, /score, /next_best_action, /feedback: interleaving
    the reference with the endpoints keeps a change in machine load from biasing a ratio."""
    names = ("noop", "score", "next_best_action", "feedback")
    runs: dict[str, list[WrkResult]] = {name: [] for name in names}
    peak, gained, feedback_seconds = 0.0, 0, 0.0
    for round_no in range(args.rounds):
        ids = work / f"event_ids_{round_no}.txt"
        plan: list[tuple[str, str, str, Path | None]] = [
            ("noop", "/noop", LUA_NOOP, None), ("score", "/score", LUA_SCORE, None),
            ("next_best_action", "/next_best_action", LUA_DECIDE, ids),
            ("feedback", "/feedback", LUA_FEEDBACK, ids)]
        for name, endpoint, script, arg in plan:
            before = learned(url) if name == "feedback" else 0
            result = run_wrk(url, endpoint, script, args, work, arg)
            runs[name].append(result)
            peak = max(peak, tree_rss_mb(proc))
            if name == "feedback":
                # Inline learning is immediate; a learner process publishes within
                # checkpoint_seconds (+ reload_seconds for the worker that answers).
                time.sleep(1.0 if args.workers == 1 else 5.0)
                gained += learned(url) - before
                feedback_seconds += result.seconds
            print(f"round {round_no} {name:>17}: {result.throughput_rps:7.0f} req/s  "
                  f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                  f"errors {result.errors}", file=sys.stderr)
    total = {name: combine(runs[name][0].endpoint, runs[name]) for name in names}
    noop_rps = total["noop"].throughput_rps
    endpoints = {name: total[name].model_dump()
                 | {"ratio_to_noop": total[name].throughput_rps / noop_rps}
                 for name in names[1:]}
    return {"noop": total["noop"].model_dump(), "endpoints": endpoints,
            "rounds": {name: [r.model_dump() for r in runs[name]] for name in names},
            "feedback_learning": {"rewards_learned": gained,
                                  "rewards_learned_per_s": gained / feedback_seconds},
            "errors": sum(r.errors for r in total.values()), "peak_rss_mb": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3, help="per endpoint and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="service worker processes")
    parser.add_argument("--world", type=Path, default=None,
                        help="reuse a world directory built by an earlier run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 4
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nextbest-bench-") as tmp:
        root = args.world or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.world and (root / "nextbest.yaml").exists():
            env = world_env(root)
        else:
            env = build_world(root, args.users, args.seed)
        # A fresh decision log and bandit for every run.
        for name in ("decisions.sqlite", "decisions.sqlite-wal", "decisions.sqlite-shm"):
            (root / "data" / name).unlink(missing_ok=True)
        shutil.rmtree(root / "data" / "bandit", ignore_errors=True)
        world_seconds = time.perf_counter() - started
        proc, url = start_service(env, root, args.workers)
        try:
            result = measure(url, args, root, proc)
        finally:
            stop_service(proc)
    goals = result["endpoints"]
    report = {
        "benchmark": "serve", "time_s": round(time.perf_counter() - started, 1),
        "world_build_s": round(world_seconds, 1), "users": args.users,
        "connections": args.connections, "seconds_per_endpoint_round": args.seconds,
        "rounds": args.rounds,
        "workers": args.workers, "cpu_count": os.cpu_count(), **result,
        "goals": {
            "score_ratio_ge_0.8": goals["score"]["ratio_to_noop"] >= 0.8,
            "next_best_action_ratio_ge_0.7": goals["next_best_action"]["ratio_to_noop"] >= 0.7,
            "p99_lt_25ms": all(goals[n]["p99_ms"] < 25 for n in goals),
            "zero_errors": result["errors"] == 0,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
