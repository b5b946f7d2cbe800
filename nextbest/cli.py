"""The single ``nextbest`` command line.

Each package contributes its sub-commands through a ``register(subparsers)`` function in
its own ``cli`` module, so a stage's CLI lives next to its code. Handlers receive the parsed
arguments and the loaded :class:`~nextbest.config.Settings`; they raise
:class:`~nextbest.errors.NextbestError` for anything the user can fix, which is printed as
one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from datetime import date

import yaml

from nextbest import __version__
from nextbest.config import Settings, load_settings
from nextbest.errors import NextbestError

# Modules whose ``register(subparsers)`` adds sub-commands, in help order.
COMMAND_MODULES = ("features.cli", "training.cli", "campaigns.cli", "serving.cli",
                   "experiments.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextbest",
        description="Precision marketing for second-hand marketplaces.",
    )
    parser.add_argument("--version", action="version", version=f"nextbest {__version__}")
    parser.add_argument("--config", help="YAML config file (default: ./nextbest.yaml or $NEXTBEST_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_config(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def iso_date(text: str) -> date:
    """argparse ``type`` for ``YYYY-MM-DD`` flags: a bad value is a usage error naming it."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def command_group(sub: argparse._SubParsersAction, name: str,
                  help: str) -> argparse._SubParsersAction:
    """Add ``nextbest NAME ACTION ...`` and return the parser's sub-parsers for its actions.

    ``nextbest NAME`` alone prints the group's help and exits 2, like any usage error. When
    another stage already added the group, its sub-parsers are returned, so stages can add
    actions to one group (``data erase`` lives with the stores it erases).
    """
    existing = sub.choices.get(name)
    if existing is not None:
        return existing.get_default("group_actions")
    group = sub.add_parser(name, help=help)
    actions = group.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    group.set_defaults(group_actions=actions)

    def usage(_args: argparse.Namespace, _settings: Settings) -> int:
        group.print_help()
        return 2

    group.set_defaults(handler=usage)
    return actions


def _register_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the effective configuration (defaults + file + env) as YAML")
    p.set_defaults(handler=_show_config)


def _show_config(args: argparse.Namespace, settings: Settings) -> int:
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args.config)
        result = args.handler(args, settings)
    except NextbestError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
