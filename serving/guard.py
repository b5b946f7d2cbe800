"""What every request passes before the routes: size limit, API key and scope, and the
request metrics and access log that name routes by their template, never by a user id.

- :class:`Guard` (one ASGI middleware, outermost of nextbest's):
  1. a body larger than ``serving.max_body_bytes`` gets 413 before it is read (by its
     Content-Length, or while it streams in without one);
  2. the route's scope (:data:`ROUTE_SCOPES`) is checked against the ``Authorization:
     Bearer`` key (:mod:`serving.auth`): 401 without a valid key, 403 without the scope;
     the key's id is put in ``request.state.key_id`` for the audit log and the decision log;
  3. ``nextbest_http_requests_total{route, method, status}`` and
     ``nextbest_http_request_seconds{route, method}`` are recorded under the route's
     template (``/users/{user_id}``), and the access log line names the template too, so
     3,000 user ids make no new series and no user id reaches a log;
  4. a path with a control character (a newline in a user id) gets nextbest's JSON 404:
     BentoML's mount of the app does not match such paths and would answer in plain text.

BentoML's own request metrics and access log label raw paths; the service switches them
off and this middleware stands in for them. ``/metrics`` is a route of nextbest's app
(:func:`metrics_text`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.routing import Match, Route

from serving.auth import KeyRing, Scope, StoredKey
from serving.middleware import ASGIApp, Message, Receive, Send
from serving.middleware import Scope as AsgiScope

log = logging.getLogger("nextbest.access")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/docs.json"})
UNMATCHED = "unmatched"


@dataclass
class GuardConfig:
    """What the guard of one worker needs, registered by the service at start-up."""

    routes: list[Route]                 # the app's routes (templates and methods)
    scopes: dict[tuple[str, str], Scope]  # (method, template) -> scope
    keys: KeyRing
    enabled: bool
    metrics_open: bool
    max_body_bytes: int
    access_log: bool
    observe: Callable[[str, str, int, float], None]  # route, method, status, seconds


_CONFIG: dict[str, GuardConfig] = {}


def configure(config: GuardConfig) -> None:
    """Install the guard's configuration in this worker process."""
    _CONFIG["guard"] = config


def flat_routes(routes: list[Any]) -> list[Route]:
    """The app's routes as a flat list (FastAPI nests the included ones)."""
    out: list[Route] = []
    for route in routes:
        if isinstance(route, Route):
            out.append(route)
        elif hasattr(route, "original_router"):  # FastAPI's included router
            out += flat_routes(list(route.original_router.routes))
        elif hasattr(route, "routes"):
            out += flat_routes(list(route.routes))
    return out


def route_of(routes: list[Route], scope: AsgiScope) -> str:
    """The template of the route ``scope`` matches (``/users/{user_id}``), or 'unmatched'."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route.path
    for route in routes:  # the path exists with another method: still its template
        match, _ = route.matches(scope)
        if match is Match.PARTIAL:
            return route.path
    return UNMATCHED


def _bearer(scope: AsgiScope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
            return None
    return None


def _content_length(scope: AsgiScope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(send: Send, status: int, kind: str, detail: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": kind, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The size limit, the key check and the request metrics (module docstring)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        config = _CONFIG.get("guard")
        if config is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope.get("method", "GET")
        route = route_of(config.routes, scope)
        status_box = [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            await self._handle(config, scope, receive, record, route, method)
        finally:
            seconds = time.perf_counter() - started
            config.observe(route, method, status_box[0], seconds)
            if config.access_log and route not in OPEN_PATHS:
                log.info("%s %s %d %.1fms", method, route, status_box[0], seconds * 1000)

    async def _handle(self, config: GuardConfig, scope: AsgiScope, receive: Receive,
                      send: Send, route: str, method: str) -> None:
        if _CONTROL.search(scope.get("path", "")):
            await _answer(send, 404, "not_found", "no route matches this path: it contains "
                          "a control character")
            return
        limit = config.max_body_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            await _answer(send, 413, "too_large", f"the body is {length:,} bytes; at most "
                          f"{limit:,} are accepted (serving.max_body_bytes)")
            return
        key = self._authorise(config, scope, route, method)
        if isinstance(key, tuple):
            await _answer(send, *key)
            return
        if key is not None:
            scope.setdefault("state", {})["key_id"] = key.id
        if length is None and method in ("POST", "PUT", "PATCH"):
            # No Content-Length (a chunked body): read it here, up to the limit, and hand the
            # app the body read, so an oversized one is refused before the app sees it.
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                size += len(message.get("body", b""))
                if size > limit:
                    await _answer(send, 413, "too_large", f"the body exceeds {limit:,} bytes "
                                  "(serving.max_body_bytes)")
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replayed() -> Message:
                return replay.pop() if replay else await receive()

            await self.app(scope, replayed, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _authorise(config: GuardConfig, scope: AsgiScope, route: str, method: str
                   ) -> StoredKey | None | tuple[Any, ...]:
        """The caller's key, None when the route needs none, or the refusal to send."""
        if route in OPEN_PATHS or not config.enabled:
            return None
        if route == "/metrics":
            needed: Scope | None = None if config.metrics_open else "operator"
        else:
            needed = config.scopes.get((method, route))
        if needed is None:
            return None
        token = _bearer(scope)
        key = config.keys.check(token) if token else None
        if key is None:
            why = "no API key: send Authorization: Bearer <key>" if token is None else \
                "the API key is not valid (revoked, or never issued)"
            return 401, "unauthorized", why, [(b"www-authenticate", b"Bearer")]
        if needed not in key.scopes:
            return 403, "forbidden", (f"key {key.id!r} lacks the {needed!r} scope this route "
                                      f"needs (it has {', '.join(key.scopes)})")
        return key
