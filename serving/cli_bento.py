"""``nextbest bento build``: a bento that carries the champion models and the bandit.

See serving/bento.py for what is imported and how the service reads it back; the README
("Packaging") gives ``bentoml serve`` and ``bentoml containerize`` recipes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nextbest.cli import command_group
from nextbest.config import Settings


def _build(args: argparse.Namespace, settings: Settings) -> int:
    """Handler of ``nextbest bento build``: import the models, build, print the tag."""
    from serving.bento import build_bento  # BentoML and MLflow load only for this command

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    bento = build_bento(settings, bentofile=args.bentofile, version=args.version, say=say)
    say(f"built {bento.tag} at {bento.path}; run it with `bentoml serve {bento.tag}`")
    print(bento.tag)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nextbest bento build``."""
    bento = command_group(sub, "bento", help="package the service with its models")
    build = bento.add_parser(
        "build", help="import the champions and the bandit checkpoint, then build the bento",
        description="Import the champion churn and propensity models (and the ltv and "
                    "sentiment models when registered) from the MLflow registry and the "
                    "bandit's latest checkpoint (paths.bandit_dir) into BentoML's model store "
                    "($BENTOML_HOME/models), labelled with their registry versions, then build "
                    "bentofile.yaml into a bento that references them. Prints the bento tag.")
    build.add_argument("--bentofile", type=Path, default=None,
                       help="the build file (default: bentofile.yaml beside the sources)")
    build.add_argument("--version", default=None,
                       help="the bento's version (default: one BentoML generates)")
    build.set_defaults(handler=_build)
