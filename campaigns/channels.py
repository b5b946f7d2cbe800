"""Channels: how one message leaves nextbest (``channels:`` in config).

- A webhook (``url`` set): an HTTP POST of the message as JSON, with ``Idempotency-Key:
  <message_id>`` (the same on every attempt, so the receiver keeps one copy however often
  it arrives) and ``X-Nextbest-Signature: sha256=<hex HMAC-SHA256 of the exact body with
  the channel's secret>``. A 2xx answer is sent; any other answer, a timeout or a
  connection error is a failed attempt with its reason.
- JSON lines (no ``url``): one line per message appended to
  ``paths.data_dir/deliveries/<channel>.jsonl``, the embedded default of the demo.

A receiver checks a webhook by computing the HMAC of the raw body it got with the shared
secret and comparing it in constant time with the header (:func:`signature_matches`).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

import aiohttp
from pydantic import BaseModel

from campaigns.store import OutboxMessage
from nextbest.config import ArmConfig, ChannelConfig, Settings
from nextbest.errors import ConfigError

IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "X-Nextbest-Signature"
USER_AGENT = "nextbest-dispatcher"


class MessageBody(BaseModel):
    """What a channel receives: the message, its offer and where it came from."""

    message_id: str          # also the Idempotency-Key: receivers dedupe on it
    campaign: str
    user_id: str
    channel: str
    arm: str | None
    arm_description: str | None
    arm_features: dict[str, str | float]
    decision_id: str | None  # the decision this message carries out
    tier: str | None
    trigger: str
    created: datetime
    scheduled: datetime      # when this attempt was due (a retry is due later)


class SendResult(BaseModel):
    """One attempt's answer from a channel."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    seconds: float


def message_body(message: OutboxMessage, arms: Mapping[str, ArmConfig]) -> bytes:
    """The exact bytes sent (and signed) for ``message``."""
    arm = arms.get(message.arm) if message.arm is not None else None
    return MessageBody(
        message_id=message.message_id, campaign=message.campaign, user_id=message.user_id,
        channel=message.channel or "", arm=message.arm,
        arm_description=arm.description if arm is not None else None,
        arm_features=arm.features if arm is not None else {}, decision_id=message.decision_id,
        tier=message.tier, trigger=message.trigger, created=message.created,
        scheduled=message.scheduled).model_dump_json().encode()


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Nextbest-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_matches(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver checks: the header is the HMAC of the raw body (constant time)."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


class Channel(Protocol):
    name: str

    async def send(self, message_id: str, body: bytes) -> SendResult: ...

    async def aclose(self) -> None: ...


class WebhookChannel:
    """POST each message to ``url``, signed, over up to ``connections`` kept-alive
    connections (aiohttp: httpx's per-request cost caps one process near 450 requests/s
    here, a third of the dispatcher's goal; see benchmarks/dispatch.py)."""

    def __init__(self, name: str, url: str, secret: bytes, *, timeout_seconds: float,
                 connections: int):
        self.name = name
        self.url = url
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The channel's session, made in the running event loop on first use."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections), timeout=self.timeout,
                headers={"Content-Type": "application/json", "User-Agent": USER_AGENT})
        return self._session

    async def send(self, message_id: str, body: bytes) -> SendResult:
        headers = {IDEMPOTENCY_HEADER: message_id,
                   SIGNATURE_HEADER: signature(self.secret, body)}
        began = time.perf_counter()
        try:
            async with self._client().post(self.url, data=body, headers=headers) as response:
                answer = await response.read()
        except TimeoutError:
            return SendResult(ok=False, error=f"timeout after {self.timeout.total} s",
                              seconds=time.perf_counter() - began)
        except aiohttp.ClientError as exc:
            return SendResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:500],
                              seconds=time.perf_counter() - began)
        seconds = time.perf_counter() - began
        if 200 <= response.status < 300:
            return SendResult(ok=True, status_code=response.status, seconds=seconds)
        text = answer[:200].decode(errors="replace")
        return SendResult(ok=False, status_code=response.status, seconds=seconds,
                          error=f"HTTP {response.status}: {text}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class JsonLinesChannel:
    """Append each message as one JSON line to ``path`` (the demo's embedded channel)."""

    def __init__(self, name: str, path: Path):
        self.name = name
        self.path = path
        self._file: IO[bytes] | None = None

    async def send(self, message_id: str, body: bytes) -> SendResult:
        began = time.perf_counter()
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab")
            # Under the file's lock: an erasure rewrites the file in place (serving/erasure.py).
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                self._file.write(body + b"\n")
                self._file.flush()
            finally:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        except OSError as exc:
            return SendResult(ok=False, error=f"{self.path}: {exc.strerror or exc}",
                              seconds=time.perf_counter() - began)
        return SendResult(ok=True, seconds=time.perf_counter() - began)

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def channel_secret(name: str, config: ChannelConfig, environ: Mapping[str, str]) -> bytes:
    """The HMAC key of webhook channel ``name``: the variable ``secret_env`` names when set,
    else ``secret``; none is a ConfigError naming the channel."""
    if config.secret_env:
        value = environ.get(config.secret_env)
        if not value:
            raise ConfigError(f"channels.{name}.secret_env: the environment variable "
                              f"{config.secret_env} is not set (the webhook's HMAC secret)")
        return value.encode()
    if config.secret:
        return config.secret.encode()
    raise ConfigError(f"channels.{name}: a webhook (url {config.url}) needs a secret or "
                      f"secret_env for its X-Nextbest-Signature")


def open_channels(settings: Settings, environ: Mapping[str, str], *,
                  connections: int | None = None) -> dict[str, Channel]:
    """Every enabled channel, ready to send; webhook secrets are read here, once."""
    enabled = {name: c for name, c in settings.channels.items() if c.enabled}
    keys = {name: channel_secret(name, c, environ) for name, c in enabled.items()
            if c.url is not None}
    opened: dict[str, Channel] = {}
    for name, config in enabled.items():
        if config.url is None:
            path = settings.paths.data_dir / "deliveries" / f"{name}.jsonl"
            opened[name] = JsonLinesChannel(name, path)
        else:
            opened[name] = WebhookChannel(
                name, config.url, keys[name], timeout_seconds=config.timeout_seconds,
                connections=connections or settings.dispatch.concurrency)
    return opened
