"""The README's walk-through runs as written, in order, in an empty directory.

The ``$nb ...`` lines of the code block under "A walk through the stages", then those of
the "Experiments" section (which continue from it), are read from the README itself and run
one after the other in a fresh working directory with no config and no ``NEXTBEST*``
variable, as on a fresh clone. Only sizes change (:data:`SMALLER`), so
the walk takes minutes; ports are swapped for free ones (:data:`FREE_PORT`). Each command
must exit 0, and every ``data/...`` or ``reports/...`` path named in a line's comment must
exist afterwards.

``serve`` runs too, as the README's real ``nextbest`` command in the background: the test
waits for ``/readyz``, asks ``/score`` about a user of the walk-through's data, then stops
it with SIGINT (the README's Ctrl-C) and carries on.
"""

from __future__ import annotations

import contextlib
import glob
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from redis_server import free_port

from nextbest.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("### A walk through the stages", "## Experiments")
# Flag values replaced by smaller ones; commands and every other flag are kept as written.
# Not fewer users: with 600 the propensity model's evaluation half is ~150 rows, where it
# may not beat its BG/NBD baseline, so it is not promoted and ``serve`` refuses to start.
SMALLER = {"--users": "1500", "--decisions": "1500"}
FREE_PORT = "--port"
READY_TIMEOUT_SECONDS = 120.0

pytestmark = pytest.mark.integration


def walk_through() -> list[tuple[list[str], list[str]]]:
    """The commands of :data:`SECTIONS` in order (``a && b`` is two), each with the paths
    its comment names. Lines that do not start with ``$nb`` (``nb=...``) are not commands."""
    text = README.read_text()
    steps = []
    for section in SECTIONS:
        block = text.split(f"\n{section}\n", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
        for line in block.splitlines():
            command, _, comment = line.partition("#")
            if not command.strip().startswith("$nb "):
                continue
            paths = [word.rstrip(",") for word in comment.split()
                     if word.startswith(("data/", "reports/"))]
            for part in command.split("&&"):
                words = shlex.split(part)
                assert words[0] == "$nb", f"not a nextbest command: {part!r}"
                steps.append((words[1:], paths))
    return steps


def smaller(argv: list[str]) -> list[str]:
    """``argv`` with the sizes of :data:`SMALLER` and a free port for ``--port``."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word in SMALLER:
            out[i + 1] = SMALLER[word]
        elif word == FREE_PORT:
            out[i + 1] = str(free_port())
    return out


def run_serve(argv: list[str], cwd: Path, key: str) -> None:
    """Start the README's ``serve`` line with the real ``nextbest`` command, check that it
    answers for the walk-through's users, and stop it with SIGINT (Ctrl-C)."""
    port = argv[argv.index(FREE_PORT) + 1]
    url = f"http://127.0.0.1:{port}"
    nb = Path(sys.executable).with_name("nextbest")
    log = cwd / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(nb), *argv], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"serve not ready:\n{log.read_text()}"
            time.sleep(0.25)
        answer = httpx.post(f"{url}/score", json={"user_id": "u000042"}, timeout=30.0,
                            headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200 and answer.json()["known"] is True, answer.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        tree = [proc, *_children(proc.pid)]
        for process in tree:  # whatever did not stop (BentoML's workers run in a new session)
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                process.kill()


def _children(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def test_the_walk_through_is_found():
    commands = [argv[0] for argv, _paths in walk_through()]
    assert commands[0] == "data" and "serve" in commands and "report" in commands
    assert {"simulate", "evaluate-policy", "abtest"} <= set(commands)
    assert commands[-2:] == ["simulate", "evaluate-policy"]  # the Experiments section


def test_the_walk_through_runs_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # a fresh clone: no nextbest.yaml, no data/, no mlruns/
    key = ""
    for argv, paths in walk_through():
        argv = smaller(argv)
        if argv[0] == "serve":
            run_serve(argv, tmp_path, key)
        else:
            code = main(argv)
            captured = capsys.readouterr()
            assert code == 0, f"nextbest {' '.join(argv)} exited {code}:\n{captured.err}"
            if argv[:2] == ["keys", "create"]:
                key = captured.out.strip()
        for path in paths:
            assert glob.glob(path), f"nextbest {' '.join(argv)} did not write {path}"
