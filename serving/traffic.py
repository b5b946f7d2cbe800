"""BentoML's request timeout, without a live timer per answered request.

BentoML 1.4's ``TimeoutMiddleware`` (``traffic.timeout``) schedules ``loop.call_later(
timeout, ...)`` for every request and never cancels it: each answered request leaves a
timer handle, its future and a copy of the request's context alive for the whole timeout
(30 s here), ~9,000 of them at 300 requests/s. They outlive the young collections, so the
garbage collector's older generations fill with them and every collection of those scans
them all (stalls of 30-130 ms, measured with benchmarks/serve.py). :class:`CancellingTimeout`
behaves the same (a 504 when no response started within the timeout) and cancels its timer
as soon as the request is done; :func:`install` puts it in BentoML's place before the
service's app is built.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

Scope = dict[str, Any]


class CancellingTimeout(traffic.TimeoutMiddleware):
    """A 504 when no response has started within ``timeout`` seconds; the timer is
    cancelled when the request finishes (BentoML's is left to fire)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, started)

        async def send_started(message: Any) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_started))
        try:
            await started
        except TimeoutError:
            if task.cancel():
                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await task
        finally:
            timer.cancel()


def install() -> None:
    """Make BentoML build its apps with :class:`CancellingTimeout` (it looks the class up
    in its ``traffic`` module each time it builds the middleware list)."""
    traffic.TimeoutMiddleware = CancellingTimeout  # type: ignore[misc]
