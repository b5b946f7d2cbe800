"""Sub-commands of the ``experiments`` stage: ``simulate``, ``evaluate-policy``, ``abtest``,
``audit fairness``, ``report`` (registered into the ``nextbest`` CLI)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nextbest.cli import (
    command_group,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
    share,
)
from nextbest.config import DEFAULT_POINT, SELLER_POINT, Settings
from nextbest.errors import ValidationFailed

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    from pydantic import BaseModel

    from experiments.simulator import SimulationConfig

LOG_HELP = """\
Accepted logs: the service's SQLite decision log (tables decisions + rewards, joined by
event_id; the default is settings.paths.decision_log), or a .parquet / .csv file with one
row per decision and the columns:
  action       arm shown (empty = no action / control group)          required
  probability  logging policy's probability of that action            required for OPE
  reward       observed reward; or converted (0/1) [+ revenue]         required
  control      true for control-group decisions (default: action empty)
  policy       policy / campaign / version that decided (default "logged"); or campaign
  tier         user tier (default "unknown")
  cost         arm cost paid (default: from the config's arms and item_price)
  eligible     JSON list of the arms the user could get (default: all arms)
  tags         user tags (JSON list or comma list), used by the static rule book
  any other column (page, item_price, category, hour, segment, ...) is context for the DR
  reward model, except identifiers (*_id), times (ts, *_ts, *_at) and what the log says about
  itself (seq, source, learnable, pmf, reason, ...). On the service's log the context is the
  request and the user's shared features as logged, nothing else.
"""


def _progress(name: str, done: int, total: int) -> None:
    """One progress line per 5% of a policy's run, on stderr."""
    print(f"  {name:<10} {done:>8}/{total} decisions", file=sys.stderr, flush=True)


def _write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


DEFAULT_POLICIES = "random,static,epsilon,squarecb,service,oracle"


def _or(value: int | None, default: int) -> int:
    """``value`` unless the flag was not given (its default depends on the mode)."""
    return default if value is None else value


DEFAULT_USERS = 5_000


def _config(args: argparse.Namespace, default_decisions: int) -> SimulationConfig:
    """The run's :class:`SimulationConfig` from the flags (``--users`` only without ``--data``)."""
    from experiments.simulator import SimulationConfig

    if args.data and args.users is not None:
        raise ValidationFailed("--users sizes a generated population; with --data the "
                               "simulation uses that marketplace's users", field="users")
    return SimulationConfig(decisions=_or(args.decisions, default_decisions), seed=args.seed,
                            users=_or(args.users, DEFAULT_USERS), drift=args.drift)


def _population(args: argparse.Namespace, settings: Settings,
                config: SimulationConfig) -> pd.DataFrame:
    """The simulated users: the marketplace in ``--data``, else a generated population (of
    sellers and prospective sellers at a seller decision point)."""
    from experiments.simulator import marketplace_population, synthetic_population

    if settings.bandit.subject == "seller":
        from experiments.seller_simulator import synthetic_seller_population

        if args.data:
            raise ValidationFailed("--data: a seller decision point is simulated on a "
                                   "generated population of sellers (--users sizes it)",
                                   field="data")
        return synthetic_seller_population(settings, config.users, config.seed)
    return (marketplace_population(settings, Path(args.data)) if args.data
            else synthetic_population(settings, config.users, config.seed))


def _point_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` scoped to ``--decision-point`` (NotFound naming the configured ones)."""
    scoped = settings.for_point(args.decision_point)
    if scoped.bandit.subject == "seller" and args.via_http:
        raise ValidationFailed("--via-http drives the buyer decision point; simulate a seller "
                               "decision point in-process", field="via_http")
    return scoped


def parse_seeds(text: str) -> list[int]:
    """``--seeds 1,2,3`` (or ``1-10``) as a list of distinct seeds, in order (the CLI's and
    the benchmarks' parser)."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            seeds += range(int(low), int(high or low) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1,2,3 or 1-10, got {text!r}"
                                         ) from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected seeds >= 0 like 1,2,3 or 1-10, got "
                                         f"{text!r}")
    return list(dict.fromkeys(seeds))


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    settings = _point_settings(args, settings)
    if args.via_http:
        return _simulate_via_http(args, settings)
    if args.seeds:
        return _simulate_seeds(args, settings)
    from experiments.plots import simulation_plots

    config = _config(args, 50_000)
    policies = [p.strip() for p in (args.policies or DEFAULT_POLICIES).split(",") if p.strip()]
    population = _population(args, settings, config)
    print(f"simulating {config.decisions} {settings.decision_point} decisions over "
          f"{len(population)} users (seed {config.seed}{', drift' if config.drift else ''}): "
          f"{', '.join(policies)}", file=sys.stderr)
    result = _run_simulation(args, settings, population, config, policies,
                             Path(args.keep_logs) if args.keep_logs else None)
    out = Path(args.out or Path(settings.paths.reports_dir) / "simulation")
    payload = result.to_json()
    plots = [] if args.no_plots else simulation_plots(result, out)
    # The report shows exactly these charts, not older ones left in the directory.
    payload["plots"] = [p.name for p in plots]
    json_path = _write_json(out / "simulation.json", payload)
    if not args.no_mlflow:
        from experiments.tracking import log_simulation

        payload["mlflow_run_id"] = log_simulation(settings, result, plots, json_path)
        _write_json(json_path, payload)
    payload["plots"] = [str(p) for p in plots]
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(format_simulation(payload))
        print(f"\nwrote {json_path} and {len(plots)} plots to {out}")
    return 0


def _simulate_seeds(args: argparse.Namespace, settings: Settings) -> int:
    """``simulate --seeds 1,2,...``: one run per seed (its own population and stream), each
    seed's results and the spread (median, min, max) of every policy's share of the oracle
    and of the static rules. No plots; one MLflow run per seed unless ``--no-mlflow``."""
    from experiments.runner import spread

    policies = [p.strip() for p in (args.policies or DEFAULT_POLICIES).split(",") if p.strip()]
    out = Path(args.out or Path(settings.paths.reports_dir) / "simulation")
    per_seed: dict[int, dict] = {}
    for seed in args.seeds:
        args.seed = seed
        config = _config(args, 50_000)
        population = _population(args, settings, config)
        print(f"seed {seed}: simulating {config.decisions} decisions over {len(population)} "
              f"users: {', '.join(policies)}", file=sys.stderr)
        result = _run_simulation(args, settings, population, config, policies,
                                 keep=Path(args.keep_logs) / f"seed{seed}" if args.keep_logs
                                 else None)
        per_seed[seed] = result.to_json()
        if not args.no_mlflow:
            from experiments.tracking import log_simulation

            per_seed[seed]["mlflow_run_id"] = log_simulation(settings, result, [])
    first = next(iter(per_seed.values()))
    payload = {"decision_point": settings.decision_point,
               "seeds": list(per_seed), "decisions": first["decisions"],
               "users": first["users"], "drift": first["drift"],
               "reward_kind": first["reward_kind"], "spread": spread(per_seed),
               "per_seed": {str(seed): p for seed, p in per_seed.items()}}
    json_path = _write_json(out / "simulation_seeds.json", payload)
    print(json.dumps(payload, indent=2, default=str) if args.json
          else format_spread(payload) + f"\n\nwrote {json_path}")
    return 0


def _run_simulation(args: argparse.Namespace, settings: Settings, population: pd.DataFrame,
                    config: SimulationConfig, policies: list[str], keep: Path | None):
    """One seeded run of ``policies`` on ``population`` (see ``simulate``), for the subject
    of the decision point ``settings`` is scoped to."""
    from experiments.runner import BUYERS, simulate

    side = BUYERS
    if settings.bandit.subject == "seller":
        from experiments.seller_simulator import SELLERS

        side = SELLERS
    return simulate(settings, population, config, policies, log_dir=keep,
                    progress=None if args.quiet else _progress, side=side)


def format_spread(payload: dict) -> str:
    """The ``--seeds`` table: per policy, the last-20% expected reward as a share of the
    oracle's and of the static rules', per seed, then median, min and max over seeds."""
    seeds = payload["seeds"]
    lines = [f"{payload['decisions']} decisions per seed, seeds {', '.join(map(str, seeds))}; "
             "last 20% of decisions, true expected reward as a share of the oracle's "
             "(of oracle) and of the static rules' (vs static)", "",
             f"{'policy':<12}{'measure':<11}" + "".join(f"{s:>7}" for s in seeds)
             + f"{'median':>8}{'min':>7}{'max':>7}"]
    for policy, measures in payload["spread"].items():
        for key, stats in measures.items():
            by_seed = stats["by_seed"]
            lines.append(f"{policy:<12}{key.replace('_', ' '):<11}"
                         + "".join(f"{by_seed.get(str(s), float('nan')):>7.3f}" for s in seeds)
                         + f"{stats['median']:>8.3f}{stats['min']:>7.3f}{stats['max']:>7.3f}")
    return "\n".join(lines)


def _simulate_via_http(args: argparse.Namespace, settings: Settings) -> int:
    """``simulate --via-http URL``: the same stream through the live service and in-process."""
    from experiments.http_driver import (
        DEFAULT_DECISIONS,
        compare_via_http,
        format_via_http,
    )

    config = _config(args, DEFAULT_DECISIONS)
    policies = [p.strip() for p in (args.policies or "").split(",") if p.strip()]
    if len(policies) > 1:
        raise ValidationFailed("policies: --via-http compares one bandit policy, the one the "
                               f"service runs; got {policies}", field="policies")
    population = _population(args, settings, config)
    print(f"simulating {config.decisions} decisions over {len(population)} users through "
          f"{args.via_http} and in-process (seed {config.seed})", file=sys.stderr)
    result = compare_via_http(settings, args.via_http, population, config,
                              policy=policies[0] if policies else None, timeout=args.timeout,
                              api_key=args.api_key or os.environ.get("NEXTBEST_API_KEY"))
    payload = result.model_dump(mode="json")
    out = Path(args.out or Path(settings.paths.reports_dir) / "simulation")
    json_path = _write_json(out / "via_http.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(format_via_http(result))
        print(f"\nwrote {json_path}")
    return 0


def _ratio(payload: dict, policy: str, key: str) -> str:
    """``payload["ratios"][policy][key]`` as ``1.10x``, or ``-`` when there is none."""
    value = payload.get("ratios", {}).get(policy, {}).get(key)
    return "-" if value is None else f"{value:.3f}x"


def format_simulation(payload: dict) -> str:
    """The comparison table of ``simulate``, with a legend of what its columns mean."""
    oracle = payload["oracle_expected_reward_last"]
    conversion = payload["reward_kind"] == "conversion"
    last = max(payload["decisions"] // 5, 1)
    lines = [
        f"{payload['decisions']} decisions over {payload['users']} users (seed "
        f"{payload['seed']}); profit, revenue, arm cost and regret are totals.",
        "reward: " + ("1 per conversion." if conversion
                      else "the commission on the seller's sold value minus the arm's cost."
                      if payload["reward_kind"] == "commission"
                      else "the profit, revenue minus the arm's cost on each conversion."),
        "regret: the oracle's expected reward minus the policy's, summed.",
        f"last 20%: the last {last} decisions, after learning: the reward per decision, and",
        "  the expected reward as a share of the oracle's.", "",
        f"{'':<{76 if conversion else 65}}{'last 20%':^23}".rstrip(),
        f"{'policy':<12}{'profit':>12}{'revenue':>12}{'arm cost':>11}"
        + (f"{'reward':>11}" if conversion else "")
        + f"{'conv':>7}{'regret':>11}{'reward/dec':>12}{'of oracle':>11}{'vs static':>11}"
        f"{'dec/s':>8}"]
    for name, m in payload["policies"].items():
        ratio = m["expected_reward_last"] / oracle if oracle else float("nan")
        lines.append(f"{name:<12}{m['profit']:>12,.0f}{m['revenue']:>12,.0f}"
                     f"{m['arm_cost']:>11,.0f}"
                     + (f"{m['cumulative_reward']:>11,.0f}" if conversion else "")
                     + f"{m['conversion_rate']:>7.1%}{m['regret']:>11,.0f}"
                     f"{m['mean_reward_last']:>12.2f}{ratio:>11.1%}"
                     f"{_ratio(payload, name, 'vs_static'):>11}"
                     f"{m['decisions_per_second']:>8,.0f}")
    lines.append("\narm share by tier:")
    for name, m in payload["policies"].items():
        for tier, shares in sorted(m["arm_share_by_tier"].items()):
            text = ", ".join(f"{a} {s:.0%}" for a, s in sorted(shares.items()))
            lines.append(f"  {name:<10} {tier:<9} {text}")
    return "\n".join(lines)


def _analyse_log(args: argparse.Namespace, settings: Settings, name: str,
                 analyse: Callable[[pd.DataFrame], BaseModel],
                 render: Callable[[BaseModel], str]) -> int:
    """Read the decision log of ``--logs``, analyse it, write ``REPORTS/name/name.json`` (with
    the log's path and modification time under ``log``, for the HTML report) and print the
    report (or its JSON with ``--json``); the report's warnings, if it has any, go to stderr
    as well."""
    from experiments.logs import read_log
    from experiments.report import LOG_KEY, log_provenance

    path = Path(args.logs or settings.paths.decision_log)
    settings = settings.for_point(getattr(args, "decision_point", None))
    source = log_provenance(path)  # before reading: a live log may grow meanwhile
    report = analyse(read_log(path, settings))
    out = Path(args.out or Path(settings.paths.reports_dir) / name)
    payload = {**report.model_dump(), LOG_KEY: source}
    _write_json(out / f"{name}.json", payload)
    print(json.dumps(payload, indent=2) if args.json else render(report))
    for warning in getattr(report, "warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _evaluate_policy(args: argparse.Namespace, settings: Settings) -> int:
    from experiments.evaluate import evaluate, format_report

    return _analyse_log(
        args, settings, "ope",
        lambda log: evaluate(log, settings, args.policy, alpha=args.alpha,
                             n_bootstrap=args.n_bootstrap, seed=args.seed),
        format_report)


def _abtest(args: argparse.Namespace, settings: Settings) -> int:
    from experiments.abtest import analyse, format_report

    return _analyse_log(args, settings, "abtest", lambda log: analyse(log, alpha=args.alpha),
                        format_report)


def _fairness(args: argparse.Namespace, settings: Settings) -> int:
    from experiments.fairness import MIN_DECISIONS, fairness, format_report, user_attributes

    users, source = user_attributes(settings,
                                    Path(args.attributes) if args.attributes else None)
    minimum = _or(args.min_decisions, MIN_DECISIONS)
    return _analyse_log(
        args, settings, "fairness",
        lambda log: fairness(log, settings, users, users_source=source,
                             min_decisions=minimum),
        format_report)


def _policies_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from experiments.lifecycle import evaluate_candidates, format_evaluation

    names = [n.strip() for n in (args.candidates or "").split(",") if n.strip()]
    return _analyse_log(args, settings, "policies",
                        lambda log: evaluate_candidates(log, settings, names, seed=args.seed),
                        format_evaluation)


def _policies_promote(args: argparse.Namespace, settings: Settings) -> int:
    from experiments.lifecycle import format_evaluation, promote
    from experiments.logs import read_log

    log = read_log(Path(args.logs or settings.paths.decision_log), settings)
    report, run_id, path = promote(log, settings, args.name, seed=args.seed)
    print(format_evaluation(report))
    print(f"promoted {args.name!r}: {report.candidates[args.name].reason}; recorded in {path} "
          f"and MLflow run {run_id}; the service runs it from its next start")
    return 0


def _policies_compare(args: argparse.Namespace, settings: Settings) -> int:
    from experiments.lifecycle import compare_shadow, format_comparison
    from experiments.logs import read_log

    path = Path(args.logs or settings.paths.decision_log)
    report = compare_shadow(path, read_log(path, settings), settings, shadow=args.shadow,
                            seed=args.seed)
    print(report.model_dump_json(indent=2) if args.json else format_comparison(report))
    return 0


def _register_policies(sub: argparse._SubParsersAction) -> None:
    """``nextbest policies evaluate | promote | compare``."""
    group = command_group(sub, "policies", help="champion and challengers: evaluate, "
                          "promote, compare a shadow")
    p = group.add_parser(
        "evaluate", help="doubly robust estimate of candidates vs the current policy",
        description="Estimate each candidate of policies.candidates (or --candidates) on the "
        "newest policies.window logged decisions with DR, against the policy that logged "
        "them, with a bootstrap interval of the paired gain. Learning configurations are "
        "replayed in log order.")
    p.add_argument("--candidates", help="comma list of candidate names (default: all)")
    for q in (p,):
        q.add_argument("--json", action="store_true", help="print JSON")
        q.add_argument("--out", type=output_dir,
                       help="directory for policies.json (default: reports_dir/policies)")
    p = group.add_parser(
        "promote", help="make a candidate the live policy if the log shows it wins",
        description="Evaluate NAME as `policies evaluate` does; promote it only when the "
        "interval of its gain over the current policy excludes a loss, else refuse and say "
        "why. Either way the estimates and the decision are logged to MLflow.")
    p.add_argument("name", help="a candidate of policies.candidates")
    promote_parser = p
    p = group.add_parser(
        "compare", help="the shadow policy's agreement and off-policy value",
        description="Agreement of the shadow policy (policies.shadow) with the live policy "
        "and the DR estimate of the shadow's value from the live log.")
    p.add_argument("--shadow", help="shadow policy name (default: policies.shadow)")
    p.add_argument("--json", action="store_true", help="print JSON")
    for q in (group.choices["evaluate"], promote_parser, p):
        q.add_argument("--logs", help="decision log (default: settings.paths.decision_log)")
        q.add_argument("--seed", type=non_negative_int, default=0,
                       help="seed of folds and bootstrap")
    group.choices["evaluate"].set_defaults(handler=_policies_evaluate)
    promote_parser.set_defaults(handler=_policies_promote)
    p.set_defaults(handler=_policies_compare)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from experiments.report import write_report

    path = write_report(settings, Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return 0


def _decision_point_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decision-point", default=None, metavar="NAME",
                        help="analyse this decision point's decisions (default buyer_offer)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``simulate``, ``evaluate-policy``, ``abtest``, ``audit fairness`` and ``report``."""
    p = sub.add_parser("simulate", help="compare policies on a simulated marketplace",
                       description="Run random, static, VW epsilon-greedy, VW squarecb and "
                       "oracle policies on one seeded simulated stream; report reward, "
                       "profit, regret, conversion and arm share by tier; plots and MLflow.")
    p.add_argument("--decision-point", default=DEFAULT_POINT,
                   help=f"the decision point to simulate (default {DEFAULT_POINT}; "
                   f"{SELLER_POINT}: sellers and prospective sellers with latent seller "
                   "traits, the seller arms and the seller rule book as static)")
    p.add_argument("--decisions", type=positive_int, default=None,
                   help="requests (default 50000; 3000 with --via-http, at most 20000 there)")
    p.add_argument("--seed", type=non_negative_int, default=7, help="seed of users and requests")
    p.add_argument("--seeds", type=parse_seeds, default=None, metavar="1,2,...",
                   help="run once per seed (1,2,3 or 1-10) and report each seed and the "
                   "spread (median, min, max); no plots")
    p.add_argument("--users", type=positive_int, default=None,
                   help=f"users of the generated population (default {DEFAULT_USERS}; not "
                   "with --data, which brings its own users)")
    p.add_argument("--policies", default=None,
                   help="comma list of random, static, epsilon, squarecb, softmax, service (the "
                   "configured chooser as the service builds it), oracle, always_ARM "
                   f"(default {DEFAULT_POLICIES}; with --via-http: the service's algorithm)")
    p.add_argument("--via-http", metavar="URL",
                   help="run the service's bandit through the live service at URL (POST "
                   "/next_best_action and /feedback, feedback at once) and in-process on the "
                   "same stream, and report whether they agree; writes the simulated users "
                   "into the online store of these settings, which the service must share")
    p.add_argument("--api-key", default=None,
                   help="the service's API key (platform scope) for --via-http (default: "
                   "$NEXTBEST_API_KEY)")
    p.add_argument("--timeout", type=positive_float, default=10.0,
                   help="seconds per HTTP request with --via-http (default 10)")
    p.add_argument("--drift", action="store_true", help="shift the response model mid-run")
    p.add_argument("--data", help="use the synthetic marketplace in DIR (DIR/latent, "
                   "DIR/features) instead of a generated population")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", type=output_dir, help="directory for simulation.json and the plots "
                   "(default: reports_dir/simulation)")
    p.add_argument("--keep-logs", metavar="DIR", type=output_dir,
                   help="keep every policy's decision log in the service's SQLite format as "
                   "DIR/NAME.sqlite (e.g. DIR/squarecb.sqlite), for evaluate-policy and abtest")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-plots", action="store_true", help="do not draw the plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_simulate)

    p = sub.add_parser("evaluate-policy", help="off-policy evaluation on a decision log",
                       description="Estimate a candidate policy's mean reward per decision "
                       "on a logged decision stream with IPS, SNIPS and DR (LightGBM reward "
                       "model), each with a bootstrap interval.\n\n" + LOG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", help="decision log (default: settings.paths.decision_log)")
    _decision_point_argument(p)
    p.add_argument("--policy", default="static",
                   help="random, static, a saved VW model file, or file.py:function "
                   "(row dict -> {arm: probability}); default static")
    p.add_argument("--alpha", type=share, default=0.05, help="1 - interval level")
    p.add_argument("--n-bootstrap", type=positive_int, default=200,
                   help="bootstrap resamples (at least 10)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of folds and bootstrap")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", type=output_dir,
                   help="directory for ope.json (default: reports_dir/ope)")
    p.set_defaults(handler=_evaluate_policy)

    p = sub.add_parser("abtest", help="lift of each policy/campaign over the control group",
                       description="Conversion, revenue and profit per policy or campaign "
                       "against the control group, overall and per tier, with intervals, "
                       "z-/Welch tests and ROI per arm.\n\n" + LOG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", help="decision log (default: settings.paths.decision_log)")
    _decision_point_argument(p)
    p.add_argument("--alpha", type=share, default=0.05, help="significance level")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", type=output_dir,
                   help="directory for abtest.json (default: reports_dir/abtest)")
    p.set_defaults(handler=_abtest)

    audit = command_group(sub, "audit", help="the audit log and the fairness of offers")
    p = audit.add_parser(
        "fairness", help="offer rate and value by tier, region and segment (four-fifths rule)",
        description="Offer rate (share of decisions outside the control group that showed "
        "an arm whose terms have a value: a discount, installment terms) and mean offer "
        "value (its cost at the item price) by tier, region and segment, with fairlearn's "
        "MetricFrame; the ratio of the lowest to the highest offer rate per attribute is "
        "flagged below 0.8 (the four-fifths rule). Attributes the log lacks are joined on "
        "user_id from --attributes or the latest features build.\n\n" + LOG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", help="decision log (default: settings.paths.decision_log)")
    p.add_argument("--attributes", help="table (Parquet or CSV) with user_id and region / tier / "
                   "segment to join (default: the latest features build; simulate "
                   "--keep-logs DIR writes DIR/users.parquet)")
    p.add_argument("--min-decisions", type=positive_int, default=None,
                   help="groups with fewer decisions are shown but not compared (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", type=output_dir,
                   help="directory for fairness.json (default: reports_dir/fairness)")
    p.set_defaults(handler=_fairness)

    _register_policies(sub)

    p = sub.add_parser("report", help="one self-contained HTML report for marketing",
                       description="Write report.html with the segment report, model "
                       "metrics, policy comparison, OPE and A/B results and their charts.")
    p.add_argument("--out", type=output_dir,
                   help="directory of report.html (default: reports_dir)")
    p.set_defaults(handler=_report)
