"""ASGI middlewares around the whole BentoML app (its own routes included).

BentoML answers ``/readyz`` and ``/docs.json`` itself, before the mounted FastAPI app; these
middlewares give them nextbest's content:

- :class:`ReadinessBody`: ``GET /readyz`` answers with this worker's
  :class:`~serving.status.WorkerStatus` as JSON: 200 when ready, 503 (with what is missing)
  when not.
- :class:`OpenApiInfo`: ``GET /docs.json`` carries nextbest's title, version, description
  and contact instead of the framework's.

Each middleware asks a provider that the service instance registers at start-up (one per
worker process) through :func:`register`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.status import WorkerStatus, status_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PROVIDERS: dict[str, Callable[[], Any]] = {}


def register(name: str, provider: Callable[[], Any]) -> None:
    """Make ``provider`` answer for ``name`` (``"status"``, ``"openapi_info"``) in this
    process."""
    _PROVIDERS[name] = provider


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _is(scope: Scope, path: str) -> bool:
    return scope["type"] == "http" and scope.get("method") == "GET" and scope["path"] == path


class ReadinessBody:
    """``GET /readyz``: this worker's status as JSON; 503 while it is not ready."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = _PROVIDERS.get("status")
        if provider is None or not _is(scope, "/readyz"):
            await self.app(scope, receive, send)
            return
        status: WorkerStatus = provider()
        await _send_json(send, 200 if status.ready else 503, status_json(status))


class OpenApiInfo:
    """``GET /docs.json``: the framework's spec with nextbest's ``info`` (and whatever else
    the provider changes: it gets the parsed spec and returns it)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = _PROVIDERS.get("openapi")
        if provider is None or not _is(scope, "/docs.json"):
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def collect(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        if start.get("status") != 200:
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            return
        spec = provider(json.loads(b"".join(chunks)))
        await _send_json(send, 200, json.dumps(spec).encode())
