"""The BentoML 1.4 service: a thin HTTP adapter over the store, the models and the engine.

Start it with ``nextbest serve`` or ``bentoml serve serving.service:NextBest``. The routes
are a FastAPI app mounted into the BentoML service (typed path parameters and methods other
than POST), so BentoML still serves ``/healthz``, ``/livez``, ``/readyz``, ``/metrics`` and
``/docs.json`` (which includes the mounted routes); the middlewares of
:mod:`serving.middleware` give ``/readyz`` and ``/docs.json`` nextbest's content.

Concurrency: every route is ``async`` and calls the engine on the event-loop thread, so the
Vowpal Wabbit workspace (not thread-safe) and the SQLite connections are only ever touched
by one thread per process. With ``serving.workers`` = N > 1, BentoML starts N processes;
each builds its engine with role ``auto``: the engine takes the learner file lock in exactly
one of them (which learns in a background thread), and the others become scorers that log
decisions and feedback and reload the learner's published checkpoints (see
:func:`open_engine`). Each worker loads the champion models itself and keeps them current
through its housekeeping loop (:mod:`serving.status`). Each worker stops when its parent or
``nextbest serve`` dies, even by ``kill -9`` (:mod:`serving.lifecycle`).

Errors: request bodies are pydantic models that forbid unknown fields and NaN/Infinity;
FastAPI's validation errors (all of them at once) and
:class:`~nextbest.errors.NextbestError` become 4xx bodies ``{"error", "detail", "field"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import bentoml
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from campaigns.layer import CampaignLayer, Receipt
from campaigns.report import CampaignReport, campaign_report
from campaigns.store import CampaignStore
from decisions.points import DecisionPoints
from decisions.users import try_load_champions
from features.erasure import export_files
from features.segmentation import PROSPECTIVE
from features.store import Preferences, open_store
from nextbest import __version__
from nextbest.audit import AuditEntry, open_audit
from nextbest.config import Settings, load_settings
from nextbest.errors import (
    Conflict,
    MissingComponent,
    NextbestError,
    NotFound,
    ValidationFailed,
)
from nextbest.storage import location
from serving import middleware
from serving.auth import KeyRing, Scope
from serving.bento import BANDIT, bundle_from_arguments, load_bundled_champions, seed_bandit
from serving.decider import (
    DECIDE,
    DECIDED,
    FEEDBACK,
    FORGET,
    LEARN_STEP,
    STATS,
    DecisionProcess,
    board_dir,
    erased_default,
    forget_users,
    open_engine,
    open_replica,
    remembered_users,
    user_for,
)
from serving.erasure import Eraser
from serving.guard import Guard, GuardConfig, configure, flat_routes
from serving.lifecycle import watch_parent
from serving.loopwatch import LoopWatchdog, StallTracer, quiet_collector
from serving.metrics import DomainMetrics, metrics_text
from serving.schemas import (
    BATCH,
    ONE,
    BehaviourEvent,
    CampaignSummary,
    Decision,
    ErasureResponse,
    ErrorBody,
    EventsResult,
    ExplanationResponse,
    ExportResponse,
    FeedbackRequest,
    FeedbackResult,
    FieldError,
    Item,
    ItemResult,
    ModelsResponse,
    NextBestActionRequest,
    NoopRequest,
    OutboxPage,
    PreferencesRequest,
    PreferencesResponse,
    ReceiptRequest,
    ReviewDecisionRequest,
    ReviewItem,
    ReviewListResponse,
    RunReport,
    ScoreResponse,
    SellerScoreResponse,
    TagRemovedResponse,
    WorkerModels,
    events_request,
    score_request,
)
from serving.scoring import Scorer, missing_for_serving
from serving.status import WorkerBoard, WorkerStatus
from serving.traffic import install as install_request_timeout
from training.labels import LTV_MODEL, SENTIMENT_MODEL
from training.loader import CHURN, PROPENSITY, ChampionModels, load_champions

log = logging.getLogger(__name__)
# BentoML's request timeout leaves a live timer per request for the whole timeout; this one
# cancels it (serving/traffic.py).
install_request_timeout()

# Set when the service runs from a bento built by `nextbest bento build` (serving/bento.py):
# the models, the bandit's checkpoint and the configuration it carries.
BUNDLE = bundle_from_arguments()
SETTINGS: Settings = load_settings() if BUNDLE is None else BUNDLE.settings()
# Every route may answer these (401/403: the API key, 413: the body size, serving/guard.py).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 422)}
USER_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 409, 410, 413, 422)}
ERASURE_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 422, 503)}
# 503: the decision process (serving.decision_process) stopped before it answered.
DECISION_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 422, 503)}
USER_ID = Path(min_length=1, max_length=200)
# Which API key scope each route needs (serving/auth.py); probes and /docs.json are open.
ROUTE_SCOPES: dict[tuple[str, str], Scope] = {
    ("POST", "/score"): "platform", ("POST", "/next_best_action"): "platform",
    ("POST", "/feedback"): "platform", ("POST", "/events"): "platform",
    ("POST", "/items"): "platform", ("POST", "/messages/{message_id}/status"): "platform",
    ("GET", "/users/{user_id}/explanation"): "platform", ("POST", "/noop"): "platform",
    ("GET", "/campaigns"): "operator", ("POST", "/campaigns/{name}/run"): "operator",
    ("GET", "/campaigns/{name}/report"): "operator", ("GET", "/outbox"): "operator",
    ("GET", "/bandit/stats"): "operator",
    ("GET", "/users/{user_id}/preferences"): "admin",
    ("PUT", "/users/{user_id}/preferences"): "admin", ("DELETE", "/users/{user_id}"): "admin",
    ("GET", "/users/{user_id}/export"): "admin",
    ("DELETE", "/users/{user_id}/tags/{tag}"): "admin", ("POST", "/models/reload"): "admin",
    ("GET", "/audit"): "admin",
}
ScoreRequest = score_request(SETTINGS.serving.max_batch)
EventsBody = events_request(SETTINGS.serving.max_batch)
HOUSEKEEPING_SECONDS = 0.5
# Warmed scores put in the score cache per turn of the event loop (a few ms).
WARM_SLICE = 5_000

API_DESCRIPTION = """\
Precision marketing for second-hand marketplaces: per-user tiers, segments, tags, churn and
purchase-propensity scores (`/score`), and the next best action chosen by a contextual
bandit that learns from conversion feedback (`/next_best_action`, `/feedback`). Behaviour
events fire campaign triggers (`/events`). Users' rights: preferences, explanation, export
and erasure (`/users/{user_id}/...`). Errors are `{"error", "detail", "field", "errors"}`
with a 4xx status naming every invalid field."""

app = FastAPI(title="nextbest", version=__version__, description=API_DESCRIPTION,
              openapi_url=None, docs_url=None, redoc_url=None)
# BentoML hands each route its service instance through a plain (sync) dependency, which
# FastAPI runs in a worker thread for every request: a thread hop per request (and a wait
# for a thread to start whenever the pool grows). The same lookup as a coroutine runs on
# the loop.
_BENTOML_SERVICE = importlib.import_module("_bentoml_sdk.service")
_current_service = _BENTOML_SERVICE.get_current_service


async def _current_service_on_the_loop() -> Any:
    """The running service instance (BentoML's ``get_current_service``, without a thread)."""
    return _current_service()


def warm_routes(asgi: FastAPI) -> None:
    """Have FastAPI build every route's request handling now, at start-up: it builds it for
    all routes at once when it matches its first request (60-80 ms on this host), which
    stalled the event loop under the first request after each start."""
    for path in ("/score", "/nextbest-warm-up"):  # a route, and a path matching none
        scope = {"type": "http", "path": path, "method": "POST", "root_path": "",
                 "headers": [], "query_string": b""}
        for route in asgi.routes:
            route.matches(scope)


def service_on_the_loop(decorate: Callable[[type], type]) -> Callable[[type], type]:
    """``decorate`` (BentoML's ``asgi_app``) giving every route the coroutine above as its
    ``self`` dependency. BentoML writes ``Depends(get_current_service)`` into each route's
    signature while it decorates the class, so the coroutine stands in for the function
    for that moment. (FastAPI's ``dependency_overrides`` did the same, but resolves an
    overridden dependency again on every request: 3% of a request's CPU.)"""
    def apply(cls: type) -> type:
        _BENTOML_SERVICE.get_current_service = _current_service_on_the_loop
        try:
            return decorate(cls)
        finally:
            _BENTOML_SERVICE.get_current_service = _current_service
    return apply


def error_field(loc: tuple[Any, ...]) -> str:
    """The dotted name of a field from a FastAPI error location (``body.context.hour``;
    the tag of a body with several shapes is not part of it)."""
    parts = [str(part) for part in loc if part not in ("body", "query", "path", ONE, BATCH)]
    return ".".join(parts) or "body"


def _reason(error: dict[str, Any], request: Request) -> str:
    """Why one field is invalid, in words (a missing or wrong content type named as such)."""
    if error.get("type") == "json_invalid":
        return f"malformed JSON ({(error.get('ctx') or {}).get('error', 'not valid JSON')})"
    content_type = request.headers.get("content-type")
    if tuple(error.get("loc", ())) == ("body",) and "json" not in (content_type or ""):
        told = f"content-type {content_type!r}" if content_type else "no content-type header"
        return (f"the body was not read as JSON ({told}): send the header "
                "content-type: application/json")
    return str(error.get("msg", "invalid"))


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A malformed or invalid body: 422 naming every bad field and why."""
    errors = exc.errors() or [{"loc": ("body",), "msg": "invalid request"}]
    fields = [FieldError(field="body" if e.get("type") == "json_invalid"
                         else error_field(tuple(e.get("loc", ("body",)))),
                         reason=_reason(e, request)) for e in errors]
    detail = "; ".join(f"{f.field}: {f.reason}" for f in fields)
    body = ValidationFailed(detail, field=fields[0].field).to_dict()
    body["errors"] = [f.model_dump() for f in fields]
    return JSONResponse(body, status_code=422)


@app.exception_handler(NextbestError)
async def _user_error(_: Request, exc: NextbestError) -> JSONResponse:
    """A user error raised by the store, the models or the engine: its own status."""
    return JSONResponse(exc.to_dict(), status_code=exc.http_status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods, in the same body shape as every other error. A body
    FastAPI cannot even decode (not UTF-8) is a 422 on ``body``, as malformed JSON is."""
    if exc.status_code == 400:
        detail = f"body: the body could not be read as JSON ({exc.detail})"
        return JSONResponse(ValidationFailed(detail, field="body").to_dict(), status_code=422)
    kind = "not_found" if exc.status_code == 404 else "bad_request"
    return JSONResponse({"error": kind, "detail": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def openapi_info(spec: dict[str, Any]) -> dict[str, Any]:
    """The framework's spec with nextbest's own title, version, description and contact."""
    spec["info"] = {"title": "nextbest", "version": __version__,
                    "description": API_DESCRIPTION,
                    "contact": {"name": "nextbest", "url": "https://github.com/nextbest"}}
    return spec


def carry_bundled_bandits(cls: type) -> type:
    """Declare each bundled checkpoint of a decision point other than the default one as a
    model of the service (``bandit_<point>_model``, as ``bandit_model`` is the default
    point's), so the bento references it and ``bentoml containerize`` copies it along."""
    for key in BUNDLE.models if BUNDLE else {}:
        if key.startswith(f"{BANDIT}-"):
            setattr(cls, f"{key.replace('-', '_')}_model", BUNDLE.reference(key))
    return cls


@bentoml.service(
    name="NextBest",
    workers=SETTINGS.serving.workers,
    http={"host": SETTINGS.serving.host, "port": SETTINGS.serving.port},
    traffic={"timeout": 30},
    # BentoML's request metrics and access log name raw paths (a series and a log line per
    # user id); serving/guard.py records both under route templates instead.
    metrics={"enabled": False},
    logging={"access": {"enabled": False}},
    # Tracing off: every URL excluded from BentoML's OpenTelemetry middleware.
    **({} if SETTINGS.serving.tracing else {"tracing": {"excluded_urls": ["."]}}),
)
@service_on_the_loop(bentoml.asgi_app(app, path="/"))
@carry_bundled_bandits
class NextBest:
    """Scores users and chooses their next best action; learns from the feedback."""

    # The models a bento built by `nextbest bento build` carries (None from source).
    churn_model = BUNDLE.reference(CHURN) if BUNDLE else None
    propensity_model = BUNDLE.reference(PROPENSITY) if BUNDLE else None
    ltv_model = BUNDLE.reference(LTV_MODEL) if BUNDLE else None
    sentiment_model = BUNDLE.reference(SENTIMENT_MODEL) if BUNDLE else None
    bandit_model = BUNDLE.reference(BANDIT) if BUNDLE else None

    def __init__(self) -> None:
        # First: a worker whose `nextbest serve` is killed must not outlive it.
        self.parent_watch = watch_parent()
        self.settings = SETTINGS
        self.store = open_store(self.settings)
        self.scorer = Scorer(self.settings, self.store, *self._champions(),
                             registry=BUNDLE is None)
        # A bento's scorer never asks the registry: it carries no LTV model (yet), so its
        # ltv_12m is null.
        self.scorer.use_ltv(self.scorer.load_ltv())
        if BUNDLE is not None:
            seed_bandit(self.settings, BUNDLE)
        # With serving.decision_process, decisions and feedback go to a process of their
        # own, which holds the inline learner (serving/decider.py): it starts first, and
        # this worker's engines are scorer replicas for what it still decides itself.
        self.decider = self._start_decider()
        # One engine per decision point (buyer_offer, seller_offer, ...); self.engine is the
        # default point's.
        self.points = DecisionPoints.open(
            self.settings, open_engine if self.decider is None else open_replica)
        self.engine = self.points.default
        self.campaigns = CampaignLayer(self.settings, self.points, self.scorer)
        self.metrics = DomainMetrics(self.settings)
        self.board = WorkerBoard(board_dir(self.settings))
        self.generation = self.board.generation()
        self.erasures = self.board.erasures()
        self._housekeeping: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._checked_registry = time.monotonic()
        self._last_sweep = time.monotonic()
        status = self.status()
        if status.missing and not self.settings.serving.allow_empty:
            raise RuntimeError(f"nextbest cannot serve: {'; '.join(status.missing)} (or "
                               "start it with --allow-empty)")
        middleware.register("status", self.status)
        middleware.register("openapi", openapi_info)
        self.audit = open_audit(self.settings)
        self.keys = KeyRing.load(self.settings)
        configure(GuardConfig(
            routes=flat_routes(list(app.routes)), scopes=ROUTE_SCOPES, keys=self.keys,
            enabled=self.settings.auth.enabled, metrics_open=self.settings.auth.metrics_open,
            max_body_bytes=self.settings.serving.max_body_bytes,
            access_log=self.settings.serving.access_log, observe=self.metrics.observe))
        if not self.settings.auth.enabled:
            log.warning("auth.enabled is false: every route is open to anyone who can reach "
                        "the port; for local experiments only")
        elif not self.keys.keys:
            log.warning("no API keys: every route but the probes answers 401; create one "
                        "with `nextbest keys create --id NAME --scope platform`")
        self.publish()
        log.info("nextbest service ready: engine role %s, models %s", self.engine.role,
                 self.scorer.model_versions())

    def _start_decider(self) -> DecisionProcess | None:
        """The decision process, started and listening (None: decide in this worker)."""
        if not self.settings.serving.decides_apart:
            return None
        decider = DecisionProcess(self.settings, BUNDLE).start()
        log.info("decisions and feedback go to the decision process")
        return decider

    def _champions(self) -> tuple[ChampionModels | None, str | None]:
        """The champions from the bento's model store (in a bento), else from the registry;
        with why there are none."""
        if BUNDLE is None:
            return try_load_champions(self.settings)
        log.info("serving the models of the bento: %s", BUNDLE.versions())
        return load_bundled_champions(BUNDLE), None

    # --- status and housekeeping ------------------------------------------------------------

    def status(self) -> WorkerStatus:
        """What this worker serves now, and what readiness lacks (in words)."""
        meta = self.store.meta()
        no_model = None if self.scorer.champions is not None else (
            "run `nextbest train churn` and `nextbest train propensity`")
        missing = missing_for_serving(no_model, int(meta.get("users") or 0))
        as_of = meta.get("as_of")
        return WorkerStatus(
            pid=os.getpid(), ready=not missing or self.settings.serving.allow_empty,
            models=self.scorer.model_versions(), features_as_of=str(as_of)[:10] if as_of else None,
            store_users=int(meta.get("users") or 0), policy_version=self.engine.policy_version,
            engine_role=self.engine.role, missing=missing, reload_generation=self.generation,
            decision_process=self.decider.pid if self.decider is not None else None)

    def publish(self) -> WorkerStatus:
        """Publish this worker's status on the board and in the metrics."""
        status = self.status()
        self.board.publish(status)
        self.metrics.models(status.models)
        self.metrics.freshness(status.features_as_of, self.points.learner_lag())
        return status

    async def _forget_erased(self) -> int:
        """Drop what this worker keeps in memory (cached scores, decisions awaiting feedback)
        about users on the erasure list: an erasure made by another worker or replica.
        The lookup (a salted hash per user kept: 44 ms for 20,000 users) runs in a worker
        thread; the ids are collected and forgotten on the loop, which owns those caches."""
        kept = remembered_users(self.scorer, self.points)
        erased = await asyncio.to_thread(self.store.erased_among, kept)
        forget_users(self.scorer, self.points, erased)
        return len(erased)

    @bentoml.on_startup
    async def start_housekeeping(self) -> None:
        """Start the loop that sweeps, follows model reloads and publishes the status, and
        the watchdog of event-loop stalls."""
        warm_routes(app)
        if self.decider is not None:
            await self.decider.connect()
        log.info("event loop: %s", type(asyncio.get_running_loop()).__module__)
        await self._warm_scores()
        self._housekeeping = asyncio.create_task(self._housekeep_forever())
        # Start-up objects out of collections; the configured thresholds.
        quiet_collector(self.settings.serving.gc_thresholds)
        stall = self.metrics.loop_stall
        for cause in ("all", "own", "blocked", "gc"):  # in /metrics before any stall
            stall.labels(cause).set(0.0)
        self.metrics.recent_stall_seconds(0.0, 0.0, 0.0)
        trace_ms = self.settings.serving.stall_trace_ms
        self._watchdog = asyncio.create_task(LoopWatchdog(
            stall.labels("all").set, stall.labels("own").set, stall.labels("gc").set,
            self.metrics.collections,
            tracer=StallTracer(trace_ms / 1e3).start() if trace_ms else None,
            on_recent=self.metrics.recent_stall_seconds,
            on_blocked=stall.labels("blocked").set).run())

    async def _housekeep_forever(self) -> None:
        """Every half second: follow a reload asked of any worker; every
        ``model_refresh_seconds``: ask the registry for new champions; inline role, every
        ``sweep_seconds``: give the default reward to decisions whose window closed (the
        learner role's thread sweeps itself; scorers leave it to it), and checkpoint when
        learning has been unsaved for ``bandit.checkpoint_seconds``."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self._housekeep()
            except Exception:  # keep going; the next round retries
                log.exception("housekeeping failed")

    async def _housekeep(self) -> None:
        """One round of :meth:`_housekeep_forever`."""
        now = time.monotonic()
        generation = self.board.generation()
        due = now - self._checked_registry >= self.settings.serving.model_refresh_seconds
        erasures = self.board.erasures()
        if erasures != self.erasures or due:
            self.erasures = erasures
            await self._forget_erased()
        if generation != self.generation or due:
            self._checked_registry = now
            # A bento's models are fixed: it never asks the registry.
            newer = None if BUNDLE else await asyncio.to_thread(self.scorer.newer_champions)
            await self._serve_models(newer)
            for engine in self.points:  # a new features build's sold comparables
                if engine.pricing:
                    await asyncio.to_thread(engine.load_comparables)
            self.generation = generation
            self.publish()
        sweep = now - self._last_sweep >= self.settings.bandit.sweep_seconds
        if sweep:
            self._last_sweep = now
        for engine in self.points:
            if engine.role != "inline":
                continue  # the learner role's thread sweeps itself; scorers leave it to it
            if sweep:  # the SQL in a thread, on the sweeper's own connection
                await asyncio.to_thread(engine.sweep_rows)
            # What the sweep (or a writer ahead of a feedback) left unlearned, a step at a
            # time, so requests are served between steps.
            while engine.learn_pending(LEARN_STEP) == LEARN_STEP:
                await asyncio.sleep(0)
        self.points.checkpoint_if_due()  # inline role: the time schedule, not only the count

    async def _warm_scores(self) -> None:
        """Cache the scores of the store's users ahead of their requests (as many as the
        cache keeps): computed together in a thread, put in the cache on the loop a slice at
        a time. Without it a fresh service, or one that just changed models, scores each
        user on their first request, and under load its first seconds queue (a 298 ms loop
        stall at 894 decisions/s in benchmarks/serve.py). Best effort: a failure is logged
        and requests score as they come."""
        began = time.perf_counter()
        try:
            warm = await asyncio.to_thread(self.scorer.warm_scores)
        except Exception:  # noqa: BLE001 - requests still score themselves
            log.exception("the score cache was not warmed")
            return
        if warm is None:
            return
        for start in range(0, len(warm.entries), WARM_SLICE):
            self.scorer.fill(warm, start, WARM_SLICE)
            await asyncio.sleep(0)
        log.info("cached the scores of %d users ahead of requests in %.1f s",
                 len(warm.entries), time.perf_counter() - began)

    async def _serve_models(self, champions: ChampionModels | None) -> None:
        """Serve ``champions`` (None: keep those in hand) and the registry's LTV and seller
        churn champions when they changed; every load off the event loop."""
        if champions is not None:
            log.info("now serving models %s", self.scorer.use(champions))
            gc.freeze()  # the new models are long-lived: out of collections too
            await self._warm_scores()  # the old models' cached scores are gone
        ltv = await asyncio.to_thread(self.scorer.load_ltv)
        if ltv is not None:
            self.scorer.use_ltv(ltv)
            log.info("now serving ltv v%s", ltv.version)
        seller = await asyncio.to_thread(self.scorer.refresh_seller_churn)
        if seller is not None:
            log.info("now serving seller_churn v%s", seller)

    async def __is_ready__(self) -> bool:
        """Ready when models and features are loaded (or serving empty was allowed)."""
        return self.status().ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop housekeeping, checkpoint and close the engine, close the store."""
        for task in (self._housekeeping, self._watchdog):
            if task is not None:
                task.cancel()
        if self.decider is not None:
            self.decider.close()
        self.parent_watch.stop()
        self.board.withdraw(os.getpid())
        self.campaigns.close()
        self.audit.close()
        self.points.close()
        with contextlib.suppress(AttributeError):
            self.store.close()

    # --- scoring -------------------------------------------------------------------------

    @app.post("/score", response_model=ScoreResponse | list[ScoreResponse] | SellerScoreResponse
              | list[SellerScoreResponse], responses=ERRORS)
    async def score(self, body: ScoreRequest) -> (ScoreResponse | list[ScoreResponse]
                                                  | SellerScoreResponse
                                                  | list[SellerScoreResponse]):
        """Tier, segment, tags and model scores of one user or a batch (cold start if unknown);
        a batch holds at most ``serving.max_batch`` ids. With ``subject: seller``: seller
        tier, seller tags and seller churn probability instead."""
        if body.subject == "seller":
            answers = [self._prospect(answer) for answer in self.scorer.seller_answers(
                [body.user_id or ""] if body.user_ids is None else body.user_ids)]
            return answers[0] if body.user_ids is None else answers
        if body.user_ids is None:
            return self.scorer.score(body.user_id or "")
        return self.scorer.score_many(body.user_ids)

    def _prospect(self, answer: SellerScoreResponse) -> SellerScoreResponse:
        """A user without a seller tier who started a listing since the last features build
        and has not finished one (the campaign event store says so) is a prospective seller
        now, not at the next build."""
        if answer.seller_tier is not None:
            return answer
        with self.campaigns.lock:
            started = self.campaigns.store.unfinished_listing(answer.user_id)
        return answer.model_copy(update={"seller_tier": PROSPECTIVE}) if started else answer

    # --- the decision loop -----------------------------------------------------------------

    @app.post("/next_best_action", response_model=Decision, responses=DECISION_ERRORS)
    async def next_best_action(self, body: NextBestActionRequest,
                               request: Request) -> Decision | Response:
        """Choose, log durably and return the next best action for a user in a context, at
        the ``decision_point`` named (default ``buyer_offer``; ``seller_offer`` decides for
        the user as a consignor, from their seller tier and seller features)."""
        if self.decider is not None and self.decider.ready:
            answer = await self.decider.ask(DECIDE, await request.body())
            if answer.outcome == DECIDED:  # not an error, nor an erased user's default
                self.metrics.decided(answer.arm, answer.tier)
            return Response(answer.body, status_code=answer.status,
                            media_type="application/json")
        engine, user = user_for(self.points, self.scorer, body)
        if not user.known and self.store.is_erased(body.user_id):
            return erased_default(body, engine)
        choice = engine.choose(user, body.context)
        async with engine.gate.writing():  # awaited, never blocking, while the WAL restarts
            decision = engine.record(choice)
        self.metrics.decided(decision.action, user.tier)
        return decision

    @app.post("/feedback", response_model=FeedbackResult, responses=DECISION_ERRORS)
    async def feedback(self, body: FeedbackRequest,
                       request: Request) -> FeedbackResult | Response:
        """Join a reward to its decision: accepted, duplicate or late (recorded, not learned).
        Revenue without a conversion, or above ``bandit.reward.max_revenue_multiple`` x the
        decision's item price (``max_revenue`` without one), is a 422; feedback
        contradicting the one already accepted is a 409 saying how it differs (the first
        answer counts). The learned reward is clipped to the configured range; the API key
        that sent the feedback is kept with it in the decision log."""
        if self.decider is not None and self.decider.ready:
            answer = await self.decider.ask(FEEDBACK, await request.body(), actor(request))
            if answer.status == 200:
                self.metrics.rewarded(answer.arm, answer.tier, answer.outcome or "",
                                      body.converted)
            return Response(answer.body, status_code=answer.status,
                            media_type="application/json")
        async with self.points.writing():
            result = self.points.feedback(body.event_id, body.converted, body.revenue,
                                          point=body.decision_point, key_id=actor(request))
        self.metrics.rewarded(result.action, result.tier, result.status, body.converted)
        return result

    @app.post("/events", response_model=EventsResult, responses=ERRORS)
    async def events(self, body: EventsBody) -> EventsResult:
        """Keep one event, or ``{"events": [...]}`` (at most ``serving.max_batch``), and run
        the campaign triggers they fire. The same event posted again is kept once and fires
        nothing; every firing is in the outbox (a message, or why none) before this
        answers."""
        events = [body] if isinstance(body, BehaviourEvent) else body.events
        async with self.points.writing():  # a firing decides; a purchase is a reward
            result = self.campaigns.on_events(events)
        for message in result.messages:
            if message.decision_id is not None:
                self.metrics.decided(message.arm, None)
        return result

    @app.post("/items", response_model=ItemResult, responses=ERRORS)
    async def items(self, body: Item) -> ItemResult:
        """Upsert a listing: a new item notifies its seller's followers; stock falling to
        ``campaigns.low_stock_threshold`` notifies its recent viewers, once per user."""
        async with self.points.writing():  # a firing decides
            return self.campaigns.on_item(body)

    # --- campaigns and the outbox -----------------------------------------------------------

    @app.get("/campaigns", response_model=list[CampaignSummary], responses=ERRORS)
    async def list_campaigns(self) -> list[CampaignSummary]:
        """Every configured campaign with its outbox rows by status."""
        return [CampaignSummary(**row) for row in self.campaigns.summary()]

    @app.post("/campaigns/{name}/run", response_model=RunReport, responses=ERRORS)
    async def run_campaign(self, request: Request,
                           name: str = Path(min_length=1, max_length=100),
                           dry_run: bool = False) -> RunReport:
        """Run a scheduled campaign over its audience now (in a worker thread with its own
        store connection, so requests keep being answered meanwhile)."""
        self.campaigns.get(name)  # unknown or disabled: a 4xx before any work

        def run() -> RunReport:
            layer = CampaignLayer(self.settings, self.points, self.scorer,
                                  CampaignStore(location(self.settings, "campaign_store")))
            try:
                return layer.run(name, dry_run=dry_run)
            finally:
                layer.close()

        report = await asyncio.to_thread(run)
        if not dry_run:
            self.audit.append("campaign_run", actor=actor(request), details={
                "campaign": name, "slot": report.slot, "audience": report.audience,
                "messages": report.messages})
        return report

    @app.get("/campaigns/{name}/report", response_model=CampaignReport, responses=ERRORS)
    async def campaign_report(self, name: str = Path(min_length=1, max_length=100)
                              ) -> CampaignReport:
        """The campaign's funnel, attributed revenue and lift over its own holdout."""
        self.settings.campaigns.campaign(name)

        def report() -> CampaignReport:
            store = CampaignStore(location(self.settings, "campaign_store"))
            try:
                return campaign_report(self.settings, store, name, now=datetime.now(UTC))
            finally:
                store.close()

        return await asyncio.to_thread(report)

    @app.post("/messages/{message_id}/status", response_model=Receipt, responses=ERRORS)
    async def message_status(self, body: ReceiptRequest,
                             message_id: str = Path(min_length=1, max_length=100)) -> Receipt:
        """A delivery receipt from the channel: delivered, opened, clicked, bounced or
        unsubscribed (which withdraws the user's consent to that channel). Each status of a
        message counts once; purchases after a delivered message convert it."""
        return self.campaigns.on_receipt(message_id, body.status, body.ts)

    @app.get("/outbox", response_model=OutboxPage, responses=ERRORS)
    async def outbox(self, user_id: str | None = Query(None, max_length=200),
                     campaign: str | None = Query(None, max_length=100),
                     status: Literal["pending", "cancelled", "suppressed", "sent",
                                     "failed"] | None = None,
                     limit: int = Query(100, ge=1, le=1000),
                     after: str | None = Query(None, max_length=100)) -> OutboxPage:
        """Outbox rows, oldest first, filtered by user, campaign and status; page with
        ``after`` (the ``next_after`` of the previous page)."""
        rows = self.campaigns.store.messages(user_id=user_id, campaign=campaign,
                                             status=status, after=after, limit=limit)
        return OutboxPage(messages=rows,
                          next_after=rows[-1].message_id if len(rows) == limit else None)

    # --- the user's rights -----------------------------------------------------------------

    @app.put("/users/{user_id}/preferences", response_model=PreferencesResponse,
             responses=USER_ERRORS)
    async def put_preferences(self, body: PreferencesRequest, request: Request,
                              user_id: str = USER_ID) -> PreferencesResponse:
        """Change a user's consent; opting out stops personalisation and learning at once.
        The flags sent are merged into the stored ones atomically (two replicas changing
        different flags at once both count); an erased user is 410 (never re-created)."""
        changes = body.model_dump(exclude_none=True)
        stored = self.store.update_preferences(user_id, changes)
        self.audit.append("preferences_changed", actor=actor(request), user_id=user_id,
                          details=changes)
        return _preferences(user_id, stored)

    @app.get("/users/{user_id}/preferences", response_model=PreferencesResponse,
             responses=ERRORS)
    async def get_preferences(self, user_id: str = USER_ID) -> PreferencesResponse:
        """The user's consent as stored (from the API or the platform's preferences table);
        a user who never stated any has the defaults and no ``updated_ts``."""
        return _preferences(user_id, self.store.get_preferences(user_id))

    @app.get("/users/{user_id}/explanation", response_model=ExplanationResponse,
             responses=ERRORS)
    async def explanation(self, user_id: str = USER_ID) -> ExplanationResponse:
        """Why this tier, segment and tags: the rules and the feature values behind them."""
        return self.scorer.explain(user_id)

    @app.delete("/users/{user_id}", response_model=ErasureResponse, responses=ERASURE_ERRORS)
    async def erase(self, request: Request, user_id: str = USER_ID) -> ErasureResponse:
        """Erase the user from every store and file (serving/erasure.py): the online store
        (the user's salted hash goes on the erasure list, so nothing re-creates them), the
        decision log, the campaign store, the raw tables, feature partitions, MLflow runs'
        validation predictions, reports and the channels' delivery files; SQLite with
        ``secure_delete`` and an emptied WAL. Every worker forgets the user. A failure is
        503 naming the place (``field``), with the files unchanged."""
        eraser = Eraser(self.settings, self.store, decisions=self.points,
                        campaigns=self.campaigns.store, campaign_lock=self.campaigns.lock)
        try:
            report = await asyncio.to_thread(eraser.erase, [user_id])
        finally:
            self.scorer.forget(user_id)
            if self.decider is not None and self.decider.ready:
                # One that stops meanwhile forgets everything: its successor starts empty.
                with contextlib.suppress(MissingComponent):
                    await self.decider.ask(FORGET, user_id.encode())
            await asyncio.to_thread(self.board.bump_erasures)
        self.audit.append("user_erased", actor=actor(request), user_id=user_id, details={
            "store_records": report.store_records, "decisions": report.decisions or 0,
            "campaign_rows": report.campaign_rows or 0, "file_rows": report.rows_removed,
            "files": len(report.files)})
        return ErasureResponse(user_id=user_id, store_records=report.store_records,
                               decisions=report.decisions or 0,
                               campaign_rows=report.campaign_rows or 0,
                               file_rows=report.rows_removed, files=len(report.files))

    @app.get("/users/{user_id}/export", response_model=ExportResponse, responses=ERRORS)
    async def export(self, request: Request, user_id: str = USER_ID) -> ExportResponse:
        """Everything held about the user: store record and preferences, decisions with
        their rewards, kept events, timers, messages with their attempts and receipts, raw
        orders (bought and sold), listings, events and preferences, every feature partition's
        row (the feature history), and the audit entries about them (this export's
        included)."""
        self.audit.append("user_exported", actor=actor(request), user_id=user_id)
        with self.campaigns.lock:
            campaigns = self.campaigns.store.export_user(user_id)
        paths = self.settings.paths
        files = await asyncio.to_thread(export_files, user_id, raw_dir=paths.raw_dir,
                                        features_dir=paths.features_dir,
                                        latent_dir=paths.latent_dir)
        return ExportResponse(user_id=user_id, store=self.store.export(user_id),
                              decisions=self.points.export_user(user_id), campaigns=campaigns,
                              raw=files["raw"], features=files["features"],
                              latent=files["latent"],
                              audit=self.audit.entries(user_id=user_id, limit=1_000_000))

    @app.delete("/users/{user_id}/tags/{tag}", response_model=TagRemovedResponse,
                responses=ERRORS)
    async def remove_tag(self, user_id: str = USER_ID,
                         tag: str = Path(min_length=1, max_length=100)) -> TagRemovedResponse:
        """The user removes a tag that describes them; it stays removed after rebuilds."""
        record = self.store.get(user_id)
        if record is None:
            raise NotFound(f"user {user_id!r} is not in the online store", field="user_id")
        if tag not in (record.get("tags") or []):
            raise NotFound(f"user {user_id!r} has no tag {tag!r}", field="tag")
        self.store.remove_tag(user_id, tag)
        after = self.store.get(user_id) or {}
        return TagRemovedResponse(user_id=user_id, removed=tag, tags=list(after.get("tags") or []))

    # --- the review queue (operators) --------------------------------------------------------

    @app.get("/review", response_model=ReviewListResponse, responses=ERRORS)
    async def reviews(self, status: Literal["pending", "cleared", "confirmed", "all"] = Query(
            "pending", description="which reviews")) -> ReviewListResponse:
        """Users a risk rule put into the review queue, with the reasons, oldest first. A
        user under review is offered no automated incentive until an operator clears them."""
        items = self.store.reviews(None if status == "all" else status)
        return ReviewListResponse(status=status, reviews=items)

    @app.post("/review/{user_id}", response_model=ReviewItem, responses=ERRORS)
    async def decide_review(self, body: ReviewDecisionRequest,
                            user_id: str = USER_ID) -> ReviewItem:
        """Clear (incentives come back at the user's next decision) or confirm a user's
        review, with a note and the operator's name; 404 when the user is not in the queue."""
        return self.store.decide_review(user_id, body.decision, body.note, body.by)

    # --- admin -------------------------------------------------------------------------------

    @app.get("/bandit/stats", response_model=dict[str, Any], responses=ERRORS)
    async def bandit_stats(self, decision_point: str | None = Query(
            None, min_length=1, max_length=100,
            description="the decision point (default buyer_offer)")) -> dict[str, Any] | Response:
        """Decisions logged, rewards learned, arm shares and mean reward (overall, per tier)
        of one decision point, and the decision points served (the decision process's, which
        learns, when there is one)."""
        if self.decider is not None and self.decider.ready:
            answer = await self.decider.ask(STATS, (decision_point or "").encode())
            return Response(answer.body, status_code=answer.status,
                            media_type="application/json")
        return self.points.stats(decision_point)

    @app.post("/models/reload", response_model=ModelsResponse, responses=ERRORS)
    async def reload_models(self, request: Request) -> ModelsResponse:
        """Move every worker to the current ``champion`` models without a restart (404 if
        none); the answer lists the versions each worker serves once all have reloaded
        (or after ``serving.reload_wait_seconds``); 409 in a bento, whose models are fixed."""
        if BUNDLE is not None:
            raise Conflict(f"this service serves the models its bento carries "
                           f"({BUNDLE.versions()}); build and deploy a new bento "
                           "(`nextbest bento build`) to change them", field="models")
        await self._serve_models(await asyncio.to_thread(load_champions, self.settings))
        versions = self.scorer.model_versions()
        self.audit.append("models_reloaded", actor=actor(request), details=versions)
        self.generation = await asyncio.to_thread(self.board.bump)
        self.publish()
        workers = await asyncio.to_thread(self.board.wait_for, self.generation,
                                          self.settings.serving.reload_wait_seconds)
        listed = [WorkerModels(pid=w.pid, model_versions=w.models,
                               reload_generation=w.reload_generation) for w in workers]
        return ModelsResponse(model_versions=versions, workers=listed,
                              all_workers_agree=all(w.model_versions == versions
                                                    for w in listed))

    @app.get("/audit", response_model=list[AuditEntry], responses=ERRORS)
    async def audit_entries(self, after: int = Query(0, ge=0, le=2**63 - 1),
                            limit: int = Query(100, ge=1, le=1000)) -> list[AuditEntry]:
        """The audit log, oldest first, ``limit`` entries after the seq ``after``."""
        return self.audit.entries(after=after, limit=limit)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(self) -> Response:
        """Prometheus metrics of every worker: nextbest's own series and the requests by
        route template (operator scope unless ``auth.metrics_open``)."""
        body, content_type = await asyncio.to_thread(metrics_text)
        return Response(body, media_type=content_type)

    if SETTINGS.serving.benchmark_noop:
        @app.post("/noop", include_in_schema=False)
        async def noop(self, body: NoopRequest) -> dict[str, bool]:
            """Parses a ``{user_id}`` body and does nothing else: the benchmarks' reference
            for the cost of the HTTP stack and of a validated JSON body (only with
            ``serving.benchmark_noop``)."""
            return {"ok": bool(body.user_id)}


NextBest.add_asgi_middleware(Guard)
NextBest.add_asgi_middleware(middleware.ReadinessBody)
NextBest.add_asgi_middleware(middleware.OpenApiInfo)


def actor(request: Request) -> str:
    """Who made a request: the id of its API key (never the key)."""
    return getattr(request.state, "key_id", None) or "anonymous"


def _preferences(user_id: str, prefs: Preferences) -> PreferencesResponse:
    """The API shape of a user's stored preferences."""
    return PreferencesResponse(
        user_id=user_id, personalization=prefs.personalization,
        marketing_email=prefs.marketing_email, marketing_sms=prefs.marketing_sms,
        marketing_push=prefs.marketing_push,
        updated_ts=prefs.updated_ts.isoformat() if prefs.updated_ts else None)
