"""``nextbest keys create|list|revoke`` and ``nextbest audit verify|show``.

A new key is printed once and only its SHA-256 is kept (``paths.keys_file``); creating and
revoking keys are audit entries (by key id, never the key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nextbest.audit import cli_actor, open_audit
from nextbest.cli import command_group
from nextbest.config import Settings
from serving.auth import SCOPES, create_key, read_keys_file, revoke_key


def _create(args: argparse.Namespace, settings: Settings) -> int:
    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    key, stored = create_key(Path(settings.paths.keys_file), args.id, scopes,
                             replace=args.replace)
    audit = open_audit(settings)
    try:
        audit.append("key_created", actor=cli_actor(),
                     details={"key_id": stored.id, "scopes": stored.scopes})
    finally:
        audit.close()
    print(key)
    print(f"key {stored.id!r} ({', '.join(stored.scopes)}): shown once; only its hash is kept "
          f"in {settings.paths.keys_file}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    keys = read_keys_file(Path(settings.paths.keys_file))
    configured = [{"id": k.id, "scopes": list(k.scopes), "source": "config"}
                  for k in settings.auth.keys]
    rows = [{"id": k.id, "scopes": k.scopes, "created": k.created.isoformat()
             if k.created else None, "source": "keys file"} for k in keys] + configured
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no keys: nextbest keys create --id NAME --scope platform")
    for row in [] if args.json else rows:
        print(f"{row['id']:<24} {','.join(row['scopes']):<28} {row['source']}"
              f"{' created ' + row['created'] if row.get('created') else ''}")
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    revoke_key(Path(settings.paths.keys_file), args.id)
    audit = open_audit(settings)
    try:
        audit.append("key_revoked", actor=cli_actor(), details={"key_id": args.id})
    finally:
        audit.close()
    print(f"key {args.id!r} revoked; running services stop accepting it when they reload "
          "their keys (within serving.model_refresh_seconds)")
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    audit = open_audit(settings)
    try:
        result = audit.verify()
    finally:
        audit.close()
    if not result.ok:
        print(f"error: the audit log is broken: {result.problem} ({result.entries} entries "
              "read)", file=sys.stderr)
        return 1
    print(f"the audit log is intact: {result.entries} entries, each following the one before")
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    audit = open_audit(settings)
    try:
        entries = audit.entries(after=args.after, limit=args.limit, user_id=args.user)
    finally:
        audit.close()
    for entry in entries:
        print(entry.model_dump_json() if args.json else
              f"{entry.seq:>6} {entry.ts:%Y-%m-%d %H:%M:%S} {entry.actor:<20} {entry.action:<18}"
              f" {json.dumps(entry.details, sort_keys=True)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keys`` and ``audit verify|show``."""
    keys = command_group(sub, "keys", help="API keys of the service: create, list, revoke")
    p = keys.add_parser("create", help="make a key; it is printed once, only its hash kept")
    p.add_argument("--id", required=True, help="the key's name (audit entries carry it)")
    p.add_argument("--scope", required=True,
                   help=f"comma list of {', '.join(SCOPES)}")
    p.add_argument("--replace", action="store_true", help="replace a key of the same id")
    p.set_defaults(handler=_create)
    p = keys.add_parser("list", help="the keys' ids and scopes (never the keys)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_list)
    p = keys.add_parser("revoke", help="remove a key from the keys file")
    p.add_argument("id", help="the key's id")
    p.set_defaults(handler=_revoke)

    audit = command_group(sub, "audit", help="the audit log: verify its chain, show it")
    p = audit.add_parser("verify", help="recompute the hash chain; exit 1 if it is broken")
    p.set_defaults(handler=_verify)
    p = audit.add_parser("show", help="the entries, oldest first")
    p.add_argument("--after", type=int, default=0, help="entries after this seq")
    p.add_argument("--limit", type=int, default=100, help="at most this many")
    p.add_argument("--user", default=None, help="only the entries about this user")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=_show)
