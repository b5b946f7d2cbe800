"""A webhook receiver on 127.0.0.1 for the dispatcher's tests and benchmark (aiohttp).

It checks what a platform's receiver checks, written from the outside (not with nextbest's
own helpers): the ``X-Nextbest-Signature`` header is ``sha256=`` and the hex HMAC-SHA256 of
the raw body with the shared secret, and ``Idempotency-Key`` names the message.

- :class:`Receiver` runs in a thread of the test process and records every request as it
  arrives; what it answers is up to the test (``answer(key, nth)`` gives the status of the
  nth request with that key), and :meth:`Receiver.hold` keeps every answer waiting until
  :meth:`Receiver.release`.
- ``python tests/webhook_receiver.py --secret S`` runs a fast one in its own process (the
  benchmark's): it prints its port, answers 200 and counts on ``GET /stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

PATH = "/hook"


@dataclass(frozen=True)
class Receipt:
    """One request as the receiver saw it."""

    key: str | None
    signature_ok: bool
    body: dict[str, Any]
    status: int  # what the receiver answered


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


class Receiver:
    """A webhook receiver in a background thread; ``url`` is set once it listens."""

    def __init__(self, secret: bytes,
                 answer: Callable[[str | None, int], int] = lambda key, nth: 200):
        self.secret = secret
        self.answer = answer
        self.receipts: list[Receipt] = []
        self.url = ""
        self.arrived = threading.Condition()
        self._held = 0  # requests waiting at the gate
        self._seen: Counter[str | None] = Counter()
        self._loop = asyncio.new_event_loop()
        self._gate = asyncio.Event()
        self._gate.set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def keys(self) -> Counter[str | None]:
        """How many requests arrived per Idempotency-Key."""
        return Counter(r.key for r in self.receipts)

    def hold(self) -> None:
        """From now on, keep every request waiting (the dispatcher sees a slow receiver)."""
        self._loop.call_soon_threadsafe(self._gate.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._gate.set)

    def wait_for_held(self, n: int, timeout: float = 60.0) -> None:
        """Block until ``n`` requests are waiting at the closed gate."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: self._held >= n, timeout):
                raise AssertionError(f"{self._held} requests held after {timeout} s, "
                                     f"expected {n}")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers.get("Idempotency-Key")
        self._seen[key] += 1
        status = self.answer(key, self._seen[key])
        with self.arrived:
            self.receipts.append(Receipt(
                key, signature_ok(self.secret, body, request.headers.get("X-Nextbest-Signature")),
                json.loads(body), status))
            self._held += 1
            self.arrived.notify_all()
        try:
            await self._gate.wait()
        finally:
            with self.arrived:
                self._held -= 1
        return web.Response(status=status, text="ok" if status < 300 else "try again")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        sock = _listening_socket()
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}{PATH}"
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> Receiver:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the webhook receiver did not start in 30 s")
        return self

    def stop(self) -> None:
        self.release()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@contextmanager
def receiver_in_thread(secret: bytes, answer: Callable[[str | None, int], int] | None = None
                       ) -> Iterator[Receiver]:
    receiver = Receiver(secret) if answer is None else Receiver(secret, answer)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# -- the fast receiver in its own process (benchmarks/dispatch.py) --------------------------
def _fast_app(secret: bytes) -> web.Application:
    stats = {"received": 0, "bad_signatures": 0}
    keys: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        stats["received"] += 1
        stats["bad_signatures"] += not signature_ok(
            secret, body, request.headers.get("X-Nextbest-Signature"))
        keys.add(request.headers.get("Idempotency-Key", ""))
        return web.Response(status=200)

    async def read_stats(request: web.Request) -> web.Response:
        return web.json_response({**stats, "distinct_keys": len(keys)})

    async def reset(request: web.Request) -> web.Response:
        stats.update(received=0, bad_signatures=0)
        keys.clear()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post(PATH, hook)
    app.router.add_get("/stats", read_stats)
    app.router.add_post("/reset", reset)
    return app


@contextmanager
def receiver_process(secret: bytes) -> Iterator[str]:
    """Run the fast receiver in its own process; yields its base URL."""
    proc = subprocess.Popen([sys.executable, __file__, "--secret", secret.decode()],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("port "):
            raise RuntimeError(f"the webhook receiver did not start (exit {proc.poll()})")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description="a fast webhook receiver (benchmarks)")
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    sock = _listening_socket()
    print(f"port {sock.getsockname()[1]}", flush=True)
    web.run_app(_fast_app(args.secret.encode()), sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
