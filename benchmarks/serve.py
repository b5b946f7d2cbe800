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

``--open-loop``: latency at fixed offered rates instead of at saturation. The no-op's
maximum throughput is measured first (wrk, as above, ``--rounds`` rounds, the median); then
the open-loop generator (benchmarks/openloop.py, its own process: requests sent on a
schedule computed in advance, latency from the scheduled send time) drives the no-op,
/score, /next_best_action and /feedback at each ``--fractions`` of that maximum for
``--open-seconds`` each (the fractions interleaved, so a change in machine load does not
bias one end of the curve; /feedback rewards the decisions of the /next_best_action run at
the same rate; each run starts once the service has drained what the run before left
queued, the no-op answered within 20 ms three times in a row, ``drained_before_s``). Then
a fresh service measures the longest event-loop stall
(``nextbest_event_loop_max_stall_seconds``) under decisions alone and then under feedback,
where the learner checkpoints every ``checkpoint_every`` rewards, at half the no-op's
maximum, or, if /next_best_action or /feedback did not carry that rate in the sweep (median
p50 of 10 ms or more: requests queue, every turn of the loop is long, and a stall measured
there is the overload, not a checkpoint), at the highest swept rate below it that both
carried (``event_loop_stall.rate_rps``, ``at_half_noop_max``). Writes
benchmarks/results/serve_latency.json and serve_latency.png (p50 and p99 against the
offered rate per endpoint; with ``--repeats`` N the sweep runs N times, interleaved, and
each point is the median). Goals: at half the no-op's maximum, p99 under
25 ms for /score and /next_best_action; the longest stall during checkpoints under 20 ms.

This host is shared: every run also records the 1-minute load average before it and the
share of the run the service's threads spent ready to run but waiting for a CPU
(``service_cpu_wait_share``, from Linux schedstat); the stall is reported whole (``all``)
and without the loop thread's own waits for a CPU (``own``). Every run also records the
event loop's CPU per answered request and the share of the run it was busy
(``loop_cpu_ms_per_request``, ``loop_busy_share``; ``loop_at_half_noop_max`` per endpoint):
one loop carries at most 1,000 / ``loop_cpu_ms_per_request`` requests/s, so an endpoint
that costs the loop twice the no-op's CPU is saturated at half the no-op's maximum. A busy
share above 1.0 means the rate offered more than one loop carries: the backlog was answered
after the run's seconds, and the share says by how much.

    .venv/bin/python benchmarks/serve.py --open-loop [--open-seconds 5] [--repeats 3]

The stall phase prints and records the longest stall during checkpoints
(``longest_stall_ms_during_checkpoints``: the service's recent-stall gauge polled every
0.5 s through the feedback phase) and the collector's work per generation. ``--fixed-rate R --label
NAME``: only the no-op, /next_best_action, /feedback, /score and the no-op again at R
requests/s on a fresh service, with the service's CPU time per request; each run is appended
to benchmarks/results/serve_fixed_rate.json, to compare code versions back to back on a
host too busy for absolute numbers (run the old version with ``PYTHONPATH`` at its checkout).
``--stall-rate R``: only the stall phase at R requests/s on a fresh service, written to
benchmarks/results/serve_stall.json: the checkpoint stall at a rate the endpoints carry.
(In either run the feedback phase starts once the decisions phase's stalls have aged out
of the recent-stall gauge.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from pydantic import BaseModel

from nextbest.config import load_settings, path_overrides  # noqa: E402
from serving.loopwatch import schedstat_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serve.json"
LATENCY_RESULTS = REPO / "benchmarks" / "results" / "serve_latency.json"
LATENCY_PLOT = REPO / "benchmarks" / "results" / "serve_latency.png"
OPENLOOP = REPO / "benchmarks" / "openloop.py"
FIXED_RATE_RESULTS = REPO / "benchmarks" / "results" / "serve_fixed_rate.json"
STALL_RESULTS = REPO / "benchmarks" / "results" / "serve_stall.json"
# (name, path, generator body kind) of the open-loop runs, in the order of each step.
OPEN_LOOP_ENDPOINTS = (("noop", "/noop", "noop"), ("score", "/score", "score"),
                       ("next_best_action", "/next_best_action", "decide"),
                       ("feedback", "/feedback", "feedback"))
P99_GOAL_MS, STALL_GOAL_MS = 25.0, 20.0
CARRIED_P50_MS = 10.0  # an endpoint's median latency under this: it carries the rate
CONTEXT = ('"context":{"channel":"web","page":"item","item_id":"i1","item_price":120.0,'
           '"category":"bags","hour":14}')

# The run's API key (platform and operator scopes): every request carries it, as a
# platform's would; only its hash is configured (world_env).
KEY = "nb_" + secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {KEY}"}
# wrk scripts. ``%USERS%`` is replaced by the number of users; args[1] is a file path.
LUA_COMMON = """
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %KEY%"
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
    path.write_text(script.replace("%USERS%", str(args.users)).replace("%CONTEXT%", CONTEXT)
                    .replace("%KEY%", KEY))
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
           "--timeout", "10s", "-s", str(path), url]
    if script_arg is not None:
        cmd += ["--", str(script_arg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
    result = parse_wrk(endpoint, proc.stdout)
    if result.errors > result.requests // 2:  # e.g. 401s: a benchmark of refusals is no benchmark
        raise RuntimeError(f"{endpoint}: {result.errors} of {result.requests} requests failed")
    return result


def world_env(root: Path) -> dict[str, str]:
    """This environment with every nextbest path moved under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST")}
    return env | path_overrides(root) | {
        "NEXTBEST_CONFIG": str(root / "nextbest.yaml"),
        "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
        "NEXTBEST__SERVING__BENCHMARK_NOOP": "true",  # the reference endpoint /noop
        "NEXTBEST__AUTH__KEYS": json.dumps([{
            "id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
            "scopes": ["platform", "operator"]}]),
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
    stop_service(proc)
    raise RuntimeError(f"the service did not become ready in 120 s; see {root / 'server.log'}")


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
    return int(httpx.get(f"{url}/bandit/stats", timeout=30, headers=AUTH)
               .json()["rewards_learned"])


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


def run_open_loop(url: str, path: str, kind: str, rate: float, seconds: float,
                  args: argparse.Namespace, work: Path, seed: int, *,
                  ids_in: Path | None = None, ids_out: Path | None = None) -> dict[str, Any]:
    """One run of the open-loop generator (its own process) at ``rate`` requests/s."""
    out = work / f"open_{kind}_{seed}_{rate:.0f}.json"
    cmd = [sys.executable, str(OPENLOOP), "--url", url, "--path", path, "--kind", kind,
           "--rate", f"{rate:.3f}", "--seconds", str(seconds), "--users", str(args.users),
           "--seed", str(seed), "--arrivals", args.arrivals, "--out", str(out),
           "--header", f"Authorization: Bearer {KEY}"]
    if ids_in is not None:
        cmd += ["--event-ids", str(ids_in)]
    if ids_out is not None:
        cmd += ["--event-ids-out", str(ids_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"the open-loop generator failed: {proc.stderr or proc.stdout}")
    return json.loads(out.read_text())


def tree_loop_times(proc: subprocess.Popen, decider: bool = False) -> tuple[float, float]:
    """Seconds the main threads (the event loops) of the service's processes have run on a
    CPU, and have spent ready to run but waiting for one (Linux schedstat): what the
    requests cost the loop, and how much other work on the host held it back. Short-lived
    threads are left out: their counts leave with them. ``decider``: the decision process's
    main thread instead (serving.decision_process), which the loops' figures leave out."""
    ran = waited = 0.0
    try:
        processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for process in processes:
        try:
            if ("serving.decider" in process.cmdline()) != decider:
                continue
            on_cpu, waiting = schedstat_seconds(
                Path(f"/proc/{process.pid}/task/{process.pid}/schedstat").read_text())
            ran += on_cpu
            waited += waiting
        except (OSError, ValueError, psutil.Error):
            continue
    return ran, waited


def tree_cpu_wait(proc: subprocess.Popen) -> float:
    """Seconds the service's event loops have waited for a CPU (:func:`tree_loop_times`)."""
    return tree_loop_times(proc)[1]


def loop_stall_ms(url: str) -> dict[str, float]:
    """The service's longest event-loop stall so far, in ms (its Prometheus gauge): ``all``,
    ``own`` (less the time its thread waited for a CPU other processes held), ``blocked``
    (the longest part of one its thread spent on no CPU: the disk, a lock) and ``gc`` (the
    garbage collector's longest pause)."""
    text = httpx.get(f"{url}/metrics", timeout=30, headers=AUTH).text
    found = dict(re.findall(r'^nextbest_event_loop_max_stall_seconds\{cause="(\w+)"\} (\S+)$',
                            text, re.M))
    if set(found) != {"all", "own", "blocked", "gc"}:
        raise RuntimeError("/metrics lacks nextbest_event_loop_max_stall_seconds{cause}")
    return {cause: round(float(value) * 1e3, 3) for cause, value in found.items()}


def recent_stall_ms(url: str) -> dict[str, float]:
    """The service's longest event-loop stall of the last 2-4 s, in ms (``all``, ``own``,
    ``blocked``)."""
    text = httpx.get(f"{url}/metrics", timeout=30, headers=AUTH).text
    found = dict(re.findall(
        r'^nextbest_event_loop_recent_max_stall_seconds\{cause="(\w+)"\} (\S+)$', text, re.M))
    return {cause: round(float(value) * 1e3, 3) for cause, value in found.items()}


def drain(url: str, limit_ms: float = 20.0, seconds: float = 30.0) -> float:
    """Wait (at most ``seconds``) until the service answers the no-op three times in a row
    within ``limit_ms``: the backlog an overloaded run left is gone, so it is not charged
    to the next run. The seconds waited."""
    began = deadline = time.monotonic()
    deadline += seconds
    quick = 0
    with httpx.Client(headers=AUTH, timeout=seconds) as client:
        while quick < 3 and time.monotonic() < deadline:
            sent = time.perf_counter()
            client.post(f"{url}/noop", json={"user_id": "drain"})
            quick = quick + 1 if (time.perf_counter() - sent) * 1e3 < limit_ms else 0
            time.sleep(0.05)
    return round(time.monotonic() - began, 2)


def settle_recent_stall(url: str, limit_ms: float = 20.0, seconds: float = 15.0
                        ) -> dict[str, float]:
    """Wait (at most ``seconds``) until the recent longest stall is below ``limit_ms``, and
    at least one whole recent window (4 s): what it reads then."""
    time.sleep(4.5)
    deadline = time.monotonic() + seconds
    recent = recent_stall_ms(url)
    while recent.get("own", 0.0) >= limit_ms and time.monotonic() < deadline:
        time.sleep(0.5)
        recent = recent_stall_ms(url)
    return recent


class StallPoller:
    """Polls the recent longest stall every ``every`` seconds while a phase runs (a thread),
    keeping the longest seen: the longest stall of exactly that phase."""

    def __init__(self, url: str, every: float = 0.5):
        import threading

        self.url, self.every = url, every
        self.longest = {"all": 0.0, "own": 0.0, "blocked": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> StallPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.every)  # the last stretch, too
        self._stop.set()
        self._thread.join()
        self._read()

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._read()

    def _read(self) -> None:
        try:
            recent = recent_stall_ms(self.url)
        except httpx.HTTPError:
            return
        for cause in self.longest:
            self.longest[cause] = max(self.longest[cause], recent.get(cause, 0.0))


def gc_stats(url: str) -> dict[str, dict[str, float]]:
    """The service's garbage collections per generation so far and the longest of each
    (ms), from its ``nextbest_gc_*`` gauges."""
    text = httpx.get(f"{url}/metrics", timeout=30, headers=AUTH).text
    counts = dict(re.findall(r'^nextbest_gc_collections\{generation="(\d)"\} (\S+)$', text, re.M))
    longest = dict(re.findall(r'^nextbest_gc_longest_pause_seconds\{generation="(\d)"\} (\S+)$',
                              text, re.M))
    return {g: {"collections": int(float(counts[g])),
                "longest_ms": round(float(longest.get(g, 0.0)) * 1e3, 3)}
            for g in sorted(counts)}


def noop_maximum(url: str, args: argparse.Namespace, work: Path) -> tuple[float, list[WrkResult]]:
    """The no-op's throughput at saturation: the median of ``args.rounds`` wrk runs."""
    runs = [run_wrk(url, "/noop", LUA_NOOP, args, work) for _ in range(args.rounds)]
    for run in runs:
        print(f"no-op at saturation: {run.throughput_rps:7.0f} req/s", file=sys.stderr)
    return statistics.median(r.throughput_rps for r in runs), runs


def sweep(url: str, proc: subprocess.Popen, args: argparse.Namespace, work: Path,
          noop_max: float) -> dict[str, list[dict[str, Any]]]:
    """Every endpoint at every fraction of the no-op's maximum, open loop, each run once
    the service has drained what the run before left queued (:func:`drain`)."""
    curves: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in OPEN_LOOP_ENDPOINTS}
    steps = [(repeat, fraction) for repeat in range(args.repeats) for fraction in args.fractions]
    for step, (repeat, fraction) in enumerate(steps):
        rate = fraction * noop_max
        ids = work / f"open_event_ids_{step}.txt"
        for name, path, kind in OPEN_LOOP_ENDPOINTS:
            drained = drain(url)
            load, (ran, waited) = os.getloadavg()[0], tree_loop_times(proc)
            decided = tree_loop_times(proc, decider=True)[0]
            result = run_open_loop(url, path, kind, rate, args.open_seconds, args, work,
                                   seed=step + 1, ids_in=ids if kind == "feedback" else None,
                                   ids_out=ids if kind == "decide" else None)
            ran_after, waited_after = tree_loop_times(proc)
            decided = tree_loop_times(proc, decider=True)[0] - decided
            result |= {"fraction_of_noop_max": fraction, "repeat": repeat,
                       "drained_before_s": drained,
                       "max_stall_ms_so_far": loop_stall_ms(url),
                       "host_load_1m_before": round(load, 2),
                       # Seconds the service waited for a CPU per second of the run.
                       "service_cpu_wait_share": round(
                           (waited_after - waited) / args.open_seconds, 3),
                       # The event loop's CPU per answered request, and per second of the
                       # run: how near its capacity (1.0) the loop ran at this rate.
                       "loop_cpu_ms_per_request": round(
                           (ran_after - ran) * 1e3 / max(result["completed"], 1), 3),
                       "loop_busy_share": round((ran_after - ran) / args.open_seconds, 3)}
            if args.decision_process:  # its main thread, beside the worker's loop
                result |= {"decider_cpu_ms_per_request": round(
                               decided * 1e3 / max(result["completed"], 1), 3),
                           "decider_busy_share": round(decided / args.open_seconds, 3)}
            curves[name].append(result)
            print(f"{fraction:4.0%} {rate:6.0f} req/s {name:>17}: p50 {result['p50_ms']:8.2f} "
                  f"ms  p99 {result['p99_ms']:8.2f} ms  errors {result['errors']}  dispatch "
                  f"lag p99 {result['dispatch_lag_p99_ms']:.2f} ms  CPU wait "
                  f"{result['service_cpu_wait_share']:.2f}  loop "
                  f"{result['loop_cpu_ms_per_request']:.3f} ms/request, busy "
                  f"{result['loop_busy_share']:.2f}"
                  + (f"  decider {result['decider_cpu_ms_per_request']:.3f} ms/request, busy "
                     f"{result['decider_busy_share']:.2f}" if args.decision_process else ""),
                  file=sys.stderr)
    return curves


def stall_phase(url: str, proc: subprocess.Popen, args: argparse.Namespace, work: Path,
                rate: float, every: int) -> dict[str, Any]:
    """On a fresh service: the longest event-loop stall after start-up, then under
    decisions alone, then under feedback (which the inline learner learns, checkpointing
    every ``checkpoint_every`` rewards), each at ``rate`` requests/s."""
    ids = work / "stall_event_ids.txt"
    waited, load = tree_cpu_wait(proc), os.getloadavg()[0]
    idle = loop_stall_ms(url)
    decide = run_open_loop(url, "/next_best_action", "decide", rate, args.stall_seconds, args,
                           work, seed=101, ids_out=ids)
    after_decisions = loop_stall_ms(url)
    # The recent-stall gauge covers the last 2-4 s: let the decisions phase's stalls (and
    # any backlog it left) age out of it, or the feedback phase would be charged with them.
    settled = settle_recent_stall(url)
    before = learned(url)
    # The feedback phase is where the checkpoints are: its longest stall, polled from the
    # service's recent-stall gauge while it runs.
    with StallPoller(url) as poller:
        feedback = run_open_loop(url, "/feedback", "feedback", rate, args.stall_seconds,
                                 args, work, seed=102, ids_in=ids)
    time.sleep(1.0)
    gained = learned(url) - before
    after_feedback = loop_stall_ms(url)
    during = poller.longest
    print(f"longest event-loop stall during checkpoints (the feedback phase): "
          f"{during['own']:.1f} ms own, {during['all']:.1f} ms with waits for a CPU, "
          f"{during['blocked']:.1f} ms of it blocked on no CPU (disk, a lock; at least, and "
          f"at most 5 ms more); "
          f"{gained // every} checkpoints", file=sys.stderr)
    return {
        "longest_stall_ms_during_checkpoints": during,
        "gc_after_feedback": gc_stats(url),
        "rate_rps": round(rate, 1), "seconds_per_phase": args.stall_seconds,
        "max_stall_ms_after_start": idle, "max_stall_ms_after_decisions": after_decisions,
        "max_stall_ms_after_feedback": after_feedback,
        "recent_stall_ms_before_feedback": settled,
        "feedback_raised_the_own_max": after_feedback["own"] > after_decisions["own"],
        "rewards_learned": gained, "checkpoint_every": every,
        "checkpoints_written": gained // every,
        "decisions_p99_ms": decide["p99_ms"], "feedback_p99_ms": feedback["p99_ms"],
        "errors": decide["errors"] + feedback["errors"],
        "host_load_1m_before": round(load, 2),
        "service_cpu_wait_share": round((tree_cpu_wait(proc) - waited)
                                        / (2 * args.stall_seconds + 1), 3),
    }


def plot_latency(curves: dict[str, list[dict[str, Any]]], noop_max: float, path: Path) -> None:
    """p50 and p99 against the offered rate, one line per endpoint, the goal marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for name, runs in curves.items():
            ax.plot([r["offered_rps"] for r in runs], [r[key] for r in runs], marker="o",
                    label="/noop" if name == "noop" else f"/{name}")
        ax.axhline(P99_GOAL_MS, color="grey", linestyle="--", linewidth=1)
        ax.axvline(noop_max / 2, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (requests/s, open loop)")
        ax.set_title(f"{key[:3]} latency (dashed: {P99_GOAL_MS:g} ms; dotted: half the "
                     f"no-op's max {noop_max:.0f}/s)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms from the scheduled send time")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def at_fraction(runs: list[dict[str, Any]], fraction: float) -> dict[str, Any]:
    """The point whose offered rate is the closest to ``fraction`` of the no-op's maximum."""
    return min(runs, key=lambda r: abs(r["fraction_of_noop_max"] - fraction))


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per offered rate: the median of each number over the repeats."""
    points = []
    for fraction in sorted({r["fraction_of_noop_max"] for r in runs}):
        same = [r for r in runs if r["fraction_of_noop_max"] == fraction]
        point = {"fraction_of_noop_max": fraction, "repeats": len(same)}
        for key in ("offered_rps", "p50_ms", "p99_ms", "dispatch_lag_p99_ms",
                    "host_load_1m_before", "service_cpu_wait_share",
                    "loop_cpu_ms_per_request", "loop_busy_share",
                    "decider_cpu_ms_per_request", "decider_busy_share"):
            values = [r[key] for r in same if r.get(key) is not None]
            point[key] = round(statistics.median(values), 3) if values else None
        point["errors"] = sum(r["errors"] for r in same)
        points.append(point)
    return points


def carried_rate(points: dict[str, list[dict[str, Any]]], ceiling: float) -> float:
    """The rate of the stall phase: ``ceiling`` (half the no-op's maximum), or, when
    /next_best_action or /feedback did not carry it in the sweep (median p50 at or above
    ``CARRIED_P50_MS``: requests queue, so every turn of the event loop is long whatever a
    checkpoint does, and the stall measured is the overload), the highest swept rate below
    it that both carried; the lowest swept rate when none did."""
    def carried(fraction: float) -> bool:
        return all(p["p50_ms"] is not None and p["p50_ms"] < CARRIED_P50_MS
                   for name in ("next_best_action", "feedback") for p in points[name]
                   if p["fraction_of_noop_max"] == fraction)

    swept = {p["fraction_of_noop_max"]: p["offered_rps"] for p in points["next_best_action"]}
    good = [rate for fraction, rate in swept.items()
            if rate <= ceiling * (1 + 1e-9) and carried(fraction)]
    return max(good) if good else min(swept.values())


def open_loop_report(env: dict[str, str], root: Path, args: argparse.Namespace,
                     started: float) -> dict[str, Any]:
    """The open-loop sweep on one service, the stall phase on a fresh one; the report."""
    fresh_bandit(root)
    proc, url = start_service(env, root, args.workers)
    try:
        noop_max, noop_runs = noop_maximum(url, args, root)
        curves = sweep(url, proc, args, root, noop_max)
    finally:
        stop_service(proc)
    points = {name: medians(runs) for name, runs in curves.items()}
    rate = carried_rate(points, noop_max / 2)
    fresh_bandit(root)
    proc, url = start_service(env, root, args.workers)
    try:
        every = load_settings(None, environ=env).bandit.checkpoint_every
        stall = stall_phase(url, proc, args, root, rate, every)
    finally:
        stop_service(proc)
    stall["rate_rule"] = (f"half the no-op's maximum, or the highest swept rate below it at "
                          f"which /next_best_action and /feedback both had a median p50 under "
                          f"{CARRIED_P50_MS:g} ms")
    stall["at_half_noop_max"] = rate >= noop_max / 2 - 1e-6
    plot_latency(points, noop_max, LATENCY_PLOT)
    half = {name: at_fraction(runs, 0.5) for name, runs in points.items()}
    return {
        "benchmark": "serve_latency", "time_s": round(time.perf_counter() - started, 1),
        "users": args.users, "workers": args.workers, "cpu_count": os.cpu_count(),
        "arrivals": args.arrivals, "seconds_per_run": args.open_seconds,
        "repeats": args.repeats,
        "generator": "benchmarks/openloop.py: one process, asyncio, raw HTTP/1.1; latency "
                     "from the scheduled send time (coordinated omission corrected)",
        "noop_max_rps": round(noop_max, 1),
        "noop_max_runs": [r.model_dump() for r in noop_runs],
        "at_half_noop_max": half,
        # How near its capacity each endpoint's loop ran at half the no-op's maximum (1.0:
        # saturated; queueing makes every hiccup long well before), and what a request cost
        # it: a single event loop carries 1,000 / loop_cpu_ms_per_request requests/s at most.
        "loop_at_half_noop_max": {
            name: {"loop_busy_share": point.get("loop_busy_share"),
                   "loop_cpu_ms_per_request": point.get("loop_cpu_ms_per_request"),
                   "decider_busy_share": point.get("decider_busy_share"),
                   "decider_cpu_ms_per_request": point.get("decider_cpu_ms_per_request"),
                   "loop_cpu_ratio_to_noop": (
                       round(point["loop_cpu_ms_per_request"]
                             / half["noop"]["loop_cpu_ms_per_request"], 2)
                       if point.get("loop_cpu_ms_per_request")
                       and half["noop"].get("loop_cpu_ms_per_request") else None)}
            for name, point in half.items()},
        "points": points, "event_loop_stall": stall, "runs": curves,
        "plot": str(LATENCY_PLOT.relative_to(REPO)),
        "goals": {
            "score_p99_lt_25ms_at_half_noop_max": half["score"]["p99_ms"] < P99_GOAL_MS,
            "next_best_action_p99_lt_25ms_at_half_noop_max":
                half["next_best_action"]["p99_ms"] < P99_GOAL_MS,
            # "own": less the time the loop's thread waited for a CPU held by other
            # processes (this machine is shared); "all" is reported beside it.
            "max_own_stall_during_checkpoints_lt_20ms":
                stall["longest_stall_ms_during_checkpoints"]["own"] < STALL_GOAL_MS,
        },
    }


def fixed_rate_report(env: dict[str, str], root: Path, args: argparse.Namespace
                      ) -> dict[str, Any]:
    """One fresh service; the no-op, /next_best_action, /feedback (rewarding those
    decisions, checkpointing every ``checkpoint_every``), /score and the no-op again, each
    at ``--fixed-rate`` for ``--open-seconds``: latency, the service's CPU time per request,
    the longest loop stall and the collector's work after each. Compares code versions
    (run it once per version, same host, back to back) where the host is too busy for the
    absolute numbers to mean much."""
    fresh_bandit(root)
    proc, url = start_service(env, root, args.workers)
    phases = [("noop", "/noop", "noop"), ("next_best_action", "/next_best_action", "decide"),
              ("feedback", "/feedback", "feedback"), ("score", "/score", "score"),
              ("noop_after", "/noop", "noop")]
    ids = root / "fixed_event_ids.txt"
    out: dict[str, Any] = {}
    try:
        for name, path, kind in phases:
            load, cpu = os.getloadavg()[0], tree_cpu_seconds(proc)
            run = run_open_loop(url, path, kind, args.fixed_rate, args.open_seconds, args, root,
                                seed=201, ids_in=ids if kind == "feedback" else None,
                                ids_out=ids if kind == "decide" else None)
            out[name] = {
                "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"], "max_ms": run["max_ms"],
                "errors": run["errors"],
                "cpu_ms_per_request": round((tree_cpu_seconds(proc) - cpu)
                                            / max(run["ok"], 1) * 1e3, 3),
                "max_stall_ms_so_far": loop_stall_ms(url), "gc_so_far": gc_stats(url),
                "host_load_1m_before": round(load, 2)}
            print(f"{name:>17} at {args.fixed_rate:.0f}/s: p50 {run['p50_ms']} ms p99 "
                  f"{run['p99_ms']} ms, {out[name]['cpu_ms_per_request']} ms CPU/request, "
                  f"stall {out[name]['max_stall_ms_so_far']}", file=sys.stderr)
    finally:
        stop_service(proc)
    return {"label": args.label, "rate_rps": args.fixed_rate, "seconds": args.open_seconds,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "phases": out}


def stall_report(env: dict[str, str], root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The stall phase alone on a fresh service at ``--stall-rate`` requests/s: the longest
    loop stall during checkpoints at a rate the endpoints can carry (the open-loop run
    measures it at half the no-op's maximum, beyond /next_best_action's capacity)."""
    fresh_bandit(root)
    proc, url = start_service(env, root, args.workers)
    try:
        every = load_settings(None, environ=env).bandit.checkpoint_every
        stall = stall_phase(url, proc, args, root, args.stall_rate, every)
    finally:
        stop_service(proc)
    return {"benchmark": "serve_stall", "workers": args.workers,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event_loop_stall": stall,
            "goal_own_stall_during_checkpoints_lt_20ms":
                stall["longest_stall_ms_during_checkpoints"]["own"] < 20.0}


def tree_cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU seconds (user + system) the service's process tree has used so far."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        return sum(p.cpu_times().user + p.cpu_times().system for p in tree)
    except psutil.NoSuchProcess:
        return 0.0


def fresh_bandit(root: Path) -> None:
    """A fresh decision log and bandit for the next service."""
    for name in ("decisions.sqlite", "decisions.sqlite-wal", "decisions.sqlite-shm"):
        (root / "data" / name).unlink(missing_ok=True)
    shutil.rmtree(root / "data" / "bandit", ignore_errors=True)


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
    parser.add_argument("--open-loop", action="store_true",
                        help="latency at fixed offered rates (serve_latency.json and .png)")
    parser.add_argument("--fractions", type=float, nargs="+",
                        default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                        help="offered rates as fractions of the no-op's maximum")
    parser.add_argument("--open-seconds", type=float, default=5.0,
                        help="seconds per open-loop run")
    parser.add_argument("--stall-seconds", type=float, default=10.0,
                        help="seconds of decisions, then of feedback, in the stall phase")
    parser.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson")
    parser.add_argument("--repeats", type=int, default=1,
                        help="open-loop sweeps (interleaved); each point is their median")
    parser.add_argument("--fixed-rate", type=float, default=None,
                        help="only the phases at this rate on a fresh service, compared by "
                             "--label in serve_fixed_rate.json (see fixed_rate_report)")
    parser.add_argument("--stall-rate", type=float, default=None,
                        help="only the stall phase, at this rate, on a fresh service "
                             "(serve_stall.json)")
    parser.add_argument("--decision-process", choices=["on", "off"], default=None,
                        help="serving.decision_process (decisions and feedback in a process "
                             "beside the worker, serving/decider.py); default: the service's "
                             "(on with one worker)")
    parser.add_argument("--label", default="current",
                        help="--fixed-rate: the name of this code version in the results")
    args = parser.parse_args()
    if args.fixed_rate is None and args.stall_rate is None and shutil.which("wrk") is None:
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
        if args.decision_process is not None:
            env = env | {"NEXTBEST__SERVING__DECISION_PROCESS": str(
                args.decision_process == "on").lower()}
        args.decision_process = load_settings(
            None, environ=env | {"NEXTBEST__SERVING__WORKERS": str(args.workers)}
        ).serving.decides_apart  # what the service will do: reported with every result
        world_seconds = time.perf_counter() - started
        if args.stall_rate is not None:
            report = stall_report(env, root, args) | {"decision_process": args.decision_process}
            STALL_RESULTS.write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report, indent=2))
            return 0
        if args.fixed_rate is not None:
            report = fixed_rate_report(env, root, args) | {
                "decision_process": args.decision_process}
            known = json.loads(FIXED_RATE_RESULTS.read_text()) \
                if FIXED_RATE_RESULTS.exists() else {"benchmark": "serve_fixed_rate", "runs": []}
            known["runs"].append(report)
            FIXED_RATE_RESULTS.write_text(json.dumps(known, indent=2) + "\n")
            print(json.dumps(report, indent=2))
            return 0
        if args.open_loop:
            report = open_loop_report(env, root, args, started) | {
                "decision_process": args.decision_process}
            report["world_build_s"] = round(world_seconds, 1)
            LATENCY_RESULTS.parent.mkdir(parents=True, exist_ok=True)
            LATENCY_RESULTS.write_text(json.dumps(report, indent=2))
            print(json.dumps({k: v for k, v in report.items()
                              if k not in ("runs", "points", "noop_max_runs")}, indent=2))
            return 0
        fresh_bandit(root)  # a fresh decision log and bandit for every run
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
