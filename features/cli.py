"""Sub-commands of the features stage: ``data``, ``features`` and ``store``."""

from __future__ import annotations

import argparse

from features import cli_build, cli_data, cli_review, cli_store


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest data ...``, ``features ...``, ``store ...`` and ``review ...``."""
    cli_data.register(sub)
    cli_build.register(sub)
    cli_store.register(sub)
    cli_review.register(sub)
