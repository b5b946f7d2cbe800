"""Sub-commands of the ``experiments`` stage (registered into the ``nextbest`` CLI)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the top-level parser."""
