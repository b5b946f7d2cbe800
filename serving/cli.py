"""Sub-commands of the ``serving`` stage (registered into the ``nextbest`` CLI).

``nextbest learner`` runs the one bandit learner as its own process, for deployments where
every service replica is a scorer on a shared decision log (a service started while the
learner runs finds the learner lock taken and serves as a scorer).

``nextbest serve`` runs ``bentoml serve serving.service:NextBest`` as a child process. The
child reads the same configuration: the config file travels in ``NEXTBEST_CONFIG`` and the
command-line choices (host, port, workers) in ``NEXTBEST__SERVING__*`` variables, so the
service and the CLI cannot disagree about them. SIGINT and SIGTERM are forwarded to the
child, and the command exits with the child's exit code. The child gets SIGTERM if this
process dies (even by ``kill -9``), and its workers watch both (:mod:`serving.lifecycle`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from nextbest.cli import command_group, port_number, positive_int
from nextbest.config import Settings
from nextbest.errors import ConfigError, Conflict, MissingComponent, NotFound, ValidationFailed
from serving.lifecycle import SERVE_PID_ENV, parent_death_preexec

SERVICE_TARGET = "serving.service:NextBest"


def serve_command(settings: Settings, *, host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line that starts the service on ``host:port``."""
    del settings  # the child reads its settings from the environment built below
    return [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET,
            "--host", host, "--port", str(port)]


def serve_env(*, host: str, port: int, workers: int, config: str | None, data_dir: Path,
              allow_empty: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ``base`` (default: ours) plus the serving choices."""
    env = dict(os.environ if base is None else base)
    env["NEXTBEST__SERVING__HOST"] = host
    env["NEXTBEST__SERVING__PORT"] = str(port)
    env["NEXTBEST__SERVING__WORKERS"] = str(workers)
    if allow_empty:
        env["NEXTBEST__SERVING__ALLOW_EMPTY"] = "true"
    # `bentoml serve` empties BENTOML_HOME/prometheus_multiproc_dir when it starts, so two
    # services sharing a BENTOML_HOME lose each other's metrics: one home per port.
    env.setdefault("BENTOML_HOME", str(Path(data_dir) / "serving" / str(port) / "bentoml"))
    if config:
        env["NEXTBEST_CONFIG"] = str(Path(config).resolve())
    # The service module must be importable whatever the working directory is.
    repo_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env[SERVE_PID_ENV] = str(os.getpid())  # the workers stop when this process is gone
    return env


def run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` and pass SIGINT/SIGTERM on to it until it exits; return its exit code.
    The child gets SIGTERM when this process dies, however it dies (Linux)."""
    child = subprocess.Popen(cmd, env=env, preexec_fn=parent_death_preexec())  # noqa: PLW1509

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_servable(settings: Settings, *, allow_empty: bool = False) -> None:
    """Refuse to start a service whose campaigns do not compile, or that has no champion
    models or no features, naming what is wrong and how to fix it (``--allow-empty`` starts
    it without models or features)."""
    from campaigns.definitions import compile_campaigns
    from features.store import open_store
    from serving.scoring import missing_for_serving
    from training.loader import champion_versions

    compile_campaigns(settings)
    try:
        champion_versions(settings)
        no_model = None
    except NotFound as exc:
        no_model = str(exc)
    with open_store(settings) as store:
        users = int(store.meta().get("users") or 0)
    missing = missing_for_serving(no_model, users)
    if missing and not allow_empty:
        raise MissingComponent(f"nothing to serve: {'; '.join(missing)} (or pass "
                               "--allow-empty to serve cold-start answers)")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """Handler of ``nextbest serve``."""
    host = args.host or settings.serving.host
    port = args.port or settings.serving.port
    workers = args.workers or settings.serving.workers
    allow_empty = args.allow_empty or settings.serving.allow_empty
    if settings.serving.decision_process and workers > 1:
        raise ConfigError(f"--workers {workers} with serving.decision_process: the decision "
                          "process is the one learner beside one worker", field="workers")
    check_servable(settings, allow_empty=allow_empty)
    cmd = serve_command(settings, host=host, port=port)
    env = serve_env(host=host, port=port, workers=workers, config=getattr(args, "config", None),
                    data_dir=Path(settings.paths.data_dir).resolve(), allow_empty=allow_empty)
    print(f"serving on http://{host}:{port} with {workers} worker(s)", file=sys.stderr)
    return run_forwarding_signals(cmd, env)


def run_until_signalled(stop: threading.Event, poll_seconds: float = 0.5) -> int:
    """Block until SIGINT or SIGTERM arrives (or ``stop`` is set); return the signal number
    (0 when stopped otherwise). The previous handlers are restored afterwards."""
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(poll_seconds):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else 0


def _learner(args: argparse.Namespace, settings: Settings) -> int:
    """Handler of ``nextbest learner``: learn from the decision log until SIGINT/SIGTERM.

    Raises Conflict (a one-line error, non-zero exit) when another process is the learner.
    On the way out the learner learns what is left in the log and writes a final checkpoint.
    """
    from decisions.engine import DecisionEngine  # VW loads only for this command
    from decisions.learner import open_checkpoints
    from nextbest.storage import location, redact

    settings = settings.for_point(args.decision_point)
    stop = threading.Event()
    engine = _become_learner(settings, stop) if args.standby else \
        DecisionEngine(settings, role="learner")
    if engine is None:  # a standby stopped before it took over
        return 0
    where = redact(str(location(settings, "decision_log")))
    print(f"bandit learner of {settings.decision_point} running (pid {os.getpid()}) on "
          f"{where}; stop with SIGINT or SIGTERM", file=sys.stderr, flush=True)
    watch = threading.Thread(target=_watch_lease, args=(engine, stop), daemon=True)
    watch.start()
    try:
        signum = run_until_signalled(stop)
    finally:
        engine.close()  # stops the thread: learns the rest, writes the final checkpoint
    if engine.lease_lost:
        raise Conflict("the learner lease was lost (another learner may hold it now); "
                       "stopped without a final checkpoint")
    store = open_checkpoints(settings)
    meta = store.latest()
    store.close()
    learned = meta.rewards_learned if meta else 0
    seq = meta.seq if meta else 0
    why = signal.Signals(signum).name if signum else "stopped"
    print(f"bandit learner {why}: {learned} rewards learned, log position {seq} checkpointed",
          flush=True)
    return 0


def _become_learner(settings: Settings, stop: threading.Event):
    """``nextbest learner --standby``: wait until the learner lease is free, then take it
    (None when SIGINT or SIGTERM came first)."""
    from decisions.engine import DecisionEngine

    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    announced = False
    try:
        while not stop.is_set():
            try:
                engine = DecisionEngine(settings, role="learner")
            except Conflict:
                if not announced:
                    print(f"standby learner (pid {os.getpid()}) waiting for the learner lease",
                          file=sys.stderr, flush=True)
                    announced = True
                stop.wait(settings.storage.lease_poll_seconds)
                continue
            print(f"standby learner (pid {os.getpid()}) took over the learner lease",
                  file=sys.stderr, flush=True)
            return engine
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch_lease(engine, stop: threading.Event) -> None:
    """Stop the learner command when its learner thread lost the lease."""
    while not stop.wait(0.2):
        if engine.lease_lost:
            stop.set()


def _erase(args: argparse.Namespace, settings: Settings) -> int:
    """Handler of ``nextbest data erase``: erase the named (and with --pending, the listed)
    users everywhere; print what was removed."""
    from serving.erasure import erase_everywhere

    if not args.user_ids and not args.pending:
        raise ValidationFailed("name at least one USER_ID, or pass --pending", field="user_ids")
    report = erase_everywhere(settings, args.user_ids, pending=args.pending)
    print("\n".join(report.lines()))
    return 0


def _register_erase(sub: argparse._SubParsersAction) -> None:
    data = command_group(sub, "data", help="import platform tables, generate a synthetic "
                                           "marketplace, erase users")
    erase = data.add_parser(
        "erase", help="erase users from every store and file (as DELETE /users/{id} does)",
        description="Remove the users from every raw table in paths.raw_dir (orders they "
                    "sold stay, with seller_id blanked), the import rejects, the feature "
                    "partitions, the latent traits, MLflow runs' validation predictions, "
                    "reports, delivery files, the online store, the decision log and the "
                    "campaign store (SQLite: secure_delete, WAL emptied), and put their "
                    "salted hashes on the store's erasure list so nothing re-creates them. "
                    "A failure names the place, changes no file and exits 5.")
    erase.add_argument("user_ids", nargs="*", metavar="USER_ID", help="users to erase")
    erase.add_argument("--pending", action="store_true",
                       help="also erase every user on the erasure list still found in the "
                            "raw tables or feature partitions (e.g. re-imported data)")
    erase.set_defaults(handler=_erase)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest serve``, ``nextbest learner``, ``nextbest data erase``, ``score``
    (serving/cli_score.py), ``bento build`` (serving/cli_bento.py), ``keys`` and ``audit``
    (serving/cli_trust.py)."""
    from serving import cli_bento, cli_score, cli_trust

    _register_erase(sub)
    cli_bento.register(sub)
    cli_score.register(sub)
    cli_trust.register(sub)
    parser = sub.add_parser("serve", help="run the BentoML service (score, next best action)")
    parser.add_argument("--host", default=None,
                        help="address to bind (default: serving.host, 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=None,
                        help="port to listen on (default: serving.port, 3000)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="worker processes; one learns, the others score (default: 1)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="start even without champion models or features (cold-start "
                             "answers for everyone; /readyz says what is missing)")
    parser.set_defaults(handler=_serve)
    learner = sub.add_parser(
        "learner", help="run the single bandit learner as its own process",
        description="Learn every reward of one decision point in the decision log "
                    "(paths.decision_log) and publish checkpoints (paths.bandit_dir; with storage.url, both in PostgreSQL) "
                    "until SIGINT or SIGTERM, then checkpoint once more. Services started "
                    "meanwhile on the same log become scorers. Fails if another process is "
                    "already the learner, unless --standby.")
    learner.add_argument("--standby", action="store_true",
                         help="wait for the learner lease and take over when its holder dies")
    learner.add_argument("--decision-point", default=None, metavar="NAME",
                         help="the decision point to learn (one learner each; default "
                              "buyer_offer; see `nextbest config`, decision_points)")
    learner.set_defaults(handler=_learner)
