"""Request and response bodies of the HTTP service (docs/ARCHITECTURE.md).

Every request model forbids unknown fields and non-finite numbers, so a typo or a ``NaN``
is a 422 naming the field rather than a silently ignored value. The decision-loop shapes
(:class:`UserView`, :class:`RequestContext`, :class:`Decision`, :class:`FeedbackResult`) are
the engine's own models (the campaign layer's ``BehaviourEvent``, ``Item``, ``OutboxMessage``
and reports too), re-used here so the
HTTP API and the engine cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    create_model,
    model_validator,
)

from campaigns.events import BehaviourEvent, EventTime
from campaigns.layer import EventsResult, ItemResult, RunReport
from campaigns.store import Item, OutboxMessage
from decisions.decision_log import Decision, FeedbackResult
from decisions.policy import RequestContext, UserView
from features.review import MAX_NOTE, ReviewItem
from nextbest.audit import AuditEntry


class RequestBody(BaseModel):
    """Base of every request body: unknown fields and NaN/Infinity are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


UserId = Annotated[str, Field(min_length=1, max_length=200)]


class ScoreRequest(RequestBody):
    """``{user_id}`` for one user or ``{user_ids: [...]}`` for a batch, never both."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"user_id": "u000042"}, {"user_ids": ["u000042", "u000043"]},
        {"user_id": "u000042", "subject": "seller"}]})

    user_id: str | None = Field(None, min_length=1, max_length=200)
    user_ids: list[UserId] | None = None
    subject: Literal["buyer", "seller"] = Field(
        "buyer", description="buyer (tier, segment, churn and propensity) or seller (seller "
                             "tier, seller tags, seller churn)")

    @model_validator(mode="after")
    def _exactly_one(self) -> ScoreRequest:
        if (self.user_id is None) == (self.user_ids is None):
            raise ValueError("give exactly one of user_id or user_ids")
        return self


def score_request(max_batch: int) -> type[ScoreRequest]:
    """:class:`ScoreRequest` with the configured batch limit in its schema and validation."""
    return create_model(
        "ScoreRequest", __base__=ScoreRequest, __doc__=ScoreRequest.__doc__,
        user_ids=(list[UserId] | None, Field(None, min_length=1, max_length=max_batch,
                                             description=f"at most {max_batch} ids")))


class NoopRequest(RequestBody):
    """The body of the benchmarks' no-op endpoint: the shape of a one-user request."""

    user_id: str = Field(min_length=1, max_length=200)


class ScoreResponse(BaseModel):
    """What the service knows and predicts about one user."""

    user_id: str
    known: bool
    tier: str
    segment: str
    tags: list[str]
    churn_probability: float | None
    purchase_propensity: float | None
    # Model name -> registered version, or ``warning`` -> why the scores are null.
    model_versions: dict[str, str | None]
    features_as_of: str | None
    # new, growth, mature, decline or churned (features.lifecycle rules); None when unknown.
    lifecycle_stage: str | None = None
    # Forecast spend over the LTV champion's horizon (365 days by default); None without one.
    ltv_12m: float | None = None


class SellerScoreResponse(BaseModel):
    """What the service knows and predicts about one user as a seller (consignor)."""

    user_id: str
    subject: Literal["seller"] = "seller"
    known: bool
    is_seller: bool
    # vip, potential, sleeping (sellers) or prospective (never consigned); None otherwise.
    seller_tier: str | None
    seller_tags: list[str]
    # Probability of no new listing in the label horizon; None without a seller_churn
    # champion, and for users who never consigned.
    seller_churn_probability: float | None
    model_versions: dict[str, str | None]
    features_as_of: str | None


class NextBestActionRequest(RequestBody):
    """A request for the next best action for one user in one context."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"user_id": "u000042", "context": {"channel": "app", "page": "item",
                                           "item_id": "i981", "item_price": 820.0,
                                           "category": "bags", "hour": 20}}]})

    user_id: str = Field(min_length=1, max_length=200)
    context: RequestContext = Field(default_factory=RequestContext)
    # Which decision point decides (config decision_points; default buyer_offer).
    decision_point: str | None = Field(None, min_length=1, max_length=100,
                                       examples=["buyer_offer", "seller_offer"])


class FeedbackRequest(RequestBody):
    """The outcome of a decision: did the user convert, and for how much (0 when not)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"event_id": "Qm9vc3RlZC1ldmVudC1pZA", "converted": True, "revenue": 820.0},
        {"event_id": "Qm9vc3RlZC1ldmVudC1pZA", "converted": False, "revenue": 0.0}]})

    event_id: str = Field(min_length=1, max_length=100)
    converted: StrictBool
    # At a seller decision point: the sold value of the seller's listings in the window.
    revenue: float = Field(0.0, ge=0, le=1e9)
    # Optional: the decision's point (found from the event otherwise); a different one is
    # a 409.
    decision_point: str | None = Field(None, min_length=1, max_length=100)


class EventsBatch(RequestBody):
    """Several behaviour events at once (at most ``serving.max_batch``)."""

    events: list[BehaviourEvent] = Field(min_length=1)


ONE, BATCH = "event", "batch"


def _events_shape(body: Any) -> str:
    """Which shape a ``POST /events`` body has: ``{"events": [...]}`` or one event."""
    return BATCH if isinstance(body, dict) and "events" in body else ONE


def events_request(max_batch: int) -> Any:
    """The body of ``POST /events``: one event, or :class:`EventsBatch` with the configured
    batch limit; errors name the fields of the shape sent (``events.0.ts``), not of both."""
    batch = create_model("EventsBatch", __base__=EventsBatch, __doc__=EventsBatch.__doc__,
                         events=(list[BehaviourEvent], Field(min_length=1, max_length=max_batch,
                                                             description=f"at most {max_batch}")))
    return Annotated[Annotated[BehaviourEvent, Tag(ONE)] | Annotated[batch, Tag(BATCH)],
                     Discriminator(_events_shape)]


class ReceiptRequest(RequestBody):
    """A delivery receipt of a sent message, from the channel."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "delivered", "ts": "2026-01-05T20:00:03Z"}]})

    status: Literal["delivered", "opened", "clicked", "bounced", "unsubscribed"]
    ts: EventTime


class OutboxPage(BaseModel):
    """One page of the outbox, oldest first; pass ``next_after`` as ``after`` for the next."""

    messages: list[OutboxMessage]
    next_after: str | None


class CampaignSummary(BaseModel):
    """A configured campaign and its outbox rows by status."""

    name: str
    kind: str
    event: str | None
    schedule: str | None
    condition: str
    arms: list[str]
    holdout_share: float
    cooldown_hours: float
    transactional: bool
    enabled: bool
    description: str
    counts: dict[str, int]


class PreferencesRequest(RequestBody):
    """A user's consent choices; omitted fields keep their current value."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"personalization": False}, {"marketing_email": True, "marketing_sms": False}]})

    personalization: StrictBool | None = None
    marketing_email: StrictBool | None = None
    marketing_sms: StrictBool | None = None
    marketing_push: StrictBool | None = None


class PreferencesResponse(BaseModel):
    """The user's consent choices, and when they last changed (None: never stated)."""

    user_id: str
    personalization: bool
    marketing_email: bool
    marketing_sms: bool
    marketing_push: bool
    updated_ts: str | None = None


class TagExplanation(BaseModel):
    """One configured tag rule and whether it describes this user."""

    name: str
    rule: str
    description: str
    applies: bool
    removed_by_user: bool = False


class ExplanationResponse(BaseModel):
    """Why the user has this tier, segment and these tags: the rules and the values behind."""

    user_id: str
    known: bool
    tier: str
    tier_rule: str
    segment: str
    segment_rule: str
    tags: list[TagExplanation]
    features: dict[str, float | str | None]
    features_as_of: str | None
    best_hour: int | None = None       # local hour campaign messages are sent at
    timezone: str | None = None
    best_hour_reason: str | None = None
    lifecycle_stage: str | None = None
    lifecycle_reason: str | None = None  # the rule behind the stage (features.lifecycle)


class ErasureResponse(BaseModel):
    """What erasing a user removed, counted per place."""

    user_id: str
    store_records: int
    decisions: int
    campaign_rows: int = 0  # kept events, timers, outbox rows and listings
    file_rows: int = 0  # rows removed from raw tables, feature partitions, artifacts, reports
    files: int = 0  # files rewritten


class ExportResponse(BaseModel):
    """Everything stored about a user (data-subject access)."""

    user_id: str
    store: dict[str, Any]
    decisions: list[dict[str, Any]]  # each with its reward and late feedback
    # events, timers, messages (with attempts, receipts, conversion), listings
    campaigns: dict[str, Any] = Field(default_factory=dict)
    raw: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)  # table -> rows
    features: list[dict[str, Any]] = Field(default_factory=list)  # one row per as_of
    latent: list[dict[str, Any]] = Field(default_factory=list)  # synthetic truth, if any
    audit: list[AuditEntry] = Field(default_factory=list)  # entries about the user


class TagRemovedResponse(BaseModel):
    """The user's tags after one was removed."""

    user_id: str
    removed: str
    tags: list[str]


class ReviewDecisionRequest(RequestBody):
    """An operator's decision on a user's review: ``cleared`` gives the automated incentives
    back, ``confirmed`` keeps them off; ``note`` says why, ``by`` who decided."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"decision": "cleared", "note": "new bank cards, same person", "by": "ana"}]})

    decision: Literal["cleared", "confirmed"]
    note: str = Field(min_length=1, max_length=MAX_NOTE)
    by: str = Field(min_length=1, max_length=200)


class ReviewListResponse(BaseModel):
    """The reviews with ``status`` (``all``: every status), oldest first."""

    status: str
    reviews: list[ReviewItem]


class WorkerModels(BaseModel):
    """The models one worker process serves."""

    pid: int
    model_versions: dict[str, str | None]
    reload_generation: int


class ModelsResponse(BaseModel):
    """The champion model versions the service now uses, in every worker."""

    model_versions: dict[str, str | None]
    workers: list[WorkerModels] = Field(default_factory=list)
    all_workers_agree: bool = True


class FieldError(BaseModel):
    """One invalid field of a request and why."""

    field: str
    reason: str


class ErrorBody(BaseModel):
    """Every 4xx body: the error kind, a readable reason, the field at fault (the first one)
    and, for invalid bodies, every invalid field."""

    error: str
    detail: str
    field: str | None = None
    errors: list[FieldError] | None = None


__all__ = [
    "BATCH", "ONE", "BehaviourEvent", "CampaignSummary", "Decision", "ErasureResponse",
    "ErrorBody", "EventsBatch", "EventsResult", "ExplanationResponse", "ExportResponse",
    "FeedbackRequest", "FeedbackResult", "FieldError", "Item", "ItemResult", "ModelsResponse",
    "NextBestActionRequest", "NoopRequest", "OutboxMessage", "OutboxPage", "PreferencesRequest",
    "PreferencesResponse", "ReceiptRequest", "RequestContext", "RunReport", "ScoreRequest",
    "ScoreResponse", "TagRemovedResponse", "UserView", "WorkerModels", "events_request",
    "score_request",
]
