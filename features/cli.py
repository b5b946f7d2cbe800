"""Sub-commands of the features stage: ``data``, ``features`` and ``segments``."""

from __future__ import annotations

import argparse

from features import cli_build, cli_data, cli_segments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest data ...``, ``nextbest features ...`` and ``nextbest segments ...``."""
    cli_data.register(sub)
    cli_build.register(sub)
    cli_segments.register(sub)
