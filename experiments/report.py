"""One self-contained HTML page for a marketing operator (``nextbest report``).

Sections: segments (tier sizes and ARPU from the latest features, plus any charts the
features stage left in ``reports_dir/segments``), model metrics (MLflow registry,
``@champion``), policy comparison (``reports_dir/simulation``), offline policy evaluation
(``reports_dir/ope``) and A/B results (``reports_dir/abtest``). Every chart is embedded as a
base64 PNG, so the page opens anywhere. A section whose inputs are missing says what to run.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from experiments.plots import interval_chart
from nextbest.config import Settings

MODELS = ("churn", "propensity")
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.missing{color:#a33;font-style:italic}img{max-width:100%;margin:0.5em 0}"""


def _img(path: Path) -> str:
    """An ``<img>`` holding the PNG at ``path`` as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[object]]) -> str:
    """An HTML table; floats get four significant digits."""
    def cell(v: object) -> str:
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def segments_section(settings: Settings, scratch: Path) -> str:
    """Tier sizes, shares and ARPU from the latest features, and the segment charts."""
    from features.build import available_as_of, load_features

    parts = []
    dates = available_as_of(settings)
    if dates:
        feats = load_features(settings, dates[-1])
        grouped = feats.groupby("tier")
        total = len(feats)
        spend = "monetary_365d" if "monetary_365d" in feats.columns else None
        rows = [[tier, len(g), len(g) / total, float(g[spend].mean()) if spend else ""]
                for tier, g in grouped]
        parts.append(f"<p>Features as of {dates[-1].isoformat()}, {total} users.</p>")
        parts.append(_table(["tier", "users", "share", "ARPU (365d)"], rows))
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([r[0] for r in rows], [r[1] for r in rows])
        ax.set(title="Users per tier", ylabel="users")
        chart = scratch / "tiers.png"
        fig.savefig(chart, dpi=90, bbox_inches="tight")
        plt.close(fig)
        parts.append(_img(chart))
    else:
        parts.append(_missing("No features yet: run `nextbest features build`."))
    # `nextbest segments report` writes into reports_dir/segments_<as_of>: show the latest.
    seg_dirs = sorted(Path(settings.paths.reports_dir).glob("segments_*"))
    if seg_dirs:
        parts += [_img(p) for p in sorted(seg_dirs[-1].glob("*.png"))]
    else:
        parts.append(_missing("No segment report yet: run `nextbest segments report "
                              "--compare-to DATE` for the tier migration chart."))
    return "".join(parts)


MODEL_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile", "ece")
MODEL_PLOTS = ("roc.png", "calibration.png")


def models_section(settings: Settings, scratch: Path) -> str:
    """Each champion's validation metrics beside its baselines', and its ROC and
    calibration plots (from the champion run's MLflow artifacts)."""
    try:
        import mlflow

        from training.registry import configure

        client = configure(settings)
        rows, charts = [], []
        for name in MODELS:
            try:
                version = client.get_model_version_by_alias(name, "champion")
            except Exception:  # noqa: BLE001 - an absent model is reported, not raised
                continue
            metrics = client.get_run(version.run_id).data.metrics
            for scorer, prefix in (("LightGBM", ""), ("RFM baseline", "baseline_rfm_"),
                                   ("BG/NBD baseline", "baseline_bgnbd_")):
                rows.append([f"{name} v{version.version}", scorer,
                             *(metrics.get(prefix + m, "") for m in MODEL_METRICS)])
            plots = Path(mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path="plots", dst_path=str(scratch / name)))
            for plot in MODEL_PLOTS:
                if (plots / plot).is_file():
                    target = scratch / f"{name}_{plot}"
                    (plots / plot).rename(target)
                    charts.append(_img(target))
    except Exception as exc:  # noqa: BLE001 - the registry may not exist yet
        return _missing(f"No model registry available ({type(exc).__name__}): run "
                        "`nextbest train`.")
    if not rows:
        return _missing("No champion model registered yet: run `nextbest train`.")
    return ("<p>Champion models on their out-of-time validation data, with the baselines "
            "scored on the same users.</p>"
            + _table(["model", "scorer", "ROC AUC", "PR AUC", "log loss", "Brier",
                      "top-decile lift", "calibration error"], rows) + "".join(charts))


def simulation_section(settings: Settings, scratch: Path) -> str:
    """The policy comparison table and charts of the last ``nextbest simulate``."""
    sim_dir = Path(settings.paths.reports_dir) / "simulation"
    payload = _read_json(sim_dir / "simulation.json")
    if payload is None:
        return _missing("No simulation yet: run `nextbest simulate`.")
    oracle = payload.get("oracle_expected_reward_last")
    rows = [[name, m["cumulative_reward"], m["profit"], m["regret"], m["conversion_rate"],
             m["mean_reward_last"], (m["expected_reward_last"] / oracle) if oracle else ""]
            for name, m in payload["policies"].items()]
    intro = (f"<p>{payload['decisions']} simulated decisions, seed {payload['seed']}"
             f"{', with drift' if payload.get('drift') else ''}.</p>")
    charts = "".join(_img(p) for p in sorted(sim_dir.glob("*.png")))
    return intro + _table(["policy", "reward", "profit", "regret", "conversion",
                           "mean reward, last 20%", "share of oracle"], rows) + charts


def ope_section(settings: Settings, scratch: Path) -> str:
    """The estimates of the last ``nextbest evaluate-policy`` with an interval chart."""
    payload = _read_json(Path(settings.paths.reports_dir) / "ope" / "ope.json")
    if payload is None:
        return _missing("No offline evaluation yet: run `nextbest evaluate-policy`.")
    est = {"logged policy": payload["logging_value"], **payload["estimates"]}
    rows = [[name, e["mean"], e["low"], e["high"]] for name, e in est.items()]
    chart = interval_chart(f"Value of candidate '{payload['policy']}'",
                           {n: (e["mean"], e["low"], e["high"]) for n, e in est.items()},
                           scratch / "ope.png", reference=payload["logging_value"]["mean"])
    return (f"<p>Candidate <b>{html.escape(payload['policy'])}</b> on {payload['n']} logged "
            "decisions (mean reward per decision).</p>"
            + _table(["estimator", "value", "low", "high"], rows) + _img(chart))


def abtest_section(settings: Settings, scratch: Path) -> str:
    """Lift over the control group from the last ``nextbest abtest``."""
    payload = _read_json(Path(settings.paths.reports_dir) / "abtest" / "abtest.json")
    if payload is None:
        return _missing("No A/B analysis yet: run `nextbest abtest`.")
    rows = []
    for g in payload["overall"] + payload["per_tier"]:
        c, p = g["conversion"], g["profit"]
        rows.append([g["group"], g["tier"], g["n"], c["diff"], c["low"], c["high"],
                     c["p_value"], p["diff"]])
    arms = [[a["arm"], a["n"], a["spend"], a["incremental_revenue"],
             "n/a" if a["roi"] is None else a["roi"]] for a in payload["arms"]]
    chart_rows = {f"{g['group']} / {g['tier']}": (g["conversion"]["diff"],
                                                  g["conversion"]["low"],
                                                  g["conversion"]["high"])
                  for g in payload["overall"] + payload["per_tier"]}
    parts = [f"<p>{payload['n_decisions']} decisions, {payload['n_control']} in the control "
             "group.</p>",
             _table(["policy/campaign", "tier", "n", "conversion lift", "low", "high",
                     "p-value", "profit lift / decision"], rows),
             _table(["arm", "n", "spend", "incremental revenue", "ROI"], arms)]
    if chart_rows:
        parts.append(_img(interval_chart("Conversion lift over control", chart_rows,
                                         scratch / "abtest.png", reference=0.0)))
    return "".join(parts)


SECTIONS: tuple[tuple[str, Callable[[Settings, Path], str]], ...] = (
    ("Segments", segments_section),
    ("Models", models_section),
    ("Policy comparison (simulation)", simulation_section),
    ("Offline policy evaluation", ope_section),
    ("A/B and holdout", abtest_section),
)


def write_report(settings: Settings, out_dir: Path | None = None) -> Path:
    """Write ``report.html`` into ``out_dir`` (default ``reports_dir``); returns its path.

    A section that fails on broken inputs shows the error instead of sinking the page.
    """
    out = Path(out_dir or settings.paths.reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    body = []
    with tempfile.TemporaryDirectory() as tmp:
        for title, build in SECTIONS:
            try:
                content = build(settings, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one bad input must not hide the rest
                content = _missing(f"This section could not be built: {exc}")
            body.append(f"<h2>{html.escape(title)}</h2>{content}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>nextbest report</title>"
            f"<style>{STYLE}</style></head><body><h1>nextbest report</h1>{''.join(body)}"
            "</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
