"""The single ``nextbest`` command line.

Each package contributes its sub-commands through a ``register(subparsers)`` function in
its own ``cli`` module, so a stage's CLI lives next to its code. Handlers receive the parsed
arguments and the loaded :class:`~nextbest.config.Settings`; they raise
:class:`~nextbest.errors.NextbestError` for anything the user can fix, which is printed as
one line on stderr with a non-zero exit code.

Whatever goes wrong, the command ends with one ``error: ...`` line on stderr and a non-zero
exit code: a usage error names the argument, a pydantic validation error names the field,
and anything unexpected is reported as an internal error whose traceback ``-v`` shows.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import NoReturn

import yaml
from pydantic import ValidationError

from nextbest import __version__
from nextbest.config import Settings, load_settings
from nextbest.errors import NextbestError, ValidationFailed, describe_validation_error

# Modules whose ``register(subparsers)`` adds sub-commands, in help order.
COMMAND_MODULES = ("features.cli", "training.cli", "campaigns.cli", "serving.cli",
                   "experiments.cli")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``error:`` line on stderr (exit 2).

    Sub-parsers inherit the class, so every command of the CLI reports alike; the line
    names the command and points to its ``--help`` instead of printing the whole usage.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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


def _number(kind: type, text: str, low: float | None, name: str) -> int | float:
    """Parse ``text`` as ``kind`` (int or float) and refuse values below ``low``."""
    try:
        value = kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from exc
    if low is not None and value < low:
        raise argparse.ArgumentTypeError(f"{text} is not {name}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type`` for counts that must be at least 1 (decisions, users, workers)."""
    return _number(int, text, 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    """argparse ``type`` for whole numbers that may be 0 but not negative (seeds)."""
    return _number(int, text, 0, "a whole number >= 0")


def port_number(text: str) -> int:
    """argparse ``type`` for a TCP port to listen on, 1-65535."""
    value = _number(int, text, 1, "a port number (1-65535)")
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1-65535)")
    return value


def positive_float(text: str) -> float:
    """argparse ``type`` for amounts that must be above 0 (timeouts)."""
    value = _number(float, text, None, "a number")
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def share(text: str) -> float:
    """argparse ``type`` for a share strictly between 0 and 1 (significance levels)."""
    value = _number(float, text, None, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a number between 0 and 1")
    return value


def output_dir(text: str) -> Path:
    """argparse ``type`` for a directory the command writes into (created when missing):
    refused when the path, or the nearest part of it that exists, is not a directory."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not a directory")
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a directory")
    return path


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


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined by spaces."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def internal_error(exc: BaseException) -> str:
    """The one line for an exception nobody expected: its type and its message."""
    return (f"internal error ({type(exc).__name__}: {one_line(str(exc))}); run with -v for "
            "the traceback")


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
        print(f"error: {one_line(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:
        print(f"error: {one_line(describe_validation_error(exc))}", file=sys.stderr)
        return ValidationFailed.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if args.verbose:
            traceback.print_exc()
        print(f"error: {internal_error(exc)}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
