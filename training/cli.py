"""Sub-commands of the ``training`` stage: ``train`` and ``models list|promote``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nextbest.cli import iso_date
from nextbest.config import Settings
from nextbest.errors import ValidationFailed
from training import cli_segments
from training.labels import LTV_MODEL, MODEL_NAMES, SENTIMENT_MODEL


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
    if args.model == LTV_MODEL:
        return _train_ltv(args, settings)
    if args.model == SENTIMENT_MODEL:
        from training.sentiment import train_sentiment

        train_sentiment(with_data_dir(settings, args.data))
        return 0
    if args.horizon_days is not None:
        raise ValidationFailed(f"--horizon-days is for `train ltv`; the {args.model} horizon is "
                               f"training.labels.{args.model}_horizon_days",
                               field="horizon_days")
    result = train(with_data_dir(settings, args.data), args.model, as_of=args.as_of,
                   cutoffs=args.cutoffs, tune=args.tune, force=args.force,
                   rebuild_features=args.rebuild_features)
    baselines = ", ".join(f"{name} {m.roc_auc:.4f}" for name, m in result.baselines.items())
    print(f"{result.model_name} v{result.version}: ROC AUC {result.metrics.roc_auc:.4f} "
          f"({baselines}); {'champion' if result.decision.promoted else 'challenger'}")
    if result.decision.warning():
        print(f"warning: {result.model_name} {result.decision.warning()}", file=sys.stderr)
    return 0


def _train_ltv(args: argparse.Namespace, settings: Settings) -> int:
    from training.ltv import train_ltv

    if args.tune:
        raise ValidationFailed("--tune is not available for `train ltv`", field="tune")
    if args.horizon_days is not None and args.horizon_days < 1:
        raise ValidationFailed(f"--horizon-days must be at least 1, got {args.horizon_days}",
                               field="horizon_days")
    result = train_ltv(with_data_dir(settings, args.data), as_of=args.as_of,
                       horizon=args.horizon_days, cutoffs=args.cutoffs, force=args.force,
                       rebuild_features=args.rebuild_features)
    m, b = result.metrics, result.baseline
    print(f"ltv v{result.version} ({result.plan.horizon_days} days from "
          f"{result.plan.validation}): spend {m.spend_error:+.1%} (bgnbd_gg "
          f"{b.spend_error:+.1%}), purchases {m.purchases_error:+.1%} ({b.purchases_error:+.1%}),"
          f" Spearman {m.spearman:.4f} ({b.spearman:.4f}); "
          f"{'champion' if result.gate.promoted else 'challenger'}")
    if not result.gate.promoted:
        print(f"warning: ltv version {result.version} not promoted: {result.gate.reason}",
              file=sys.stderr)
    return 0


def _cell(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _tuning(trials: int | None) -> str:
    if trials is None:
        return "-"
    return f"{trials} trials" if trials else "none"


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from training.registry import configure, list_versions

    rows = list_versions(configure(settings), (*MODEL_NAMES, LTV_MODEL))
    if args.json:
        print(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return 0
    if not rows:
        print("no registered models yet: run `nextbest train churn`")
        return 0
    print(f"{'model':<12} {'version':>7}  {'aliases':<20} {'created (UTC)':<16}  {'run_id':<32}  "
          f"{'tuning':<10} {'roc_auc':>7} {'pr_auc':>7} {'rfm_auc':>7} {'bgnbd_auc':>9} "
          f"{'recency_auc':>11}")
    for row in rows:
        m, base = row.metrics, row.baseline_roc_auc()
        print(f"{row.name:<12} {row.version:>7}  {','.join(row.aliases) or '-':<20} "
              f"{row.created:%Y-%m-%d %H:%M}  {row.run_id or '-':<32}  "
              f"{_tuning(row.tune_trials):<10} {_cell(m.get('roc_auc')):>7} "
              f"{_cell(m.get('pr_auc')):>7} {_cell(base.get('rfm')):>7} "
              f"{_cell(base.get('bgnbd')):>9} {_cell(base.get('recency')):>11}")
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from training.registry import configure, promote

    row = promote(configure(settings), args.name, args.version)
    print(f"{args.name}: champion is now version {row.version}")
    if row.warning():
        print(f"warning: {row.warning()}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``models`` and ``segments`` to the top-level parser."""
    cli_segments.register(sub)
    train = sub.add_parser("train", help="train, evaluate, register and gate a model")
    train.add_argument("model", choices=(*MODEL_NAMES, LTV_MODEL, SENTIMENT_MODEL))
    train.add_argument("--as-of", type=iso_date, default=None,
                       help="validation cutoff (default: latest with a complete label window)")
    train.add_argument("--horizon-days", type=int, default=None, metavar="N",
                       help="ltv only: days of spend to forecast (default: "
                            "training.labels.ltv_horizon_days, 365)")
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
    lst = msub.add_parser("list", help="versions, aliases, runs, tuning and key metrics")
    lst.add_argument("--json", action="store_true", help="print the versions as JSON")
    lst.set_defaults(handler=_list)
    prm = msub.add_parser("promote", help="make a version the champion")
    prm.add_argument("name", choices=(*MODEL_NAMES, LTV_MODEL))
    prm.add_argument("version")
    prm.set_defaults(handler=_promote)
