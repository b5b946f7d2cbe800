"""Sub-commands of the ``training`` stage: ``train`` and ``models list|promote``."""

from __future__ import annotations

import argparse
from pathlib import Path

from nextbest.cli import iso_date
from nextbest.config import Settings
from nextbest.errors import ValidationFailed
from training import cli_segments
from training.labels import MODEL_NAMES


def with_data_dir(settings: Settings, data_dir: str | None) -> Settings:
    """Settings whose raw and features directories live under ``data_dir`` (``--data``)."""
    if not data_dir:
        return settings
    root = Path(data_dir)
    paths = settings.paths.model_copy(update={"data_dir": root, "raw_dir": root / "raw",
                                              "features_dir": root / "features"})
    return settings.model_copy(update={"paths": paths})


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from training.pipeline import train

    if args.cutoffs is not None and args.cutoffs < 1:
        raise ValidationFailed(f"--cutoffs must be at least 1, got {args.cutoffs}", field="cutoffs")
    result = train(with_data_dir(settings, args.data), args.model, as_of=args.as_of,
                   cutoffs=args.cutoffs, tune=args.tune, force=args.force,
                   rebuild_features=args.rebuild_features)
    print(f"{result.model_name} v{result.version}: ROC AUC {result.metrics.roc_auc:.4f} "
          f"(rfm {result.baselines['rfm'].roc_auc:.4f}, bgnbd "
          f"{result.baselines['bgnbd'].roc_auc:.4f}); "
          f"{'champion' if result.decision.promoted else 'challenger'}")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from training.registry import configure, list_versions

    rows = list_versions(configure(settings), MODEL_NAMES)
    if not rows:
        print("no registered models yet: run `nextbest train churn`")
        return 0
    print(f"{'model':<11} {'version':>7}  {'aliases':<22} {'roc_auc':>7} {'pr_auc':>7} "
          f"{'rfm_auc':>7} {'bgnbd_auc':>9}")
    for row in rows:
        m = row.metrics
        cells = [m.get(k) for k in ("roc_auc", "pr_auc", "baseline_rfm_roc_auc",
                                    "baseline_bgnbd_roc_auc")]
        text = [f"{v:.4f}" if v is not None else "-" for v in cells]
        print(f"{row.name:<11} {row.version:>7}  {','.join(row.aliases) or '-':<22} "
              f"{text[0]:>7} {text[1]:>7} {text[2]:>7} {text[3]:>9}")
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from training.registry import configure, promote

    version = promote(configure(settings), args.name, args.version)
    print(f"{args.name}: champion is now version {version}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``models`` and ``segments`` to the top-level parser."""
    cli_segments.register(sub)
    train = sub.add_parser("train", help="train, evaluate, register and gate a model")
    train.add_argument("model", choices=MODEL_NAMES)
    train.add_argument("--as-of", type=iso_date, default=None,
                       help="validation cutoff (default: latest with a complete label window)")
    train.add_argument("--cutoffs", type=int, default=None,
                       help="number of monthly training cutoffs (default: training.cutoffs)")
    train.add_argument("--tune", type=int, default=0, metavar="N", help="N Optuna trials")
    train.add_argument("--force", action="store_true",
                       help="make the new version champion even if it scores lower")
    train.add_argument("--data", default=None, metavar="DIR",
                       help="data directory holding raw/ and features/ (default: paths)")
    train.add_argument("--rebuild-features", action="store_true",
                       help="rebuild features for every cutoff instead of reusing them")
    train.set_defaults(handler=_train)

    models = sub.add_parser("models", help="registered model versions")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lst = msub.add_parser("list", help="versions, aliases and key metrics")
    lst.set_defaults(handler=_list)
    prm = msub.add_parser("promote", help="make a version the champion")
    prm.add_argument("name", choices=MODEL_NAMES)
    prm.add_argument("version")
    prm.set_defaults(handler=_promote)
