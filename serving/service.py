"""The BentoML 1.4 service: a thin HTTP adapter over the store, the models and the engine.

Start it with ``nextbest serve`` or ``bentoml serve serving.service:NextBest``. The routes
are a FastAPI app mounted into the BentoML service (typed path parameters and methods other
than POST), so BentoML still serves ``/healthz``, ``/livez``, ``/readyz``, ``/metrics`` and
``/docs.json`` (which includes the mounted routes).

Concurrency: every route is ``async`` and calls the engine on the event-loop thread, so the
Vowpal Wabbit workspace (not thread-safe) and the SQLite connections are only ever touched
by one thread per process. With ``serving.workers`` = N > 1, BentoML starts N processes;
each builds its engine with role ``auto``: the engine takes the learner file lock in exactly
one of them (which learns in a background thread), and the others become scorers that log
decisions and feedback and reload the learner's published checkpoints (see
:func:`open_engine`).

Errors: request bodies are pydantic models that forbid unknown fields and NaN/Infinity;
FastAPI's validation errors and :class:`~nextbest.errors.NextbestError` become 4xx bodies
``{"error", "detail", "field"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import bentoml
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from campaigns.triggers import Triggers
from decisions.engine import DecisionEngine
from features.erasure import erase_users
from features.store import Preferences, open_store
from nextbest.config import Settings, load_settings
from nextbest.errors import Conflict, NextbestError, NotFound, ValidationFailed
from serving.schemas import (
    BehaviourEvent,
    Decision,
    ErasureResponse,
    ErrorBody,
    EventsResponse,
    ExplanationResponse,
    ExportResponse,
    FeedbackRequest,
    FeedbackResult,
    ModelsResponse,
    NextBestActionRequest,
    NoopRequest,
    PreferencesRequest,
    PreferencesResponse,
    ScoreRequest,
    ScoreResponse,
    TagRemovedResponse,
)
from serving.scoring import Scorer, try_load_champions

log = logging.getLogger(__name__)

SETTINGS: Settings = load_settings()
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (404, 409, 422)}
USER_ID = Path(min_length=1, max_length=200)

app = FastAPI(title="nextbest", version="1", description=__doc__)


def error_field(loc: tuple[Any, ...]) -> str:
    """The dotted name of a field from a FastAPI error location (``body.context.hour``)."""
    parts = [str(part) for part in loc if part not in ("body", "query", "path")]
    return ".".join(parts) or "body"


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A malformed or invalid body: 422 naming the first bad field and why."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "not valid JSON")
        body = ValidationFailed(f"body: malformed JSON ({reason})", field="body").to_dict()
    else:
        field = error_field(tuple(first.get("loc", ("body",))))
        body = ValidationFailed(f"{field}: {first.get('msg', 'invalid')}", field=field).to_dict()
    return JSONResponse(body, status_code=422)


@app.exception_handler(NextbestError)
async def _user_error(_: Request, exc: NextbestError) -> JSONResponse:
    """A user error raised by the store, the models or the engine: its own status."""
    return JSONResponse(exc.to_dict(), status_code=exc.http_status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods, in the same body shape as every other error."""
    kind = "not_found" if exc.status_code == 404 else "bad_request"
    return JSONResponse({"error": kind, "detail": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def open_engine(settings: Settings) -> DecisionEngine:
    """The decision engine of this worker process.

    One worker: role ``inline`` (decides and learns each reward at once). Several workers:
    role ``auto``, the engine's learner file lock makes exactly one of them the learner.
    When another service on the same decision log already holds the lock, this one becomes
    a scorer replica instead of failing to start.
    """
    if settings.serving.workers > 1:
        return DecisionEngine(settings, role="auto")
    try:
        return DecisionEngine(settings, role="inline")
    except Conflict as exc:
        log.warning("%s: serving as a scorer replica", exc.message)
        return DecisionEngine(settings, role="scorer")


@bentoml.service(
    name="NextBest",
    workers=SETTINGS.serving.workers,
    http={"host": SETTINGS.serving.host, "port": SETTINGS.serving.port},
    traffic={"timeout": 30},
    logging={"access": {"enabled": SETTINGS.serving.access_log}},
)
@bentoml.asgi_app(app, path="/")
class NextBest:
    """Scores users and chooses their next best action; learns from the feedback."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.store = open_store(self.settings)
        self.scorer = Scorer(self.settings, self.store, *try_load_champions(self.settings))
        self.engine = open_engine(self.settings)
        self.triggers = Triggers(self.settings.serving.triggers, self.engine)
        self._sweeper: asyncio.Task[None] | None = None
        log.info("nextbest service ready: engine role %s, models %s", self.engine.role,
                 self.scorer.model_versions())

    @bentoml.on_startup
    async def start_sweeper(self) -> None:
        """Inline role: sweep timed-out decisions every ``sweep_seconds``, even without
        traffic (the learner role's thread does this itself; scorers leave it to it)."""
        if self.engine.role == "inline":
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        """Give the default reward to decisions whose window closed, on the event loop."""
        while True:
            await asyncio.sleep(self.settings.bandit.sweep_seconds)
            try:
                self.engine.sweep()
            except Exception:  # keep sweeping; the next round retries
                log.exception("sweeping timed-out decisions failed")

    async def __is_ready__(self) -> bool:
        """Ready once the store and the engine are open (models may be absent)."""
        return self.store is not None and self.engine is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the sweeper, checkpoint and close the engine, close the store."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.engine.close()
        with contextlib.suppress(AttributeError):
            self.store.close()

    # --- scoring -------------------------------------------------------------------------

    @app.post("/score", response_model=ScoreResponse | list[ScoreResponse], responses=ERRORS)
    async def score(self, body: ScoreRequest) -> ScoreResponse | list[ScoreResponse]:
        """Tier, segment, tags and model scores of one user or a batch (cold start if unknown)."""
        if body.user_ids is None:
            return self.scorer.score(body.user_id or "")
        limit = self.settings.serving.max_batch
        if len(body.user_ids) > limit:
            raise ValidationFailed(
                f"user_ids: {len(body.user_ids)} ids exceed the batch limit of {limit}",
                field="user_ids")
        return self.scorer.score_many(body.user_ids)

    # --- the decision loop -----------------------------------------------------------------

    @app.post("/next_best_action", response_model=Decision, responses=ERRORS)
    async def next_best_action(self, body: NextBestActionRequest) -> Decision:
        """Choose, log durably and return the next best action for a user in a context."""
        user = self.scorer.user_view(body.user_id)
        return self.engine.decide(user, body.context)

    @app.post("/feedback", response_model=FeedbackResult, responses=ERRORS)
    async def feedback(self, body: FeedbackRequest) -> FeedbackResult:
        """Join a reward to its decision: accepted, duplicate or late (recorded, not learned)."""
        return self.engine.feedback(body.event_id, body.converted, body.revenue)

    @app.post("/events", response_model=EventsResponse, responses=ERRORS)
    async def events(self, body: BehaviourEvent) -> EventsResponse:
        """Run the triggers on a behaviour event; each fired campaign comes with its action."""
        user = self.scorer.user_view(body.user_id)
        return EventsResponse(user_id=body.user_id, fired=self.triggers.on_event(user, body))

    # --- the user's rights -----------------------------------------------------------------

    @app.put("/users/{user_id}/preferences", response_model=PreferencesResponse,
             responses=ERRORS)
    async def put_preferences(self, body: PreferencesRequest,
                              user_id: str = USER_ID) -> PreferencesResponse:
        """Change a user's consent; opting out stops personalisation and learning at once."""
        current = self.store.get_preferences(user_id)
        changes = body.model_dump(exclude_none=True)
        # updated_ts None: the store stamps the change with the current time.
        updated = current.model_copy(update={**changes, "updated_ts": None})
        self.store.set_preferences(user_id, updated)
        return PreferencesResponse(user_id=user_id, **_consent(updated))

    @app.get("/users/{user_id}/explanation", response_model=ExplanationResponse,
             responses=ERRORS)
    async def explanation(self, user_id: str = USER_ID) -> ExplanationResponse:
        """Why this tier, segment and tags: the rules and the feature values behind them."""
        return self.scorer.explain(user_id)

    @app.delete("/users/{user_id}", response_model=ErasureResponse, responses=ERRORS)
    async def erase(self, user_id: str = USER_ID) -> ErasureResponse:
        """Erase the user: store record, preferences, cached scores and decisions; the user
        goes on the store's erasure list, so feature rebuilds do not bring them back.

        The raw tables and feature files are purged by ``nextbest data erase --pending``."""
        report = erase_users([user_id], store=self.store, decisions=self.engine)
        self.scorer.forget(user_id)
        return ErasureResponse(user_id=user_id, store_records=report.store_records,
                               decisions=report.decisions or 0)

    @app.get("/users/{user_id}/export", response_model=ExportResponse, responses=ERRORS)
    async def export(self, user_id: str = USER_ID) -> ExportResponse:
        """Everything stored about the user: store record, preferences and decisions."""
        return ExportResponse(user_id=user_id, store=self.store.export(user_id),
                              decisions=self.engine.export_user(user_id))

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

    # --- admin -------------------------------------------------------------------------------

    @app.get("/bandit/stats", responses=ERRORS)
    async def bandit_stats(self) -> dict[str, Any]:
        """Decisions logged, rewards learned, arm shares and mean reward (overall, per tier)."""
        return self.engine.stats()

    @app.post("/models/reload", response_model=ModelsResponse, responses=ERRORS)
    async def reload_models(self) -> ModelsResponse:
        """Pick up the current ``champion`` models without a restart (404 if none)."""
        return ModelsResponse(model_versions=self.scorer.reload_models())

    @app.post("/noop")
    async def noop(self, body: NoopRequest) -> dict[str, bool]:
        """Parses a ``{user_id}`` body and does nothing else: the benchmarks' reference for
        the cost of the HTTP stack and of a validated JSON body."""
        return {"ok": bool(body.user_id)}


def _consent(prefs: Preferences) -> dict[str, bool]:
    """The four consent flags of a preferences object."""
    return {name: bool(getattr(prefs, name)) for name in
            ("personalization", "marketing_email", "marketing_sms", "marketing_push")}
