"""No process of the service outlives the one that started it.

``nextbest serve`` starts ``bentoml serve`` (the circus arbiter), which starts each worker in
a session of its own (``setsid``): a ``kill -9`` of ``nextbest serve``'s process group
reaches the arbiter but not the workers, which would keep the port, the learner lock and
the decision log open, so a restart would fail with "address already in use". Two guards
close that gap:

- the kernel: :func:`die_with_parent` asks Linux (``prctl(PR_SET_PDEATHSIG)``) to send
  SIGTERM to a process when its parent exits. ``nextbest serve`` sets it in the arbiter
  (before it execs, :func:`parent_death_preexec`) and each worker sets it at start-up
  (:func:`watch_parent`), so the chain unwinds from whichever process dies;
- a fallback watcher thread (:class:`ParentWatch`, any POSIX system): every
  ``poll_seconds`` it checks that the worker's parent is still the one it started with
  and that ``nextbest serve`` (its pid travels in :data:`SERVE_PID_ENV`) is still alive.

Either way the worker gets SIGTERM, shuts down as on any stop (the learner writes its last
checkpoint; the OS drops the learner lock with the process), and if it has not exited
after ``grace_seconds`` the watcher ends it with ``os._exit``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SERVE_PID_ENV = "NEXTBEST_SERVE_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5
GRACE_SECONDS = 10.0


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux (None elsewhere, or when libc cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits; False when the
    platform cannot (not Linux), and the watcher thread is then the only guard."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def parent_death_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets SIGTERM when the
    calling process dies (and ends at once if that already happened between fork and
    exec). libc is loaded here, before the fork, so the child only makes the call."""
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed process whose parent has
    not reaped it yet still has its pid, but it is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: os.kill said it exists
    return state not in ("Z", "X")


class ParentWatch(threading.Thread):
    """Ends this process when its parent or ``nextbest serve`` is gone (module docstring)."""

    def __init__(self, serve_pid: int | None, *, poll_seconds: float = POLL_SECONDS,
                 grace_seconds: float = GRACE_SECONDS,
                 on_orphaned: Callable[[str], None] | None = None):
        super().__init__(name="parent-watch", daemon=True)
        self.parent = os.getppid()
        self.serve_pid = serve_pid
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.on_orphaned = on_orphaned or self._terminate
        self.stop_event = threading.Event()

    def orphaned(self) -> str | None:
        """Why this process has lost its parent, or None while all is well."""
        parent = os.getppid()
        if parent != self.parent:
            return f"its parent process {self.parent} is gone (now {parent})"
        if self.serve_pid is not None and not pid_alive(self.serve_pid):
            return f"nextbest serve (pid {self.serve_pid}) is gone"
        return None

    def run(self) -> None:
        while not self.stop_event.wait(self.poll_seconds):
            why = self.orphaned()
            if why is not None:
                self.on_orphaned(why)
                return

    def _terminate(self, why: str) -> None:
        """SIGTERM to this process (an orderly stop); ``os._exit`` if it is still running
        ``grace_seconds`` later."""
        log.warning("worker %d stops: %s", os.getpid(), why)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(self.grace_seconds)  # a daemon thread: it ends with the process
        log.error("worker %d did not stop within %gs of SIGTERM: exiting", os.getpid(),
                  self.grace_seconds)
        os._exit(1)

    def stop(self) -> None:
        """Stop watching (an orderly shutdown is under way)."""
        self.stop_event.set()


def watch_parent(environ: dict[str, str] | None = None) -> ParentWatch:
    """Make this worker process die with its parent: the kernel's parent-death signal and
    the fallback watcher thread (started here). Call it first thing in the worker."""
    env = os.environ if environ is None else environ
    die_with_parent()
    serve_pid = env.get(SERVE_PID_ENV)
    watch = ParentWatch(int(serve_pid) if serve_pid and serve_pid.isdigit() else None)
    if watch.parent == 1:  # already orphaned before we asked: nothing will signal us
        watch.on_orphaned("its parent died before it started")
    watch.start()
    return watch
