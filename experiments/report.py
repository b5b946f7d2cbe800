"""One self-contained HTML page a marketing operator can act on (``nextbest report``).

The page opens with a dated summary: when it was generated, the period the raw data covers,
the features ``as_of`` dates, the champion model versions, and the segment alerts (Platinum
churn risk, Dormant share, tier share shifts) each with what to do about it. Then one section
per input: segments (tiers in their natural order, :data:`features.segmentation.TIERS`),
models (churn and propensity, each chart captioned with its model, version and MLflow run),
the policy comparison of the last ``nextbest simulate``, offline policy evaluation
(``nextbest evaluate-policy``), A/B analysis (``nextbest abtest``) and the fairness of
offers by tier, region and segment (``nextbest audit fairness``), and each campaign's funnel
and lift over its own holdout (:mod:`campaigns.report`).

Every chart says where it came from. The OPE, A/B and fairness sections name the decision log they
analysed (path and modification time, recorded by the command under the ``log`` key of its
JSON, see :func:`log_provenance`); an analysis whose log is unknown is left out with a
sentence saying so, and two analyses of different logs are flagged, never mixed silently.
Every number goes through :func:`fmt` (thousands separators, percentages, no scientific
notation). Charts are embedded as base64 PNGs, so the page opens anywhere.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from features.segmentation import tier_order
from nextbest.config import Settings

if TYPE_CHECKING:
    from campaigns.report import CampaignReport, Lift
    from features.report import Alert, SegmentsReport

log = logging.getLogger(__name__)

T = TypeVar("T")
MODELS = ("churn", "propensity")
SELLER_CHURN = "seller_churn"
LOG_KEY = "log"  # where evaluate-policy and abtest record the log they analysed
STYLE = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;
line-height:1.4}table{border-collapse:collapse;margin:0.6em 0}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:right}td{white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}table.facts td{text-align:left;
white-space:normal}table.facts td:first-child{font-weight:600;background:#f7f7f7;
white-space:nowrap}.missing{color:#a33;font-style:italic}.source{color:#555;font-size:0.9em}
.alert{border-left:5px solid #c0392b;background:#fdf2f0;padding:0.5em 1em;margin:0.8em 0}
.alert .todo{font-weight:600}.warning{border-left:5px solid #d68910;background:#fef5e7;
padding:0.4em 1em}figure{display:inline-table;margin:1em 1.5em 1em 0;vertical-align:top}
figure img{max-width:100%}figcaption{display:table-caption;caption-side:bottom;
font-size:0.9em;color:#444;padding-top:0.3em}h2{border-bottom:2px solid #ddd;
padding-bottom:0.2em;margin-top:1.8em}"""

# ---------------------------------------------------------------------------------------
# Formatting: the one helper every number and time on the page goes through.

Kind = Literal["count", "money", "number", "signed", "share", "signed_share", "points",
               "p_value"]


def fmt(value: object, kind: Kind = "number") -> str:
    """``value`` as text for the page: never scientific notation.

    Kinds: ``count`` 12,345; ``money`` 18,550.25; ``number`` a plain figure with as many
    decimals as its size needs (18,550 / 12.35 / 0.128); ``signed`` the same with its sign;
    ``share`` a fraction as a percentage (0.1283 -> 12.8%); ``signed_share`` +12.8%;
    ``points`` a difference of two shares in percentage points (+1.2 pp); ``p_value``
    0.034 or < 0.001. A ``datetime`` becomes ``YYYY-MM-DD HH:MM:SS UTC``, a ``date`` ISO
    8601, whatever the kind. Missing values (None, NaN, infinite) read ``n/a``.
    """
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, str | bool):
        return "n/a" if value is None else str(value)
    x = float(value)  # type: ignore[arg-type]
    if not math.isfinite(x):
        return "n/a"
    sign = "+" if kind in ("signed", "signed_share", "points") else ""
    if kind == "count":
        return f"{round(x):,}"
    if kind == "money":
        return f"{x:,.2f}"
    if kind in ("share", "signed_share"):
        return f"{x:{sign},.1%}"
    if kind == "points":
        return f"{x * 100:+,.1f} pp"
    if kind == "p_value":
        return "< 0.001" if x < 0.001 else f"{x:.3f}"
    size = abs(x)
    # Three significant digits below 1 (0.128, 0.00412), fewer decimals for larger values.
    decimals = (0 if size >= 100 else 2 if size >= 1 or size == 0
                else min(8, 2 - math.floor(math.log10(size))))
    return f"{x:{sign},.{decimals}f}"


# ---------------------------------------------------------------------------------------
# Where each input came from.


def _mtime(path: Path) -> datetime:
    """When ``path`` was last written. For SQLite its write-ahead log counts too, unless it
    is empty: a read-only reader creates an empty one, which changes no data."""
    wal = Path(f"{path}-wal")
    stats = [path.stat()] + ([wal.stat()] if wal.is_file() and wal.stat().st_size else [])
    return datetime.fromtimestamp(max(s.st_mtime for s in stats), UTC)


def log_provenance(path: Path) -> dict[str, str]:
    """What ``evaluate-policy`` and ``abtest`` record under ``log`` in their JSON: the log's
    absolute path and its modification time (ISO 8601, UTC) when they read it."""
    path = Path(path)
    modified = _mtime(path).isoformat() if path.exists() else ""
    return {"path": str(path.resolve()), "modified": modified}


@dataclass
class SourceFile:
    """A JSON file another command wrote, and when."""

    path: Path
    written: datetime
    payload: dict

    @classmethod
    def read(cls, path: Path) -> SourceFile | None:
        return (cls(path, _mtime(path), json.loads(path.read_text()))
                if path.is_file() else None)


@dataclass
class LogAnalysis:
    """An OPE or A/B result and the decision log it analysed."""

    file: SourceFile
    log_path: str | None
    log_modified: datetime | None
    log_now: datetime | None  # the log's modification time today (None: it is gone)

    @classmethod
    def read(cls, path: Path) -> LogAnalysis | None:
        file = SourceFile.read(path)
        if file is None:
            return None
        recorded = file.payload.get(LOG_KEY) or {}
        log_path = recorded.get("path") or None
        modified = (datetime.fromisoformat(recorded["modified"])
                    if recorded.get("modified") else None)
        now = _mtime(Path(log_path)) if log_path and Path(log_path).exists() else None
        return cls(file, log_path, modified, now)

    @property
    def log_changed(self) -> bool:
        return self.log_now is None or self.log_now != self.log_modified

    def source_html(self, command: str) -> str:
        """Which log, when it was modified, and when the analysis was written."""
        text = (f"Source: decision log <code>{html.escape(str(self.log_path))}</code>, "
                f"modified {fmt(self.log_modified)}; analysed by <code>nextbest {command}"
                f"</code> into <code>{html.escape(_rel(self.file.path))}</code> at "
                f"{fmt(self.file.written)}.")
        out = f'<p class="source">{text}</p>'
        if self.log_now is None:
            out += _warning("This log no longer exists: the figures below describe it as "
                            f"it was on {fmt(self.log_modified)}.")
        elif self.log_changed:
            out += _warning(f"This log has changed since it was analysed (now modified "
                            f"{fmt(self.log_now)}): re-run `nextbest {command} --logs "
                            f"{self.log_path}` to update these figures.")
        return out


@dataclass
class Champion:
    """One champion model as the registry knows it."""

    name: str
    version: str
    run_id: str
    registered: datetime
    params: dict[str, str]
    metrics: dict[str, float]
    plots: dict[str, Path] = field(default_factory=dict)


@dataclass
class Inputs:
    """Everything the page shows, read once; ``problems`` holds what could not be read."""

    generated: datetime
    data_period: tuple[datetime, datetime] | None = None
    features_as_of: list[date] = field(default_factory=list)
    segments: SegmentsReport | None = None
    champions: dict[str, Champion] = field(default_factory=dict)
    simulation: SourceFile | None = None
    ope: LogAnalysis | None = None
    abtest: LogAnalysis | None = None
    fairness: LogAnalysis | None = None
    campaigns: list[CampaignReport] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)


def _data_period(raw_dir: Path) -> tuple[datetime, datetime] | None:
    """First and last ``ts`` of the raw orders and events (None without rows)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.contract import raw_path

    bounds = []
    for table in ("orders", "events"):
        path = raw_path(raw_dir, table)
        if path.is_file():
            low_high = pc.min_max(pq.read_table(path, columns=["ts"])["ts"])
            if low_high["min"].is_valid:
                bounds += [low_high["min"].as_py(), low_high["max"].as_py()]
    return (min(bounds), max(bounds)) if bounds else None


def _segments(settings: Settings, dates: list[date], with_model: bool) -> SegmentsReport:
    """The segments report of the latest features against the previous ones, with the
    Platinum churn risk scored by the champion churn model (recency without one)."""
    from features.report import build_report
    from training.loader import load_churn_scorer

    return build_report(settings, dates[-1], dates[-2] if len(dates) > 1 else None,
                        scorer=load_churn_scorer(settings) if with_model else None)


def _champions(settings: Settings, scratch: Path) -> dict[str, Champion]:
    """Each registered ``@champion`` with its run's params, metrics and plots."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.registry import CHAMPION, configure

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {}  # no registry yet; opening it would create one (seconds of migrations)
    client = configure(settings)
    found = {}
    for name in (*MODELS, SELLER_CHURN):
        try:
            version = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            continue
        run = client.get_run(version.run_id)
        plots = Path(mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="plots", dst_path=str(scratch / name)))
        found[name] = Champion(
            name=name, version=str(version.version), run_id=version.run_id,
            registered=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
            params=dict(run.data.params), metrics=dict(run.data.metrics),
            plots={p.stem: p for p in sorted(plots.glob("*.png"))})
    return found


def _campaign_reports(settings: Settings, now: datetime) -> list[CampaignReport]:
    """The report of every configured campaign that fired at least once, in config order
    (none without a campaign store)."""
    from campaigns.report import campaign_report
    from campaigns.store import CampaignStore
    from nextbest.storage import exists, location

    target = location(settings, "campaign_store")
    if not exists(target):
        return []
    store = CampaignStore(target)
    try:
        reports = [campaign_report(settings, store, c.name, now=now)
                   for c in settings.campaigns.campaigns]
    finally:
        store.close()
    return [report for report in reports if report.funnel["fired"]]


def _attempt(problems: dict[str, str], name: str, read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` with the error noted in ``problems`` under ``name``."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - one broken input must not hide the rest
        log.warning("report: could not read the %s: %s", name, exc)
        problems[name] = f"{type(exc).__name__}: {exc}"
        return default


def gather(settings: Settings, scratch: Path, now: datetime | None = None) -> Inputs:
    """Read every input of the page; one that cannot be read is noted, not raised."""
    from features.build import available_as_of

    inputs = Inputs(generated=now or datetime.now(UTC))
    problems = inputs.problems
    reports = Path(settings.paths.reports_dir)
    inputs.data_period = _attempt(problems, "raw data",
                                  lambda: _data_period(Path(settings.paths.raw_dir)), None)
    inputs.features_as_of = _attempt(problems, "features", lambda: available_as_of(settings),
                                     [])
    inputs.champions = _attempt(problems, "model registry",
                                lambda: _champions(settings, scratch), {})
    if inputs.features_as_of:
        inputs.segments = _attempt(problems, "segments", lambda: _segments(
            settings, inputs.features_as_of, "churn" in inputs.champions), None)
    inputs.simulation = _attempt(problems, "simulation", lambda: SourceFile.read(
        reports / "simulation" / "simulation.json"), None)
    inputs.ope = _attempt(problems, "offline evaluation",
                          lambda: LogAnalysis.read(reports / "ope" / "ope.json"), None)
    inputs.abtest = _attempt(problems, "A/B analysis",
                             lambda: LogAnalysis.read(reports / "abtest" / "abtest.json"), None)
    inputs.fairness = _attempt(problems, "fairness report", lambda: LogAnalysis.read(
        reports / "fairness" / "fairness.json"), None)
    inputs.campaigns = _attempt(problems, "campaign store",
                                lambda: _campaign_reports(settings, inputs.generated), [])
    return inputs


# ---------------------------------------------------------------------------------------
# HTML building blocks.


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    """An HTML table of text cells (numbers are formatted with :func:`fmt` by the caller)."""
    for row in rows:
        for cell in row:
            if not isinstance(cell, str):
                raise TypeError(f"table cell {cell!r} was not formatted with fmt()")
    head = ("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}>{head}{body}</table>"


def _figure(path: Path, caption: str) -> str:
    """A captioned ``<figure>`` holding the PNG at ``path`` as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    text = html.escape(caption)
    return (f'<figure><img alt="{text}" src="data:image/png;base64,{data}">'
            f"<figcaption>{text}</figcaption></figure>")


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _warning(text: str) -> str:
    return f'<p class="warning">{html.escape(text)}</p>'


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _rel(path: Path | str) -> str:
    """``path`` relative to the working directory when it lies under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------
# Summary and alerts.

ACTIONS = {
    "platinum_churn_risk": (
        "Contact these Platinum customers personally this week: a thank-you note, early "
        "access to new listings or free certification rather than a discount. Check at the "
        "next features build whether they bought again."),
    "dormant_share": (
        "Start a win-back campaign for the Dormant tier (a reminder of items they viewed, a "
        "time-limited coupon for those without the coupon_abuser tag) and look at why "
        "buyers stopped after their last order."),
    "tier_share_shift": (
        "Before changing any campaign, check whether a data import, a change of the tier "
        "thresholds or a real change in buying explains the move. If it is real, adjust "
        "the campaigns aimed at this tier."),
    "vip_sellers_sleeping": (
        "Call these sellers through their dedicated support contact: ask what stopped them "
        "(commission, slow sales, a bad experience) and send the recall message with the "
        "VIP commission rebate. Check at the next features build whether they listed again."),
}
SHOWN_USERS = 20


def _alert_text(alert: Alert, segments: SegmentsReport, inputs: Inputs) -> str:
    """One alert in plain words, its numbers through :func:`fmt`."""
    if alert.kind == "platinum_churn_risk":
        churn = inputs.champions.get("churn")
        rule = (f"churn probability of at least {fmt(alert.threshold, 'share')} from the "
                f"churn model v{churn.version if churn else '?'}"
                if segments.churn_risk_source == "churn_model" else
                f"no purchase for more than {fmt(alert.threshold, 'count')} days; no churn "
                "model could score them")
        return (f"{fmt(alert.value, 'count')} Platinum customer(s) at high risk of "
                f"churning ({rule}).")
    if alert.kind == "vip_sellers_sleeping":
        return (f"{fmt(alert.value, 'count')} VIP seller(s) at {fmt(segments.compare_to)} "
                f"are sleeping at {fmt(segments.as_of)}: no listing or sale for "
                "longer than the seller active window.")
    if alert.kind == "dormant_share":
        return (f"Dormant users are {fmt(alert.value, 'share')} of all users, above the "
                f"limit of {fmt(alert.threshold, 'share')}.")
    return (f"The {alert.tier} share moved {fmt(alert.value, 'points')} since "
            f"{fmt(segments.compare_to)} (limit {fmt(alert.threshold, 'share')}).")


def _alerts_html(inputs: Inputs) -> str:
    segments = inputs.segments
    if segments is None:
        return _missing("No segment alerts could be computed: no features have been built "
                        "(run `nextbest features build`).")
    if not segments.alerts:
        return _p(f"No segment alert on the features as_of {fmt(segments.as_of)}: no "
                  "Platinum customer at high churn risk, the Dormant share is within its "
                  "limit and no tier share moved more than allowed.")
    parts = []
    for alert in segments.alerts:
        users = ""
        if alert.user_ids:
            shown = ", ".join(alert.user_ids[:SHOWN_USERS])
            more = len(alert.user_ids) - SHOWN_USERS
            users = (f"<p>Customers: {html.escape(shown)}"
                     + (f" and {fmt(more, 'count')} more (all in `nextbest segments report "
                        "--json`)" if more > 0 else "") + ".</p>")
        parts.append(f'<div class="alert" data-kind="{alert.kind}">'
                     f"<p>{html.escape(_alert_text(alert, segments, inputs))}</p>{users}"
                     f'<p class="todo">What to do: {html.escape(ACTIONS[alert.kind])}</p>'
                     "</div>")
    return "".join(parts)


def _notes(inputs: Inputs) -> list[str]:
    """What the reader should know before trusting the page."""
    notes = []
    latest = inputs.features_as_of[-1] if inputs.features_as_of else None
    if latest and inputs.data_period and latest <= inputs.data_period[1].date():
        notes.append(f"The newest features (as_of {fmt(latest)}) miss the data after it "
                     f"(last record {fmt(inputs.data_period[1])}): run `nextbest features "
                     "build` for current tiers and alerts.")
    ope, ab = inputs.ope, inputs.abtest
    if ope and ab and ope.log_path and ab.log_path and ope.log_path != ab.log_path:
        notes.append(f"The offline evaluation and the A/B analysis come from different "
                     f"logs ({ope.log_path} and {ab.log_path}): do not compare their "
                     "figures directly.")
    for name, problem in inputs.problems.items():
        notes.append(f"The {name} could not be read ({problem}).")
    return notes


def _analysis_fact(analysis: LogAnalysis | None, command: str, what: str) -> str:
    if analysis is None:
        return f"none yet (run `nextbest {command}`)"
    if analysis.log_path is None:
        return "left out: the log it came from was not recorded"
    return (f"{what} on {analysis.log_path} (modified {fmt(analysis.log_modified)}), "
            f"analysed {fmt(analysis.file.written)}")


def summary_section(inputs: Inputs) -> str:
    """Generation time, data period, models, sources, alerts with what to do, notes."""
    period = (f"{fmt(inputs.data_period[0])} to {fmt(inputs.data_period[1])} (first and "
              "last order or event in the raw data)" if inputs.data_period else
              "no raw orders or events found")
    dates = inputs.features_as_of
    features = (f"as_of {fmt(dates[0])} to {fmt(dates[-1])} ({fmt(len(dates), 'count')} "
                f"date(s)); this report uses the latest, {fmt(dates[-1])}" if dates else
                "none built yet (run `nextbest features build`)")
    models = "; ".join(f"{c.name} v{c.version} (registered {fmt(c.registered)})"
                       for c in inputs.champions.values()) or "no champion registered yet"
    sim = inputs.simulation
    simulation = (f"{fmt(sim.payload['decisions'], 'count')} decisions, seed "
                  f"{sim.payload['seed']}, written {fmt(sim.written)}" if sim else
                  "none yet (run `nextbest simulate`)")
    ope_what = (f"candidate {inputs.ope.file.payload.get('policy')!r}" if inputs.ope
                else "")
    facts = [["Generated", fmt(inputs.generated)], ["Data period", period],
             ["Features", features], ["Champion models", models],
             ["Simulation", simulation],
             ["Offline evaluation", _analysis_fact(inputs.ope, "evaluate-policy", ope_what)],
             ["A/B analysis", _analysis_fact(inputs.abtest, "abtest", "control vs policies")],
             ["Fairness", _analysis_fact(inputs.fairness, "audit fairness",
                                         "offer rates by tier, region and segment")],
             ["Campaigns", ", ".join(f"{r.campaign} ({fmt(r.funnel['fired'], 'count')} "
                                     "firings)" for r in inputs.campaigns)
              or "none has fired yet"]]
    notes = _notes(inputs)
    return (_table([], facts, css="facts")
            + '<h3 id="alerts">Alerts and what to do</h3>' + _alerts_html(inputs)
            + ("<h3>Notes</h3>" + "".join(_warning(n) for n in notes) if notes else ""))


# ---------------------------------------------------------------------------------------
# Sections.


def segments_section(inputs: Inputs, settings: Settings, scratch: Path) -> str:
    """Tier sizes, shares and ARPU in tier order, RFM segments, and the tier chart."""
    from features.report import render_chart

    report = inputs.segments
    if report is None:
        return _missing("No features yet: run `nextbest features build`.")
    previous = {t.tier: t.share for t in report.compare_tiers or []}
    header = ["tier", "users", "share", "ARPU (365 days)", "ARPU (30 days)"]
    if report.compare_to:
        header += [f"share at {fmt(report.compare_to)}", "change"]
    rows = []
    for t in sorted(report.tiers, key=lambda t: tier_order(t.tier)):
        row = [t.tier, fmt(t.users, "count"), fmt(t.share, "share"),
               fmt(t.arpu_365d, "money"), fmt(t.arpu_30d, "money")]
        if report.compare_to:
            old = previous.get(t.tier, 0.0)
            row += [fmt(old, "share"), fmt(t.share - old, "points")]
        rows.append(row)
    compared = (f", compared with the previous features, as_of {fmt(report.compare_to)}"
                if report.compare_to else "")
    chart = render_chart(report, scratch / "segments.png")
    caption = (f"Tier shares at as_of {fmt(report.as_of)}"
               + (f" and {fmt(report.compare_to)}, and the tier migration between them"
                  if report.compare_to else "")
               + f" (source: the features in {_rel(settings.paths.features_dir)}).")
    segments = _table(["RFM segment", "users", "share"],
                      [[s.segment, fmt(s.users, "count"), fmt(s.share, "share")]
                       for s in report.segments])
    return (_p(f"Features as of {fmt(report.as_of)}: {fmt(report.users, 'count')} users"
               f"{compared}. ARPU is revenue per user.")
            + _table(header, rows) + _figure(chart, caption) + "<h3>RFM segments</h3>"
            + segments)


def sellers_section(inputs: Inputs, settings: Settings) -> str:
    """Seller tiers (users, GMV and commission), their migration, and the seller churn
    champion against its recency baseline."""
    report = inputs.segments
    if report is None:
        return _missing("No features yet: run `nextbest features build`.")
    if not report.sellers:
        return _missing("The features hold no seller tiers: rebuild them with `nextbest "
                        "features build`.")
    t = settings.features.tiers
    parts = [_p(f"Consignors by seller RFM at as_of {fmt(report.as_of)}: VIP are the top "
                f"{fmt(t.seller_vip_share, 'share')} of active sellers by "
                f"{t.seller_value_column} who listed or sold in the last "
                f"{t.seller_vip_recency_days} days with at least {t.seller_vip_min_sales} sales "
                f"in a year; potential the other sellers active in "
                f"{t.seller_active_days} days; sleeping the others; prospective users never "
                f"consigned ({t.seller_prospect_when}). GMV is the value sold."),
             _table(["seller tier", "users", "share of users", "GMV (365 days)",
                     "commission (365 days)", "GMV per user", "commission per user"],
                    [[r.seller_tier, fmt(r.users, "count"), fmt(r.share, "share"),
                      fmt(r.gmv_365d, "money"), fmt(r.commission_365d, "money"),
                      fmt(r.gmv_per_user, "money"), fmt(r.commission_per_user, "money")]
                     for r in report.sellers])]
    m = report.seller_migration
    if m is not None:
        parts.append(f"<h3>Seller tier migration, {fmt(m.from_as_of)} (rows) to "
                     f"{fmt(m.to_as_of)} (columns)</h3>"
                     + _table(["from \\ to", *m.tiers_to],
                              [[name, *(fmt(n, "count") for n in counts)]
                               for name, counts in zip(m.tiers_from, m.counts, strict=True)]))
    champ = inputs.champions.get(SELLER_CHURN)
    if champ is None:
        parts.append(_missing("No seller churn champion yet: run `nextbest train "
                              "seller_churn`."))
    else:
        parts.append(
            f'<h3 id="model-{SELLER_CHURN}">Seller churn model v{champ.version}</h3>'
            + _p(f"Predicts the probability that a seller lists nothing in the next "
                 f"{settings.training.labels.seller_churn_horizon_days} days.")
            + f'<p class="source">Source: MLflow run {html.escape(champ.run_id)}; validation '
              f"cutoff {html.escape(champ.params.get('as_of', '?'))}.</p>"
            + _table(["scorer", *(h for _, h in MODEL_METRICS)],
                     [[scorer, *(fmt(champ.metrics.get(prefix + m)) for m, _ in MODEL_METRICS)]
                      for scorer, prefix in (("LightGBM (champion)", ""),
                                             ("recency of the last listing",
                                              "baseline_recency_"))]))
    return "".join(parts)


MODEL_METRICS = (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"), ("log_loss", "log loss"),
                 ("brier", "Brier"), ("lift_top_decile", "top-decile lift"),
                 ("ece", "calibration error"))
SCORERS = (("LightGBM (champion)", ""), ("RFM baseline", "baseline_rfm_"),
           ("BG/NBD baseline", "baseline_bgnbd_"))
MODEL_PLOTS = {
    "roc": "ROC curve: the higher and further left, the better the ranking",
    "calibration": "calibration: predicted against observed rate, on the diagonal is right",
    "lift": "lift per score decile: how much more often the top-scored users have the event",
}


def _model_question(name: str, settings: Settings) -> str:
    labels = settings.training.labels
    return (f"the probability that a customer places no order in the next "
            f"{labels.churn_horizon_days} days" if name == "churn" else
            f"the probability that a customer places an order in the next "
            f"{labels.propensity_horizon_days} days")


def models_section(inputs: Inputs, settings: Settings) -> str:
    """Per champion: what it predicts, where it came from, metrics and captioned charts."""
    if "model registry" in inputs.problems:
        return _missing(f"The model registry could not be read "
                        f"({inputs.problems['model registry']}).")
    if not inputs.champions:
        return _missing("No champion model registered yet: run `nextbest train churn` and "
                        "`nextbest train propensity`.")
    parts = [_p("Each champion on its out-of-time validation users, with the two baselines "
                "scored on the same users.")]
    for name in MODELS:
        champ = inputs.champions.get(name)
        title = f"{name.capitalize()} model"
        if champ is None:
            parts.append(f"<h3>{title}</h3>" + _missing(f"No {name} champion yet: run "
                                                        f"`nextbest train {name}`."))
            continue
        cutoff = champ.params.get("as_of", "?")
        label = f"{title} v{champ.version}"
        parts.append(
            f'<h3 id="model-{name}">{label}</h3>'
            + _p(f"Predicts {_model_question(name, settings)}.")
            + f'<p class="source">Source: MLflow run {html.escape(champ.run_id)}, registered '
              f"as {name} v{champ.version} at {fmt(champ.registered)}; validation cutoff "
              f"{html.escape(cutoff)}, "
              f"{fmt(float(champ.params.get('n_evaluation', 'nan')), 'count')} validation "
              "users.</p>"
            + _table(["scorer", *(h for _, h in MODEL_METRICS)],
                     [[scorer, *(fmt(champ.metrics.get(prefix + m)) for m, _ in MODEL_METRICS)]
                      for scorer, prefix in SCORERS]))
        for stem, what in MODEL_PLOTS.items():
            if stem in champ.plots:
                parts.append(_figure(champ.plots[stem],
                                     f"{label}: {what}. Validation cutoff {cutoff}, MLflow "
                                     f"run {champ.run_id[:8]}."))
    return "".join(parts)


SIMULATION_PLOTS = {
    "cumulative_reward": "Cumulative reward of each policy over the simulated decisions",
    "regret": "Cumulative regret: reward lost against the oracle, lower is better",
}


def simulation_section(inputs: Inputs) -> str:
    """The policy comparison table and charts of the last ``nextbest simulate``."""
    sim = inputs.simulation
    if sim is None:
        return _missing("No simulation yet: run `nextbest simulate`.")
    payload = sim.payload
    oracle = payload.get("oracle_expected_reward_last")
    rows = [[name, fmt(m["cumulative_reward"], "money"), fmt(m["profit"], "money"),
             fmt(m["regret"], "money"), fmt(m["conversion_rate"], "share"),
             fmt(m["mean_reward_last"]),
             fmt(m["expected_reward_last"] / oracle if oracle else None, "share")]
            for name, m in payload["policies"].items()]
    drift = ", with a drift of the response model mid-run" if payload.get("drift") else ""
    users = (f" over {fmt(payload['users'], 'count')} users"
             if payload.get("users") else "")
    source = (f"Source: <code>{html.escape(_rel(sim.path))}</code>, written by <code>nextbest "
              f"simulate</code> at {fmt(sim.written)}.")
    parts = [_p(f"{fmt(payload['decisions'], 'count')} simulated decisions{users}, seed "
                f"{payload['seed']}{drift}. Reward and profit are totals over all decisions; "
                "the last columns look at the final 20% of decisions, once the bandits have "
                "learned."),
             f'<p class="source">{source}</p>',
             _table(["policy", "reward", "profit", "regret", "conversion",
                     "mean reward per decision, last 20%", "share of the oracle, last 20%"],
                    rows)]
    for stem, path in _simulation_charts(sim):
        what = SIMULATION_PLOTS.get(stem) or (
            f"Arms shown to each tier over time by the {stem.removeprefix('arm_share_')} "
            "policy")
        parts.append(_figure(path, f"{what} (simulation written {fmt(sim.written)})."))
    return "".join(parts)


def _simulation_charts(sim: SourceFile) -> list[tuple[str, Path]]:
    """The charts of this simulation: the files it lists under ``plots``; for a file
    written before that was recorded, the charts named after its policies."""
    listed = sim.payload.get("plots")
    if listed is None:
        listed = [f"{stem}.png" for stem in SIMULATION_PLOTS] + [
            f"arm_share_{p}.png" for p in sim.payload["policies"] if p != "oracle"]
    paths = [sim.path.parent / Path(name).name for name in listed]
    return [(p.stem, p) for p in paths if p.is_file()]


OPE_NAMES = {"ips": "IPS (inverse propensity)", "snips": "SNIPS (self-normalised IPS)",
             "dr": "DR (doubly robust)"}


def _unrecorded(command: str) -> str:
    return _missing(f"Left out: the last `nextbest {command}` did not record which decision "
                    f"log it analysed, so its figures cannot be told apart from another "
                    f"log's. Re-run `nextbest {command} --logs LOG` to show it here.")


def ope_section(inputs: Inputs, scratch: Path) -> str:
    """The candidate's estimated value on its named log, with an interval chart."""
    from experiments.plots import interval_chart

    ope = inputs.ope
    if ope is None:
        return _missing("No offline evaluation yet: run `nextbest evaluate-policy --logs LOG "
                        "--policy POLICY`.")
    if ope.log_path is None:
        return _unrecorded("evaluate-policy")
    payload = ope.file.payload
    est = {"logged policy (observed)": payload["logging_value"],
           **{OPE_NAMES.get(k, k): v for k, v in payload["estimates"].items()}}
    level = fmt(1 - payload.get("alpha", 0.05), "share")
    rows = [[name, fmt(e["mean"]), fmt(e["low"]), fmt(e["high"])] for name, e in est.items()]
    log_name = Path(ope.log_path).name
    chart = interval_chart(
        f"Reward per decision of '{payload['policy']}' (log {log_name})",
        {n: (e["mean"], e["low"], e["high"]) for n, e in est.items()},
        scratch / "ope.png", reference=payload["logging_value"]["mean"])
    return (ope.source_html("evaluate-policy")
            + _p(f"Candidate policy '{payload['policy']}' evaluated on "
                 f"{fmt(payload['n'], 'count')} logged decisions: the estimated mean reward "
                 f"per decision had it decided instead, with {level} intervals.")
            + _table(["estimator", "reward per decision", "low", "high"], rows)
            + _figure(chart, f"Estimated reward per decision of the candidate "
                             f"'{payload['policy']}' against the logged policy (dashed line), "
                             f"from the log {ope.log_path}."))


def abtest_section(inputs: Inputs, scratch: Path) -> str:
    """Lift of each policy or campaign over the control group, per tier, and ROI per arm."""
    from experiments.plots import interval_chart

    ab = inputs.abtest
    if ab is None:
        return _missing("No A/B analysis yet: run `nextbest abtest --logs LOG`.")
    if ab.log_path is None:
        return _unrecorded("abtest")
    payload = ab.file.payload
    groups = payload["overall"] + sorted(payload["per_tier"],
                                         key=lambda g: (g["group"], tier_order(g["tier"])))
    rows = [[g["group"], g["tier"], fmt(g["n"], "count"),
             fmt(g["conversion"]["treatment"], "share"),
             fmt(g["conversion"]["control"], "share"),
             fmt(g["conversion"]["diff"], "points"),
             f"{fmt(g['conversion']['low'], 'points')} to "
             f"{fmt(g['conversion']['high'], 'points')}",
             fmt(g["conversion"]["p_value"], "p_value"), fmt(g["profit"]["diff"], "signed")]
            for g in groups]
    arms = [[a["arm"], fmt(a["n"], "count"), fmt(a["spend"], "money"),
             fmt(a["incremental_revenue"], "money"), fmt(a["roi"], "signed_share")]
            for a in payload["arms"]]
    level = fmt(1 - payload.get("alpha", 0.05), "share")
    parts = [ab.source_html("abtest"),
             _p(f"{fmt(payload['n_decisions'], 'count')} decisions, "
                f"{fmt(payload['n_control'], 'count')} of them in the control group (no "
                f"action). Lift is treated minus control; intervals at {level}."),
             _table(["policy/campaign", "tier", "decisions", "conversion", "control "
                     "conversion", "conversion lift", "interval", "p-value",
                     "profit lift per decision"], rows),
             _table(["arm", "decisions", "spend", "incremental revenue", "ROI"], arms)]
    if groups:
        chart = interval_chart(
            f"Conversion lift over control (log {Path(ab.log_path).name})",
            {f"{g['group']} / {g['tier']}": (g["conversion"]["diff"], g["conversion"]["low"],
                                             g["conversion"]["high"]) for g in groups},
            scratch / "abtest.png", reference=0.0, percent=True)
        parts.append(_figure(chart, "Conversion lift over the control group in percentage "
                                    f"points, per policy and tier, from the log "
                                    f"{ab.log_path}."))
    return "".join(parts)


def fairness_section(inputs: Inputs) -> str:
    """Offer rate and mean offer value per tier, region and segment, and the four-fifths
    check of each attribute (``nextbest audit fairness``)."""
    fair = inputs.fairness
    if fair is None:
        return _missing("No fairness report yet: run `nextbest audit fairness --logs LOG`.")
    if fair.log_path is None:
        return _unrecorded("audit fairness")
    payload = fair.file.payload
    threshold = payload.get("threshold", 0.8)
    parts = [fair.source_html("audit fairness"),
             _p(f"{fmt(payload['n_decisions'], 'count')} decisions, "
                f"{fmt(payload['n_control'], 'count')} of them in the control group (left out). "
                f"An offer is an arm whose terms have a value "
                f"({', '.join(payload['offer_arms']) or 'none configured'}); its value is "
                f"its cost at the item price. The ratio is the lowest offer rate over the "
                f"highest, among groups with {fmt(payload['min_decisions'], 'count')} or more "
                f"decisions; below {fmt(threshold, 'share')} it fails the four-fifths rule. "
                f"Users' attributes from {payload['users_source']}.")]
    for result in payload["attributes"]:
        ratio = result["ratio"]
        verdict = ("not enough groups to compare" if ratio is None else
                   f"ratio {fmt(ratio)}: {result['lowest']} get offers at "
                   f"{fmt(ratio, 'share')} of the rate of {result['highest']}")
        parts.append(f"<h3>By {html.escape(result['attribute'])}</h3>")
        parts.append(_warning(f"Below the four-fifths rule: {verdict}.") if result["flagged"]
                     else _p(verdict[:1].upper() + verdict[1:] + "."))
        rows = [[g["group"], fmt(g["decisions"], "count"), fmt(g["offers"], "count"),
                 fmt(g["offer_rate"], "share"), fmt(g["mean_offer_value"], "money")]
                for g in result["groups"]]
        parts.append(_table([result["attribute"], "decisions", "offers", "offer rate",
                             "mean offer value"], rows))
    return "".join(parts)


def _lift_row(lift: Lift) -> list[str]:
    """One row of a campaign's lift table."""
    c, money = lift.conversion, lift.revenue_per_firing
    if c is None:
        return [lift.group, fmt(lift.n, "count"), fmt(lift.n_holdout, "count"),
                "no holdout to compare", "", "", "", "", fmt(lift.arm_cost, "money"), ""]
    return [lift.group, fmt(lift.n, "count"), fmt(lift.n_holdout, "count"),
            fmt(c.treatment, "share"), fmt(c.control, "share"), fmt(c.diff, "points"),
            f"{fmt(c.low, 'points')} to {fmt(c.high, 'points')}",
            "" if money is None else fmt(money.diff, "signed"),
            fmt(lift.arm_cost, "money"), "" if lift.roi is None else fmt(lift.roi, "signed_share")]


def campaigns_section(inputs: Inputs, scratch: Path) -> str:
    """Each campaign that fired: its funnel (table and chart), suppressions by reason, and
    its lift over its own holdout overall, per arm and per tier (tiers in natural order)."""
    from experiments.plots import funnel_chart, interval_chart

    if not inputs.campaigns:
        return _missing("No campaign has fired yet: triggers fire on `POST /events`, "
                        "scheduled campaigns with `nextbest scheduler` or "
                        "`nextbest campaigns run NAME`.")
    parts = [_p("Lift is intention to treat: every firing outside the campaign's holdout "
                "counts as treated, whatever happened to its message; a firing converts when "
                "the user bought within the attribution window. Intervals at 95%.")]
    for report in inputs.campaigns:
        name = report.campaign
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts.append(_table(list(report.funnel), [[fmt(v, "count")
                                                   for v in report.funnel.values()]]))
        if report.suppressed:
            parts.append(_p("Suppressed: " + ", ".join(
                f"{html.escape(reason)} {fmt(n, 'count')}"
                for reason, n in sorted(report.suppressed.items())) + "."))
        parts.append(_p(f"Attributed revenue {fmt(report.revenue, 'money')}, arm cost "
                        f"{fmt(report.arm_cost, 'money')} (attribution window "
                        f"{report.attribution_hours:g} hours)."))
        lifts = [report.overall, *report.per_arm, *report.per_tier]
        parts.append(_table(["group", "firings", "holdout", "conversion", "holdout "
                             "conversion", "conversion lift", "interval",
                             "revenue lift per firing", "arm cost", "ROI"],
                            [_lift_row(lift) for lift in lifts]))
        chart = funnel_chart(f"Funnel of {name}", report.funnel, scratch / f"funnel_{name}.png")
        parts.append(_figure(chart, f"Funnel of the campaign {name}: firings down to "
                                    "conversions, from the campaign store."))
        compared = {("all" if lift is report.overall else lift.group):
                    (lift.conversion.diff, lift.conversion.low, lift.conversion.high)
                    for lift in [report.overall, *report.per_tier] if lift.conversion}
        if compared:
            chart = interval_chart(f"Conversion lift of {name} over its holdout", compared,
                                   scratch / f"lift_{name}.png", reference=0.0, percent=True)
            parts.append(_figure(chart, f"Conversion lift of the campaign {name} over its "
                                        "own holdout in percentage points, overall and per "
                                        "tier, from the campaign store."))
    return "".join(parts)


def write_report(settings: Settings, out_dir: Path | None = None, *,
                 now: datetime | None = None) -> Path:
    """Write ``report.html`` into ``out_dir`` (default ``reports_dir``); returns its path.

    A section that fails on broken inputs shows the error instead of sinking the page.
    """
    out = Path(out_dir or settings.paths.reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        inputs = gather(settings, scratch, now)
        sections = (
            ("summary", "Summary", lambda: summary_section(inputs)),
            ("segments", "Segments and tiers", lambda: segments_section(inputs, settings, scratch)),
            ("sellers", "Sellers", lambda: sellers_section(inputs, settings)),
            ("models", "Models: churn and propensity",
             lambda: models_section(inputs, settings)),
            ("simulation", "Policy comparison (simulation)",
             lambda: simulation_section(inputs)),
            ("ope", "Offline policy evaluation", lambda: ope_section(inputs, scratch)),
            ("abtest", "A/B and holdout", lambda: abtest_section(inputs, scratch)),
            ("fairness", "Fairness of offers", lambda: fairness_section(inputs)),
            ("campaigns", "Campaigns: funnel and lift", lambda: campaigns_section(inputs, scratch)),
        )
        body = []
        for key, title, build in sections:
            try:
                content = build()
            except Exception as exc:  # noqa: BLE001 - one bad input must not hide the rest
                log.warning("report: the %s section failed: %s", key, exc)
                content = _missing(f"This section could not be built: {exc}")
            body.append(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}'
                        "</section>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>nextbest report, {fmt(inputs.generated)}</title>"
            f"<style>{STYLE}</style></head><body><h1>nextbest report</h1>{''.join(body)}"
            "</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
