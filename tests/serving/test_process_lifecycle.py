"""Process lifecycle of the real ``nextbest serve``: ``kill -9`` of its process group leaves
no worker behind (BentoML starts each worker in a session of its own, out of the group's
reach), the learner lock goes with the processes, and a restart binds the same port.
The watcher thread, the fallback where the kernel's parent-death signal is missing, is
tested on its own with a real process chain."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
from api_key import HEADERS
from conftest import own_bandit_env, start_server

from decisions.learner import LearnerLock
from nextbest.errors import Conflict
from serving.lifecycle import ParentWatch, pid_alive

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_SECONDS = 30.0


def test_a_killed_process_not_yet_reaped_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child did not die"
            time.sleep(0.01)
        assert not pid_alive(child.pid)  # a zombie: its pid exists, the process does not
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)


def test_the_watcher_reports_a_dead_serve_process() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    reasons: list[str] = []
    watch = ParentWatch(gone.pid, poll_seconds=0.01, on_orphaned=reasons.append)
    watch.start()
    watch.join(timeout=10)
    assert reasons == [f"nextbest serve (pid {gone.pid}) is gone"]
    assert ParentWatch(os.getpid()).orphaned() is None  # alive, same parent: all is well


# A parent that starts a grandchild (the "worker", in a session of its own) watching it with
# the thread alone (no prctl); the parent prints the worker's pid, the worker says when it
# watches, and both wait to be killed.
CHAIN = textwrap.dedent("""
    import subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", (
        "import time; from serving.lifecycle import ParentWatch; "
        "ParentWatch(None, poll_seconds=0.05).start(); print('watching', flush=True); "
        "time.sleep(120)")], start_new_session=True)
    print(worker.pid, flush=True)
    time.sleep(120)
""")


def test_the_watcher_alone_stops_a_worker_whose_parent_was_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", CHAIN], stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
    worker = psutil.Process(int(parent.stdout.readline()))
    try:
        assert parent.stdout.readline().strip() == "watching"
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(worker.pid):  # a zombie waiting for init to reap it is dead
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
        parent.stdout.close()


@pytest.mark.integration
def test_kill_9_of_the_serve_group_leaves_no_worker_and_a_restart_serves(world) -> None:
    env = own_bandit_env(world, "lifecycle")
    bandit_dir = world.root / "lifecycle" / "bandit"
    first = start_server(world, workers=1, name="lifecycle-1", env=env)
    port = int(first.url.rsplit(":", 1)[1])
    tree = first.processes()
    group = os.getpgid(first.proc.pid)
    outside = [p for p in tree[1:] if os.getpgid(p.pid) != group]
    assert outside, "expected the BentoML worker outside the serve process group"
    with pytest.raises(Conflict):  # a worker holds the learner lock
        LearnerLock(bandit_dir).acquire()

    os.killpg(group, signal.SIGKILL)
    first.proc.wait(timeout=10)
    _, alive = psutil.wait_procs(tree, timeout=GONE_WITHIN_SECONDS)
    left = [f"{p.pid} {' '.join(p.cmdline()[:4])}" for p in alive if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    for process in alive:  # never leave them running, whatever the outcome
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert not left, f"still running {GONE_WITHIN_SECONDS:g}s after kill -9 of the group: {left}"

    lock = LearnerLock(bandit_dir)
    lock.acquire()  # released with the processes
    lock.release()

    second = start_server(world, workers=1, name="lifecycle-2", env=env, port=port)
    try:
        with httpx.Client(base_url=second.url, headers=HEADERS, timeout=30.0) as http:
            decision = http.post("/next_best_action", json={"user_id": "after-restart"})
            assert decision.status_code == 200, decision.text
            stats = http.get("/bandit/stats")
            assert stats.status_code == 200 and stats.json()["role"] == "inline"
    finally:
        second.stop(signal.SIGKILL)
