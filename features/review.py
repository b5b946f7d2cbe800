"""The review queue: users a risk rule tagged wait here for an operator.

A risk tag (config ``features.risk_rules``) never punishes anyone automatically: it puts the
user in the review queue, and while the review is open the decision layer offers them no
automated incentive (no discount, no financing). An operator then clears the user (the
signal was harmless: incentives come back) or confirms the risk (incentives stay off), each
time with a note; who decided and when is kept, with every earlier decision.

The queue lives in the online store (:mod:`features.store`, SQLite or Redis) next to each
user's record, which shows ``under_review`` and ``review_reasons``. This module holds the
record of one review and the rules that change it, once for both backends:

- a features build flags users (:func:`flag`): a user not in the queue enters it
  ``pending``; a pending or confirmed review takes the latest reasons; a cleared review is
  reopened only by a risk tag its clearance did not cover (the same evidence seen again on
  the next daily build does not bring a cleared user back);
- an operator decides (:func:`decide`): ``cleared`` or ``confirmed``, with a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer, WithJsonSchema

from nextbest.errors import ValidationFailed

ReviewStatus = Literal["pending", "cleared", "confirmed"]
Decision = Literal["cleared", "confirmed"]
REVIEW_STATUSES: tuple[ReviewStatus, ...] = ("pending", "cleared", "confirmed")
DECISIONS: tuple[Decision, ...] = ("cleared", "confirmed")
MAX_NOTE = 2000


def utc_now(now: datetime | None = None) -> datetime:
    """``now`` (default: the current time) as naive UTC, as every stored time is."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now


def _iso_utc(ts: datetime) -> str:
    """ISO 8601 with its UTC offset (stored times are naive UTC; RFC 3339, which the API
    declares for ``date-time``, needs the offset)."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()


# A time kept as naive UTC (whatever offset it was read with), written out in JSON with its
# offset.
UtcTime = Annotated[datetime, AfterValidator(utc_now),
                    PlainSerializer(_iso_utc, return_type=str, when_used="json"),
                    WithJsonSchema({"type": "string", "format": "date-time"})]


class ReviewDecision(BaseModel):
    """One operator decision on a review."""

    status: Decision
    by: str
    ts: UtcTime
    note: str


class ReviewItem(BaseModel):
    """One user's review: why (``reasons``, one per risk tag, as the rules wrote them), since
    when, and what operators decided (the latest in ``decided_*``, all in ``history``)."""

    user_id: str
    status: ReviewStatus
    reasons: list[str]
    tags: list[str]
    opened_ts: UtcTime
    as_of: str | None = None
    decided_by: str | None = None
    decided_ts: UtcTime | None = None
    note: str | None = None
    history: list[ReviewDecision] = Field(default_factory=list)

    @property
    def under_review(self) -> bool:
        """Whether automated incentives are off for the user: until an operator clears them."""
        return self.status != "cleared"


def risk_tags(reasons: Sequence[str]) -> list[str]:
    """The tag names of ``"tag: reason"`` strings, in order."""
    return [reason.split(":", 1)[0].strip() for reason in reasons]


def flag(current: ReviewItem | None, user_id: str, reasons: Sequence[str], as_of: str,
         now: datetime) -> ReviewItem | None:
    """The review after a build found ``reasons`` for the user; None when nothing changes."""
    if not reasons:
        return None
    tags = risk_tags(reasons)
    if current is None:
        return ReviewItem(user_id=user_id, status="pending", reasons=list(reasons), tags=tags,
                          opened_ts=now, as_of=as_of)
    covered = sorted(set(current.tags) | set(tags))
    if current.status == "cleared":
        if set(tags) <= set(current.tags):
            return None
        return current.model_copy(update={"status": "pending", "reasons": list(reasons),
                                          "tags": covered, "opened_ts": now, "as_of": as_of})
    if current.reasons == list(reasons) and current.tags == covered:
        return None
    return current.model_copy(update={"reasons": list(reasons), "tags": covered,
                                      "as_of": as_of})


def decide(current: ReviewItem, decision: str, note: str, by: str,
           now: datetime) -> ReviewItem:
    """``current`` cleared or confirmed by ``by`` with ``note`` (both required)."""
    if decision not in DECISIONS:
        raise ValidationFailed(f"decision {decision!r} must be one of {', '.join(DECISIONS)}",
                               field="decision")
    note, by = (note or "").strip(), (by or "").strip()
    if not note:
        raise ValidationFailed("a review decision needs a note saying why", field="note")
    if len(note) > MAX_NOTE:
        raise ValidationFailed(f"the note is longer than {MAX_NOTE} characters", field="note")
    if not by:
        raise ValidationFailed("a review decision needs the operator's name", field="by")
    made = ReviewDecision(status=decision, by=by, ts=now, note=note)  # type: ignore[arg-type]
    return current.model_copy(update={"status": decision, "decided_by": by, "decided_ts": now,
                                      "note": note, "history": [*current.history, made]})
