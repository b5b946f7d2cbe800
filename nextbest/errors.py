"""User-facing errors: one exception per kind, one HTTP status and one CLI message each.

Library code raises these; the CLI prints ``error: <message>`` and exits with
``exit_code``; the service answers ``http_status`` with ``{"error": kind, "detail": message}``.
Anything else escaping is a bug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class NextbestError(Exception):
    """Base class of every error a user can cause and fix."""

    http_status = 400
    exit_code = 2
    kind = "bad_request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.kind, "detail": self.message}
        if self.field:
            body["field"] = self.field
        return body


class ConfigError(NextbestError):
    """The configuration file or an environment override is invalid."""

    kind = "config_error"


class DataError(NextbestError):
    """Input data cannot be used: missing file, missing required column, unreadable format."""

    kind = "data_error"
    http_status = 422


class ValidationFailed(NextbestError):
    """A request or record field is invalid."""

    kind = "validation_error"
    http_status = 422


class NotFound(NextbestError):
    """A named thing (user, event, model version, as_of) does not exist."""

    kind = "not_found"
    http_status = 404
    exit_code = 3


class Conflict(NextbestError):
    """The request clashes with existing state (e.g. a model gate refused a promotion)."""

    kind = "conflict"
    http_status = 409


class Gone(NextbestError):
    """The thing existed and was removed for good (an erased user): never re-created."""

    kind = "gone"
    http_status = 410
    exit_code = 3


class ErasureFailed(NextbestError):
    """An erasure could not finish: ``field`` names the place (store or file) that failed.

    The files were left as they were and the failing store's transaction rolled back; the
    places listed as done stay erased (an erasure is never undone), so running the same
    erasure again finishes it once the cause is fixed."""

    kind = "erasure_failed"
    http_status = 503
    exit_code = 5


class MissingComponent(NextbestError):
    """A component needed here is not installed or not running; the message says what to do."""

    kind = "missing_component"
    http_status = 503
    exit_code = 4


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic validation error as one line naming each bad field and why:
    ``decisions: Input should be greater than 0``, several joined by ``; ``."""
    return "; ".join(f"{'.'.join(str(p) for p in error['loc']) or exc.title}: {error['msg']}"
                     for error in exc.errors())
