"""The decision process (``serving.decision_process``, serving/decider.py): its wire
format, and a real ``nextbest serve`` whose worker forwards decisions and feedback to it:
same answers and errors as a worker deciding itself, learning at once, erasures forgotten
there too, and a ``kill -9`` of it neither fails the service nor leaves it without one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from api_key import HEADERS
from served_world import REWARD_WINDOW_SECONDS

from nextbest.config import load_settings, path_overrides
from nextbest.errors import ConfigError
from serving.decider import DECIDE, Answer, Frames, reply_frame, request_frame

ON = {"NEXTBEST__SERVING__DECISION_PROCESS": "true"}
NEW_PROCESS_SECONDS = 90.0


# --- the wire ----------------------------------------------------------------------------------

def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    body = b'{"user_id": "u 1",\n "context": {}}'  # spaces and a newline inside
    stream = (request_frame(7, DECIDE, "key-1", body) + request_frame(8, DECIDE, None, b"")
              + reply_frame(b"9", Answer(409, b'{"error": "conflict"}', "coupon", None,
                                         "duplicate")))
    for cut in range(1, len(stream)):  # every split into two reads
        frames = Frames()
        got = list(frames.feed(stream[:cut])) + list(frames.feed(stream[cut:]))
        assert got == [([b"7", b"D", b"key-1"], body), ([b"8", b"D", b""], b""),
                       ([b"9", b"409", b"coupon", b"", b"duplicate"],
                        b'{"error": "conflict"}')], cut
        assert frames.buffer == b""


def test_an_answer_survives_the_wire_whatever_its_names() -> None:
    answer = Answer(200, b'{"ok": true}', "free shipping", "-", None)  # a space; a dash
    ((header, body),) = Frames().feed(reply_frame(b"12", answer))
    assert header[0] == b"12" and Answer.from_frame(header, body) == answer


def test_a_frame_cut_short_waits_for_the_rest() -> None:
    frames = Frames()
    assert list(frames.feed(b"1 D  8\n{\"a\"")) == []
    assert list(frames.feed(b": 1}")) == [([b"1", b"D", b""], b'{"a": 1}')]


@pytest.mark.parametrize(("workers", "setting", "apart"), [
    ("1", None, True), ("2", None, False), ("1", "false", False), ("1", "true", True)])
def test_one_worker_decides_apart_unless_told_not_to(workers, setting, apart) -> None:
    environ = {"NEXTBEST__SERVING__WORKERS": workers} | (
        {"NEXTBEST__SERVING__DECISION_PROCESS": setting} if setting else {})
    assert load_settings(None, environ=environ).serving.decides_apart is apart


def test_the_decision_process_refuses_several_workers() -> None:
    with pytest.raises(ConfigError, match="decision_process needs workers: 1"):
        load_settings(None, environ={"NEXTBEST__SERVING__DECISION_PROCESS": "true",
                                     "NEXTBEST__SERVING__WORKERS": "2"})


def test_serve_with_several_workers_and_a_decision_process_exits_with_the_reason(
        tmp_path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEXTBEST")}
    env |= path_overrides(tmp_path) | ON
    run = subprocess.run([sys.executable, "-m", "nextbest.cli", "serve", "--workers", "2"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == (
        "error: --workers 2 with serving.decision_process: the decision process is the one "
        "learner beside one worker")


# --- a real service ---------------------------------------------------------------------------

def _decider_pid(http: httpx.Client) -> int | None:
    return http.get("/readyz").json()["decision_process"]


@pytest.mark.integration
def test_the_decision_process_decides_and_learns_for_the_worker(spawn, pool) -> None:
    server = spawn("decider-answers", env=ON)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30.0) as http:
        ready = http.get("/readyz").json()
        pid = ready["decision_process"]
        assert pid is not None and psutil.Process(pid).parent().pid == ready["pid"]
        assert ready["engine_role"] == "scorer"  # the worker's own engines

        user = pool.take()
        decision = http.post("/next_best_action", json={
            "user_id": user, "context": {"channel": "app", "page": "item",
                                         "item_price": 120.0}})
        assert decision.status_code == 200, decision.text
        event_id = decision.json()["event_id"]
        assert decision.json()["user_id"] == user and decision.json()["decision_point"]

        reward = http.post("/feedback", json={"event_id": event_id, "converted": True,
                                              "revenue": 100.0})
        assert reward.status_code == 200, reward.text
        assert reward.json()["status"] == "accepted"
        assert "learned" in reward.json()["detail"]  # the inline learner, at once
        again = http.post("/feedback", json={"event_id": event_id, "converted": False})
        assert again.status_code == 409 and "converted" in again.json()["detail"]

        # Its errors are the worker's: the status, the kind, the field.
        unknown = http.post("/next_best_action", json={"user_id": user,
                                                       "decision_point": "nowhere"})
        assert unknown.status_code == 404 and unknown.json()["field"] == "decision_point"
        no_event = http.post("/feedback", json={"event_id": "never-made", "converted": True})
        assert no_event.status_code == 404, no_event.text
        bad = http.post("/feedback", json={"event_id": event_id, "converted": False,
                                           "revenue": 5.0})
        assert bad.status_code == 422, bad.text
        empty = http.post("/next_best_action", json={"user_id": ""})
        assert empty.status_code == 422 and empty.json()["field"] == "user_id"

        stats = http.get("/bandit/stats").json()  # the learner's: the decision process's
        assert stats["role"] == "inline" and stats["rewards_learned"] >= 1

        metrics = http.get("/metrics").text
        counted = [line for line in metrics.splitlines()
                   if line.startswith("nextbest_rewards_total") and 'outcome="converted"' in line]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1.0
        assert any(line.startswith("nextbest_decisions_total")
                   for line in metrics.splitlines())


@pytest.mark.integration
def test_the_decision_process_sweeps_and_learns_decisions_left_without_feedback(
        spawn, pool) -> None:
    server = spawn("decider-sweeps", env=ON)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30.0) as http:
        before = http.get("/bandit/stats").json()["rewards_learned"]
        for _ in range(3):
            assert http.post("/next_best_action",
                             json={"user_id": pool.take()}).status_code == 200
        # The reward window closes; its sweep writes the default rewards (in its thread)
        # and the process learns them between requests.
        deadline = time.monotonic() + REWARD_WINDOW_SECONDS + 30
        while http.get("/bandit/stats").json()["rewards_learned"] < before + 3:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)


@pytest.mark.integration
def test_an_erased_user_is_forgotten_by_the_decision_process_too(spawn, pool) -> None:
    server = spawn("decider-erasure", env=ON)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60.0) as http:
        user = pool.take()
        decision = http.post("/next_best_action", json={"user_id": user})
        assert decision.status_code == 200, decision.text
        assert http.delete(f"/users/{user}").status_code == 200
        # The decision process kept the decision for its feedback; the erasure took it
        # from the log and from its memory, so this feedback re-creates nothing.
        late = http.post("/feedback", json={"event_id": decision.json()["event_id"],
                                            "converted": True, "revenue": 10.0})
        assert late.status_code == 404, late.text
        again = http.post("/next_best_action", json={"user_id": user})
        assert again.status_code == 200 and "erased user" in again.json()["reason"]


@pytest.mark.integration
def test_a_killed_decision_process_is_replaced_and_the_service_keeps_answering(
        spawn, pool) -> None:
    server = spawn("decider-killed", env=ON)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30.0) as http:
        first = _decider_pid(http)
        assert first is not None
        psutil.Process(first).kill()
        psutil.Process(first).wait(timeout=10)

        # Meanwhile the worker decides itself (a request in flight at the kill may be 503).
        meanwhile = []
        for _ in range(20):
            answer = http.post("/next_best_action", json={"user_id": pool.take()})
            assert answer.status_code in (200, 503), answer.text
            meanwhile.append(answer)
        made = [a.json() for a in meanwhile if a.status_code == 200]
        assert len(made) >= 19

        deadline = time.monotonic() + NEW_PROCESS_SECONDS
        while (second := _decider_pid(http)) in (None, first):
            assert time.monotonic() < deadline, (
                f"no new decision process after {NEW_PROCESS_SECONDS:g} s:\n"
                f"{server.log_tail()}")
            time.sleep(0.5)
        assert psutil.pid_exists(second)

        # The new one joins feedback for a decision made while it was away, from the log
        # (late by now: the tests' reward window is a few seconds).
        reward = http.post("/feedback", json={"event_id": made[-1]["event_id"],
                                              "converted": False})
        assert reward.status_code == 200, reward.text
        assert reward.json()["status"] in ("accepted", "late")
        assert reward.json()["action"] == made[-1]["action"]
        decision = http.post("/next_best_action", json={"user_id": pool.take()})
        assert decision.status_code == 200, decision.text

    # A kill -9 of the whole service takes the decision process with it.
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _running(second):
        assert time.monotonic() < deadline, "the decision process outlived its service"
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.integration
def test_decision_process_false_decides_and_learns_in_the_worker(spawn, pool) -> None:
    server = spawn("decider-off", env={"NEXTBEST__SERVING__DECISION_PROCESS": "false"})
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30.0) as http:
        ready = http.get("/readyz").json()
        assert ready["decision_process"] is None and ready["engine_role"] == "inline"
        assert not [p for p in server.processes() if "serving.decider" in p.cmdline()]
        decision = http.post("/next_best_action", json={"user_id": pool.take()})
        assert decision.status_code == 200, decision.text
        reward = http.post("/feedback", json={"event_id": decision.json()["event_id"],
                                              "converted": True, "revenue": 10.0})
        assert reward.status_code == 200 and "learned" in reward.json()["detail"], reward.text
