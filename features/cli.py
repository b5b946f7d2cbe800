"""Sub-commands of the features stage: ``data`` and ``features``."""

from __future__ import annotations

import argparse

from features import cli_build, cli_data


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest data ...`` and ``nextbest features ...``."""
    cli_data.register(sub)
    cli_build.register(sub)
