"""The decision process: ``/next_best_action`` and ``/feedback`` decided beside the HTTP
worker, so a decision's Python runs on a CPU of its own.

One BentoML worker answers every request on one event loop. A decision costs that loop
~1.4x a no-op request (the policy, the example, VW, the log's insert: 0.27 ms of Python
here), so past ~40% of the no-op's maximum rate the loop is saturated by decisions alone
and their latency grows without bound (benchmarks/serve.py). With
``serving.decision_process`` (unset: on with one worker) the worker starts
``python -m serving.decider`` at start-up and forwards each decision and feedback to it over a Unix socket; its loop only
parses, forwards and relays (about a no-op's work).

The decision process holds the bandit's engines in the ``inline`` role (it decides, logs
durably and learns each reward at once, as a one-worker service does); the worker's own
engines are ``scorer`` replicas for what it still decides itself (campaign firings, the
rare request while the decision process restarts). It keeps its own housekeeping: the
sweeps, learning what other writers logged, checkpoints, following new champions and
erasures. It stops with the worker (SIGTERM at the worker's shutdown; its parent watcher
within a second when the worker dies), and when it dies first the worker decides
in-process, logs an error and starts a new one.

The wire: frames of one header line and a body of the length it gives. A request is
``<tag> <kind> <key id> <length>\\n<body>`` (kind ``D`` decide, ``F`` feedback, ``E``
forget an erased user, ``S`` a decision point's statistics), a reply ``<tag> <status> <arm> <tier> <outcome> <length>\\n<body>``:
what the worker needs for its metrics without parsing the body. Header words are
percent-encoded, and empty for none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from decisions.engine import DecisionEngine
from decisions.points import DecisionPoints
from decisions.policy import UserView
from decisions.users import try_load_champions
from features.store import open_store
from nextbest.config import Settings, load_settings
from nextbest.errors import Conflict, MissingComponent, NextbestError
from serving.bento import Bundle, load_bundled_champions
from serving.lifecycle import ParentWatch
from serving.loopwatch import quiet_collector
from serving.schemas import Decision, FeedbackRequest, NextBestActionRequest
from serving.scoring import Scorer
from serving.status import WorkerBoard
from training.loader import ChampionModels

log = logging.getLogger(__name__)

DECIDE, FEEDBACK, FORGET, STATS = b"D", b"F", b"E", b"S"
DECIDED = "decided"  # a reply's outcome for a logged decision (the worker counts it)
BUNDLE_ENV = "NEXTBEST_DECIDER_BUNDLE"  # a bento's bundle (JSON), handed to the process
SOURCE_ROOT = Path(__file__).resolve().parents[1]
READY_SECONDS = 180.0
RESTART_DELAY_SECONDS = 1.0  # start-up: models loaded, the log replayed, the scores warmed
HOUSEKEEPING_SECONDS = 0.5
# Rewards the inline learner learns from a backlog (a sweep's timeouts) per turn of the
# event loop (or between two requests of the decision process): ~10 ms of VW.
LEARN_STEP = 50


@dataclass(frozen=True)
class Answer:
    """The decision process's reply: HTTP status, JSON body, and what the metrics count."""

    status: int
    body: bytes
    arm: str | None = None
    tier: str | None = None
    outcome: str | None = None

    @classmethod
    def error(cls, exc: NextbestError) -> Answer:
        return cls(exc.http_status, json.dumps(exc.to_dict()).encode())

    @classmethod
    def from_frame(cls, header: list[bytes], body: bytes) -> Answer:
        """The answer of a reply frame (its header words after the tag)."""
        return cls(int(header[1]), body, _text(header[2]), _text(header[3]), _text(header[4]))


def _word(value: str | None) -> bytes:
    """A header word: percent-encoded (an arm's name may hold a space), empty for None."""
    return b"" if value is None else quote(value, safe="").encode()


def _text(word: bytes) -> str | None:
    return unquote(word.decode()) if word else None


def request_frame(tag: int, kind: bytes, key: str | None, body: bytes) -> bytes:
    return b"%d %s %s %d\n%s" % (tag, kind, _word(key), len(body), body)


def reply_frame(tag: bytes, answer: Answer) -> bytes:
    return b"%s %d %s %s %s %d\n%s" % (tag, answer.status, _word(answer.arm),
                                        _word(answer.tier), _word(answer.outcome),
                                        len(answer.body), answer.body)


class Frames:
    """Bytes in, whole frames out: ``(header fields, body)`` as each one completes."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[list[bytes], bytes]]:
        buffer = self.buffer + data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            header = buffer[start:end].split(b" ")
            length = int(header[-1])
            if len(buffer) < end + 1 + length:
                break
            yield header[:-1], buffer[end + 1:end + 1 + length]
            start = end + 1 + length
        self.buffer = buffer[start:]


# --- what the worker and the decision process decide alike ---------------------------------

def user_for(points: DecisionPoints, scorer: Scorer,
             body: NextBestActionRequest) -> tuple[DecisionEngine, UserView]:
    """The engine of the request's decision point and the user as it sees them (the seller
    view at a seller point); NotFound for a point not served."""
    engine = points.get(body.decision_point)
    user = (scorer.seller_view(body.user_id) if engine.config.subject == "seller"
            else scorer.user_view(body.user_id))
    return engine, user


def erased_default(body: NextBestActionRequest, engine: DecisionEngine) -> Decision:
    """An erased user calling again: the non-personalised default, logged nowhere (no
    decision, no metric naming them), so they are not re-created."""
    anonymous = UserView(user_id=body.user_id, personalization=False,
                         subject=engine.config.subject)
    decision = engine.decide(anonymous, body.context, record=False)
    return decision.model_copy(update={
        "reason": "erased user: the non-personalised default; nothing about this call "
                  "is stored"})


def remembered_users(scorer: Scorer, points: DecisionPoints) -> set[str]:
    """Users a process keeps something about in memory: cached scores or views, decisions
    awaiting their feedback."""
    return scorer.cached_users() | points.remembered_users()


def forget_users(scorer: Scorer, points: DecisionPoints, user_ids: Iterable[str]) -> None:
    """Drop what a process keeps in memory about ``user_ids`` (erased users)."""
    for user_id in user_ids:
        scorer.forget(user_id)
        points.forget_user(user_id)


# --- the decision process ---------------------------------------------------------------------

class Decider:
    """The decision process's state: the store, the scorer, the engines (inline role)."""

    def __init__(self, settings: Settings, bundle: Bundle | None = None):
        self.settings = settings
        self.bundle = bundle  # in a bento: its models, never the registry's
        self.store = open_store(settings)
        champions, why = ((load_bundled_champions(bundle), None) if bundle is not None
                          else try_load_champions(settings))
        self.scorer = Scorer(settings, self.store, champions, why, registry=bundle is None)
        self.scorer.use_ltv(self.scorer.load_ltv())
        self.points = DecisionPoints.open(settings, open_engine)
        self.board = WorkerBoard(board_dir(settings))
        self.erasures = self.board.erasures()
        self.generation = self.board.generation()
        self.checked_models = time.monotonic()
        self.last_sweep = time.monotonic()
        self.sweeping: Future[object] | None = None
        self.refreshing: Future[ChampionModels | None] | None = None
        self.threads = ThreadPoolExecutor(2, thread_name_prefix="decider")
        warm = self.scorer.warm_scores()
        if warm is not None:
            self.scorer.fill(warm)
        quiet_collector(settings.serving.gc_thresholds)

    def answer(self, kind: bytes, key: str | None, body: bytes) -> Answer:
        """One request's reply; a user's error is its 4xx, anything else a logged 500."""
        try:
            if kind == DECIDE:
                return self.decide(NextBestActionRequest.model_validate_json(body))
            if kind == FEEDBACK:
                return self.feedback(FeedbackRequest.model_validate_json(body), key)
            if kind == STATS:  # the learner's counts: it is this process's
                return Answer(200, json.dumps(self.points.stats(body.decode() or None)).encode())
            if kind == FORGET:
                forget_users(self.scorer, self.points, [body.decode()])
                return Answer(200, b"{}")
            raise ValueError(f"unknown request kind {kind!r}")
        except NextbestError as exc:
            return Answer.error(exc)
        except Exception:  # noqa: BLE001 - the worker answers 500, this process goes on
            log.exception("the decision process failed a request")
            return Answer(500, b'{"error": "internal", "detail": "the decision process '
                               b'failed; see the service log"}')

    def decide(self, body: NextBestActionRequest) -> Answer:
        engine, user = user_for(self.points, self.scorer, body)
        if not user.known and self.store.is_erased(body.user_id):
            return Answer(200, erased_default(body, engine).model_dump_json().encode())
        decision = engine.decide(user, body.context)
        return Answer(200, decision.model_dump_json().encode(), decision.action, user.tier,
                      DECIDED)

    def feedback(self, body: FeedbackRequest, key: str | None) -> Answer:
        result = self.points.feedback(body.event_id, body.converted, body.revenue,
                                      point=body.decision_point, key_id=key)
        return Answer(200, result.model_dump_json().encode(), result.action, result.tier,
                      result.status)

    def housekeep(self) -> None:
        """Between requests, every :data:`HOUSEKEEPING_SECONDS`: forget users erased
        elsewhere, follow a reload or every ``model_refresh_seconds`` the registry (in a
        thread), sweep (in a thread), checkpoint when due. Learning what the sweeps and other
        writers logged is :meth:`learn_step`'s."""
        now = time.monotonic()
        erasures = self.board.erasures()
        due = now - self.checked_models >= self.settings.serving.model_refresh_seconds
        if erasures != self.erasures or due:
            self.erasures = erasures
            forget_users(self.scorer, self.points, self.store.erased_among(
                remembered_users(self.scorer, self.points)))
        if self.refreshing is not None and self.refreshing.done():
            newer, self.refreshing = self.refreshing.result(), None
            if newer is not None:  # a promotion: rare, and the scores are warmed at once
                log.info("the decision process now serves models %s", self.scorer.use(newer))
                warm = self.scorer.warm_scores()
                if warm is not None:
                    self.scorer.fill(warm)
                quiet_collector(self.settings.serving.gc_thresholds)
        generation = self.board.generation()
        if (generation != self.generation or due) and self.refreshing is None:
            self.generation, self.checked_models = generation, now
            self.refreshing = self.threads.submit(self._refresh)
        if (now - self.last_sweep >= self.settings.bandit.sweep_seconds
                and (self.sweeping is None or self.sweeping.done())):
            self.last_sweep = now
            self.sweeping = self.threads.submit(_sweep_all, self.points)
        self.points.checkpoint_if_due()

    def _refresh(self) -> ChampionModels | None:
        """In a thread, as the worker's housekeeping does: newer champions (None in a
        bento, whose models are fixed), the LTV and seller churn champions, and a new
        features build's sold comparables for the pricing arms."""
        newer = None if self.bundle is not None else self.scorer.newer_champions()
        ltv = self.scorer.load_ltv()
        if ltv is not None:
            self.scorer.use_ltv(ltv)
        self.scorer.refresh_seller_churn()
        for engine in self.points:
            if engine.pricing:
                engine.load_comparables()
        return newer

    def learn_step(self) -> bool:
        """Learn at most :data:`LEARN_STEP` rewards per point that this process has not
        learned yet (the sweeps' default rewards, the worker's campaign rewards); whether
        some are left for the next step."""
        return any([engine.learn_pending(LEARN_STEP) == LEARN_STEP for engine in self.points])

    def close(self) -> None:
        self.threads.shutdown(wait=True)
        self.points.close()
        self.store.close()


def open_replica(settings: Settings) -> DecisionEngine:
    """A scorer replica's engine: the worker's beside its decision process, which is the
    learner."""
    engine = DecisionEngine(settings, role="scorer")
    engine.learn_in_steps(LEARN_STEP)
    return engine


def open_engine(settings: Settings) -> DecisionEngine:
    """The decision engine of this worker process.

    One worker: role ``inline`` (decides and learns each reward at once). Several workers:
    role ``auto``, the engine's learner file lock makes exactly one of them the learner.
    When another service on the same decision log already holds the lock, this one becomes
    a scorer replica instead of failing to start. Sweeps and learning a backlog happen in
    the housekeeping, a bounded step at a time (:meth:`DecisionEngine.learn_in_steps`).
    """
    if settings.serving.workers > 1:
        engine = DecisionEngine(settings, role="auto")
    else:
        try:
            engine = DecisionEngine(settings, role="inline")
        except Conflict as exc:
            log.warning("%s: serving as a scorer replica", exc.message)
            engine = DecisionEngine(settings, role="scorer")
    engine.learn_in_steps(LEARN_STEP)  # sweeps and backlogs in housekeeping, off requests
    return engine


def _sweep_all(points: DecisionPoints) -> None:
    for engine in points:
        engine.sweep_rows()


def board_dir(settings: Settings) -> Path:
    """Where the workers of the service on ``serving.port`` publish their status."""
    return Path(settings.paths.data_dir) / "serving" / str(settings.serving.port)


def serve(decider: Decider, listener: socket.socket) -> None:
    """Answer the worker's one connection until it closes. Between requests: housekeeping
    every :data:`HOUSEKEEPING_SECONDS`, and a backlog to learn a step at a time, so requests
    are answered between steps."""
    connection, _ = listener.accept()
    listener.close()
    frames = Frames()
    selector = selectors.DefaultSelector()
    selector.register(connection, selectors.EVENT_READ)
    next_round = time.monotonic() + HOUSEKEEPING_SECONDS
    backlog = True  # what the log holds unlearned from before this process
    while True:
        wait = 0.0 if backlog else max(0.0, next_round - time.monotonic())
        if selector.select(wait):
            data = connection.recv(1 << 16)
            if not data:
                return
            connection.sendall(b"".join(
                reply_frame(header[0], decider.answer(header[1], _text(header[2]), body))
                for header, body in frames.feed(data)))
        try:
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + HOUSEKEEPING_SECONDS
                decider.housekeep()
                backlog = True
            if backlog:
                backlog = decider.learn_step()
        except Exception:  # noqa: BLE001 - the next round retries
            log.exception("the decision process's housekeeping failed")
            backlog = False


def remove_socket(path: str) -> None:
    """Remove the socket and its private directory, if still there."""
    for remove, target in ((os.unlink, path), (os.unlink, path + ".starting"),
                           (os.rmdir, os.path.dirname(path))):
        with contextlib.suppress(OSError):
            remove(target)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM: stop once (a second signal must not cut the final checkpoint short)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.decider SOCKET``: start, then listen on ``SOCKET`` (created
    once ready, so its existence is the readiness signal)."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] [decider:%(process)d] %(message)s")
    signal.signal(signal.SIGTERM, _stop)  # an orderly stop: the engines checkpoint
    # Its worker's death ends it through the watcher thread alone: the kernel's parent-death
    # signal follows the thread that started it (a worker's thread pool may end first).
    watch = ParentWatch(None)
    if watch.parent == 1:
        watch.on_orphaned("its worker died before it started")
    watch.start()
    path = args[0]
    decider: Decider | None = None
    try:
        carried = os.environ.get(BUNDLE_ENV)
        bundle = Bundle.model_validate_json(carried) if carried else None
        settings = (bundle.settings() if bundle is not None
                    else load_settings(os.environ.get("NEXTBEST_CONFIG")))
        decider = Decider(settings, bundle)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path + ".starting")
        listener.listen(1)
        os.rename(path + ".starting", path)
        log.info("the decision process is ready (pid %d)", os.getpid())
        serve(decider, listener)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        remove_socket(path)  # the worker did once connected; not if it died before
        watch.stop()
        if decider is not None:
            decider.close()
    return 0


# --- the worker's side ------------------------------------------------------------------------

class DecisionProcess:
    """The worker's handle on its decision process: start it, ask it, restart it."""

    def __init__(self, settings: Settings, bundle: Bundle | None = None):
        self.settings = settings
        self.bundle = bundle
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = ""
        self.transport: asyncio.Transport | None = None
        self.pending: dict[bytes, asyncio.Future[Answer]] = {}
        self.tag = 0
        self.frames = Frames()
        self.closing = False
        self._restart: asyncio.Task[None] | None = None

    def start(self) -> DecisionProcess:
        """Start the process and wait until it listens (blocking: the worker's start-up or
        a thread). RuntimeError with its exit code when it stops before."""
        # In a directory only this user may enter: whoever connects first is answered
        # without an API key, so no other local user may reach the socket.
        self.path = os.path.join(tempfile.mkdtemp(prefix="nextbest-decider-"), "socket")
        # The source root on the path: a bento's worker runs from wherever it was started.
        python_path = os.pathsep.join(filter(None, [str(SOURCE_ROOT),
                                                    os.environ.get("PYTHONPATH")]))
        env = os.environ | {"PYTHONPATH": python_path}
        if self.bundle is not None:
            env[BUNDLE_ENV] = self.bundle.model_dump_json()
        # A session of its own: a stop signal to the worker's process group must not end it
        # before the worker (which would start another while shutting down); it dies with
        # the worker through its parent watcher instead.
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.decider", self.path],
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + READY_SECONDS
        while not os.path.exists(self.path):
            code = self.proc.poll()
            why = ("was not needed any more: the worker is stopping" if self.closing
                   else f"exited with code {code} while starting; its log is above"
                   if code is not None else f"was not ready in {READY_SECONDS:g} s"
                   if time.monotonic() > deadline else None)
            if why is not None:
                self.proc.kill()
                self.proc.wait()
                remove_socket(self.path)
                raise RuntimeError(f"the decision process {why}")
            time.sleep(0.05)
        return self

    async def connect(self) -> None:
        """Connect to the started process (on the worker's event loop)."""
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_unix_connection(lambda: _Link(self), self.path)
        remove_socket(self.path)  # connected: nobody else may

    @property
    def pid(self) -> int | None:
        """The pid of the process answering now (None while none does)."""
        return self.proc.pid if self.proc is not None and self.ready else None

    @property
    def ready(self) -> bool:
        """Whether requests can go to the process now (not while it restarts)."""
        return self.transport is not None

    async def ask(self, kind: bytes, body: bytes, key: str | None = None) -> Answer:
        """Send one request and await its reply. MissingComponent (503) when the process
        stops before it answers: the decision may or may not be logged; asking again is
        safe for feedback (the first answer counts) and gives a new decision."""
        assert self.transport is not None
        self.tag += 1
        reply: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[b"%d" % self.tag] = reply
        self.transport.write(request_frame(self.tag, kind, key, body))
        return await reply

    def _received(self, data: bytes) -> None:
        for header, body in self.frames.feed(data):
            reply = self.pending.pop(header[0], None)
            if reply is not None and not reply.done():
                reply.set_result(Answer.from_frame(header, body))

    def _lost(self) -> None:
        """The process stopped: fail what it had not answered, and start a new one (the
        worker decides in-process meanwhile)."""
        self.transport = None
        self.frames = Frames()
        for reply in self.pending.values():
            if not reply.done():
                reply.set_exception(MissingComponent(
                    "the decision process stopped before answering; ask again"))
        self.pending.clear()
        if not self.closing:
            self._restart = asyncio.get_running_loop().create_task(self._start_again())

    async def _start_again(self) -> None:
        """Start a new process, waiting longer after each failure (at most a minute). It
        waits :data:`RESTART_DELAY_SECONDS` first: a service being stopped stops the worker
        and its children at once, and the worker's shutdown cancels this meanwhile."""
        await asyncio.sleep(RESTART_DELAY_SECONDS)
        code = self.proc.poll() if self.proc is not None else None
        log.error("the decision process (pid %s) stopped (exit code %s): deciding in this "
                  "worker until a new one is ready", self.proc.pid if self.proc else None, code)
        wait = 1.0
        while not self.closing:
            try:
                if self.proc is not None and self.proc.poll() is None:
                    self.proc.kill()
                if self.proc is not None:
                    await asyncio.to_thread(self.proc.wait)
                await asyncio.to_thread(self.start)
                await self.connect()
                log.warning("a new decision process answers (pid %s)", self.pid)
                return
            except Exception:  # noqa: BLE001 - try again later
                log.exception("the decision process did not start again; next try in %g s",
                              wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 60.0)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the process and wait for it: SIGTERM (it stops once, checkpointing on its
        way out), SIGKILL after ``timeout``."""
        self.closing = True
        if self._restart is not None:
            self._restart.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.error("the decision process did not stop within %g s: killed", timeout)
                self.proc.kill()
                self.proc.wait()
        remove_socket(self.path)  # one that was starting leaves its socket behind


class _Link(asyncio.Protocol):
    """The worker's connection to its decision process."""

    def __init__(self, owner: DecisionProcess):
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost()


if __name__ == "__main__":
    sys.exit(main())
