"""The request timeout that cancels its timer (serving/traffic.py), without a server."""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.base_app import BaseAppFactory

from serving.traffic import CancellingTimeout, install


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await asyncio.sleep(10)


async def call(app: Any, timeout: float) -> list[dict[str, Any]]:
    """One request through the middleware; the messages sent."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await CancellingTimeout(app, timeout=timeout)({"type": "http"}, receive, send)
    return sent


def test_an_answered_request_leaves_no_live_timer() -> None:
    async def scenario() -> int:
        for _ in range(50):
            assert (await call(ok_app, 30.0))[0]["status"] == 200
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]

    # BentoML's own middleware leaves one 30-second timer per request: 50 here.
    assert asyncio.run(scenario()) == 0


def test_no_response_within_the_timeout_is_a_504() -> None:
    sent = asyncio.run(call(slow_app, 0.05))
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"]


def test_bentoml_builds_its_apps_with_it() -> None:
    install()

    class Factory(BaseAppFactory):
        name = "probe"

        def __call__(self) -> None:  # not needed to list the middlewares
            return None

    kinds = [m.cls for m in Factory(timeout=30, max_concurrency=None).middlewares]
    assert kinds == [CancellingTimeout]
