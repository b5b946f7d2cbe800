"""API keys with scopes: who may call what (``Authorization: Bearer <key>``).

Keys are random strings shown once when created (``nextbest keys create``); only their
SHA-256 hash is kept, in the keys file (``paths.keys_file``, default ``data/keys.yaml``) or
in config (``auth.keys``). Each key has an id (what the audit log records, never the key) and
scopes:

- ``platform``: score, next_best_action, events, items, feedback, message receipts;
- ``operator``: campaign runs and reports, the outbox, the review queue, bandit stats, and
  ``/metrics`` (unless ``auth.metrics_open``);
- ``admin``: erasure, export, preferences on a user's behalf, model reloads, the audit log.

``/healthz``, ``/livez``, ``/readyz`` and ``/docs.json`` stay open. A request without a
valid key is a 401, a key without the route's scope a 403 naming the scope. Hashes are
compared in constant time. ``auth.enabled: false`` exists for local experiments only (the
service logs a warning).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from nextbest.config import ApiKeyConfig, Settings
from nextbest.errors import Conflict, DataError, NotFound, ValidationFailed

Scope = Literal["platform", "operator", "admin"]
SCOPES: tuple[Scope, ...] = ("platform", "operator", "admin")
KEY_PREFIX = "nb_"


class StoredKey(BaseModel):
    """A key as kept: its id, the SHA-256 of the key, its scopes."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope]
    created: datetime | None = None


def digest(key: str) -> str:
    """The SHA-256 (hex) a key is kept as."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The keys the service accepts: the keys file plus the ones in config."""

    def __init__(self, keys: list[StoredKey]):
        self.keys = keys

    @classmethod
    def load(cls, settings: Settings) -> KeyRing:
        configured = [StoredKey(id=k.id, sha256=k.sha256, scopes=list(k.scopes))
                      for k in settings.auth.keys]
        return cls(configured + read_keys_file(Path(settings.paths.keys_file)))

    def check(self, key: str) -> StoredKey | None:
        """The stored key ``key`` is, or None. Every hash is compared (constant time)."""
        wanted = digest(key)
        found = None
        for stored in self.keys:
            if hmac.compare_digest(stored.sha256, wanted):
                found = stored
        return found


def read_keys_file(path: Path) -> list[StoredKey]:
    """The keys of the keys file (none when it does not exist)."""
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return [StoredKey.model_validate(k) for k in data.get("keys", [])]
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: not a keys file ({exc})", field="keys_file") from exc


def _write_keys_file(path: Path, keys: list[StoredKey]) -> None:
    """Replace the keys file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    body = {"keys": [k.model_dump(mode="json") for k in keys]}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(body, out, sort_keys=False)
    os.replace(tmp, path)


def create_key(path: Path, key_id: str, scopes: list[str], *,
               replace: bool = False) -> tuple[str, StoredKey]:
    """Make a new key ``key_id`` with ``scopes``; returns the key (shown once) and what is
    kept. An existing id is a Conflict unless ``replace``."""
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ValidationFailed(f"scopes must be some of {', '.join(SCOPES)}; got "
                               f"{', '.join(scopes) or 'none'}", field="scope")
    keys = read_keys_file(path)
    if any(k.id == key_id for k in keys) and not replace:
        raise Conflict(f"a key with id {key_id!r} exists; revoke it first or pass --replace",
                       field="id")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    stored = StoredKey(id=key_id, sha256=digest(key), scopes=sorted(set(scopes),
                                                                   key=SCOPES.index),
                       created=datetime.now(UTC))
    _write_keys_file(path, [k for k in keys if k.id != key_id] + [stored])
    return key, stored


def revoke_key(path: Path, key_id: str) -> None:
    """Remove the key ``key_id`` from the keys file (NotFound if there is none)."""
    keys = read_keys_file(path)
    if not any(k.id == key_id for k in keys):
        raise NotFound(f"no key {key_id!r} in {path}", field="id")
    _write_keys_file(path, [k for k in keys if k.id != key_id])


__all__ = ["SCOPES", "ApiKeyConfig", "KeyRing", "Scope", "StoredKey", "create_key", "digest",
           "read_keys_file", "revoke_key"]
