"""The HTML report as an operator sees it: rendered by headless Chromium from a small real run.

The world is built through the CLI as an operator would (synthetic data, features,
both champions, a simulation keeping its logs, OPE on one log and A/B on another).
Chromium loads the page from its file:// URL; a probe script (added to a copy of the page,
never to the report itself) records every load error and each image's decoded size, and
``--dump-dom`` returns the DOM after the load event. ``--screenshot`` writes a PNG for a
person to look at (its path is printed; ``pytest -s`` shows it).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import test_evaluate_and_report as shared

from experiments.report import fmt
from features.segmentation import SELLER_TIERS, TIERS
from nextbest.cli import main

pytestmark = pytest.mark.integration
workdir = shared.workdir  # the fixture: reports, features and MLflow private to the test

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0"]
# Records load errors and each image's decoded size on the <html> and <img> elements.
PROBE = """<script>
window.addEventListener('error', function (e) {
  var what = e.target && e.target.tagName ? e.target.tagName : String(e.message);
  var root = document.documentElement;
  root.setAttribute('data-errors', (root.getAttribute('data-errors') || '') + '|' + what);
}, true);
window.addEventListener('load', function () {
  for (var img of document.images) {
    img.setAttribute('data-natural', img.naturalWidth + 'x' + img.naturalHeight);
  }
  document.documentElement.setAttribute('data-loaded', 'yes');
});
</script>"""
# Python writes 1.855e+04 and 1e-05: the exponent's sign tells them from hex run ids (0e1).
SCIENTIFIC = re.compile(r"\d(?:\.\d+)?[eE][+-]\d")
LONG_DECIMALS = re.compile(r"\d\.\d{5,}")
BLOCKS = {"p", "div", "section", "table", "tr", "td", "th", "h1", "h2", "h3", "figure",
          "figcaption", "li", "title"}
SECTIONS = ["summary", "segments", "sellers", "models", "simulation", "ope", "abtest",
            "fairness", "campaigns"]


def _chromium() -> str:
    path = shutil.which("chromium")
    assert path, ("headless Chromium is missing: apt-get install chromium (`make test` "
                  "installs it through .ci/system-deps)")
    return path


def _run_chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               *args], capture_output=True, text=True, timeout=120)


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        """The visible text (script and style excluded), whitespace collapsed; block
        elements (cells, paragraphs, ...) are separated by a space."""
        if self.tag in ("script", "style"):
            return ""
        parts = [c if isinstance(c, str) else
                 f" {c.text()} " if c.tag in BLOCKS else c.text() for c in self.children]
        return " ".join("".join(parts).split())

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.tag == tag and all(child.attrs.get(k) == v for k, v in attrs.items()):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    def find(self, tag: str, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}> in the page"
        return found[0]


class _TreeBuilder(HTMLParser):
    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


@dataclass
class Rendered:
    dom: Node
    stderr: str


def render(page: Path) -> Rendered:
    """Load a probed copy of ``page`` in headless Chromium and parse the DOM it dumps."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    proc = _run_chromium("--dump-dom", probed.as_uri())
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    builder = _TreeBuilder()
    builder.feed(proc.stdout)
    return Rendered(builder.root, proc.stderr)


def assert_loaded_cleanly(rendered: Rendered) -> None:
    """The load event ran, nothing failed to load, no console message, every image decoded."""
    html_el = rendered.dom.find("html")
    assert html_el.attrs.get("data-loaded") == "yes", "the page never finished loading"
    assert "data-errors" not in html_el.attrs, f"load errors: {html_el.attrs['data-errors']}"
    console = [line for line in rendered.stderr.splitlines()
               if ":CONSOLE" in line or "Uncaught" in line or "Failed to load" in line]
    assert not console, "\n".join(console)
    for img in rendered.dom.find_all("img"):
        src = img.attrs.get("src", "")
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
        width, height = (int(v) for v in img.attrs["data-natural"].split("x"))
        assert width > 100 and height > 100, f"image {img.attrs.get('alt')!r} did not decode"
        assert img.attrs.get("alt"), "an image without a label"


def assert_readable_numbers(text: str) -> None:
    assert not SCIENTIFIC.findall(text), SCIENTIFIC.findall(text)
    assert not LONG_DECIMALS.findall(text), LONG_DECIMALS.findall(text)


def _section(dom: Node, key: str) -> Node:
    return dom.find("section", id=key)


def _facts(dom: Node) -> dict[str, str]:
    table = _section(dom, "summary").find("table", **{"class": "facts"})
    return {row.find_all("td")[0].text(): row.find_all("td")[1].text()
            for row in table.find_all("tr")}


def _captions(section: Node) -> list[str]:
    return [fig.find("figcaption").text() for fig in section.find_all("figure")]


@pytest.mark.parametrize(("value", "kind", "text"), [
    (18550.0, "number", "18,550"), (1.855e4, "money", "18,550.00"), (0.1283, "share", "12.8%"),
    (0.1283, "number", "0.128"), (4.1e-5, "number", "0.0000410"), (1234567, "count", "1,234,567"),
    (0.012, "points", "+1.2 pp"), (-0.004, "points", "-0.4 pp"), (1.93, "signed_share", "+193.0%"),
    (2e-7, "p_value", "< 0.001"), (0.0456, "p_value", "0.046"), (-3.5, "signed", "-3.50"),
    (float("nan"), "number", "n/a"), (None, "share", "n/a"), (float("inf"), "money", "n/a"),
])
def test_one_formatter_writes_every_number_readably(value, kind, text):
    assert fmt(value, kind) == text


@pytest.fixture
def world(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small real run: data, features (at the training cutoffs too), both champions, a
    simulation with its logs, OPE and fairness on the squarecb log and A/B on the random
    one (two logs on purpose: the page must say so)."""
    monkeypatch.setenv("NEXTBEST__TRAINING__NUM_BOOST_ROUND", "40")
    monkeypatch.setenv("NEXTBEST__TRAINING__EARLY_STOPPING_ROUNDS", "10")
    # The synthetic Platinum users' churn probabilities lie around 0.1 (0.097-0.125 with
    # this seed): a 9% threshold raises the alert the page must show.
    monkeypatch.setenv("NEXTBEST__FEATURES__ALERTS__PLATINUM_CHURN_RISK", "0.09")
    commands = [
        ["data", "synth", "--users", "600", "--days", "400", "--seed", "11"],
        ["features", "build"],  # training adds the features of its cutoffs
        ["train", "churn", "--cutoffs", "2"], ["train", "propensity", "--cutoffs", "2"],
        ["campaigns", "run", "win_back", "--now", "2025-02-10T10:00:00Z"],
        ["simulate", "--decisions", "1500", "--users", "300", "--quiet", "--no-mlflow",
         "--policies", "random,static,squarecb", "--keep-logs", "logs"],
        ["evaluate-policy", "--logs", "logs/squarecb.sqlite", "--policy", "static",
         "--n-bootstrap", "30"],
        ["abtest", "--logs", "logs/random.sqlite"],
        ["audit", "fairness", "--logs", "logs/squarecb.sqlite", "--attributes",
         "logs/users.parquet"],
        ["report"],
    ]
    for args in commands:
        assert main(args) == 0, args
    return workdir


def test_report_renders_in_chromium_with_every_section(world: Path, capsys):
    page = world / "reports" / "report.html"
    rendered = render(page)
    assert_loaded_cleanly(rendered)
    dom = rendered.dom
    assert [s.attrs["id"] for s in dom.find_all("section")] == SECTIONS
    assert_readable_numbers(dom.text())

    facts = _facts(dom)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", facts["Generated"])
    assert re.match(r"2024-01-\d\d \S+ UTC to 2025-\d\d-\d\d \S+ UTC", facts["Data period"])
    assert re.match(r"as_of 2024-\d\d-\d\d to 2025-02-04 \(\d date\(s\)\)", facts["Features"])
    assert "churn v1" in facts["Champion models"]
    assert "propensity v1" in facts["Champion models"]
    assert str(world / "logs" / "squarecb.sqlite") in facts["Offline evaluation"]
    assert str(world / "logs" / "random.sqlite") in facts["A/B analysis"]
    assert str(world / "logs" / "squarecb.sqlite") in facts["Fairness"]
    fair_tiers = [row.find_all("td")[0].text()
                  for row in _section(dom, "fairness").find("table").find_all("tr")[1:]]
    assert fair_tiers == sorted(fair_tiers, key=TIERS.index)  # natural tier order

    summary = _section(dom, "summary")
    assert summary.find("h3", id="alerts")
    alert = summary.find("div", **{"class": "alert", "data-kind": "platinum_churn_risk"})
    assert re.search(r"\d+ Platinum customer\(s\) at high risk of churning \(churn "
                     r"probability of at least 9\.0% from the churn model v1\)", alert.text())
    assert alert.find("p", **{"class": "todo"}).text().startswith("What to do: Contact")
    assert "different logs" in summary.text()  # OPE and A/B are not silently mixed

    segments = _section(dom, "segments")
    tier_rows = segments.find("table").find_all("tr")[1:]
    assert [row.find("td").text() for row in tier_rows] == list(TIERS)
    shares = [row.find_all("td")[2].text() for row in tier_rows]
    assert all(re.fullmatch(r"\d{1,3}\.\d%", s) for s in shares), shares

    sellers = _section(dom, "sellers")
    seller_rows = sellers.find("table").find_all("tr")[1:]
    assert [row.find("td").text() for row in seller_rows] == list(SELLER_TIERS)
    assert "GMV (365 days)" in sellers.find("table").text()

    models = _section(dom, "models")
    captions = _captions(models)
    for name in ("Churn", "Propensity"):
        for chart in ("ROC curve", "calibration"):
            assert any(c.startswith(f"{name} model v1: {chart}") and "MLflow run" in c
                       for c in captions), (name, chart, captions)
    assert "Source: MLflow run" in models.text()

    simulation = _section(dom, "simulation")
    assert "simulation.json" in simulation.find("p", **{"class": "source"}).text()
    sim_captions = _captions(simulation)
    plotted = json.loads((world / "reports/simulation/simulation.json").read_text())["plots"]
    assert len(sim_captions) == len(plotted) == 5
    assert all("simulation written" in c for c in sim_captions)

    for key, log_name in (("ope", "squarecb.sqlite"), ("abtest", "random.sqlite")):
        section = _section(dom, key)
        source = section.find("p", **{"class": "source"}).text()
        assert re.search(rf"decision log \S+/logs/{log_name}, modified \d{{4}}-\S+ \S+ UTC",
                         source), source
        assert "has changed" not in section.text()  # nothing touched the logs since
        assert log_name in _captions(section)[0]
    abtest_tiers = [row.find_all("td")[1].text()
                    for row in _section(dom, "abtest").find("table").find_all("tr")[1:]]
    assert abtest_tiers[0] == "all"
    assert abtest_tiers[1:] == sorted(abtest_tiers[1:], key=TIERS.index)

    campaigns = _section(dom, "campaigns")
    assert campaigns.find("h3").text() == "win_back"  # the name, never a fingerprint
    funnel, lift = campaigns.find_all("table")[:2]
    assert [th.text() for th in funnel.find_all("th")][:3] == ["fired", "suppressed",
                                                                "scheduled"]
    assert int(funnel.find_all("td")[0].text().replace(",", "")) > 0
    groups = [row.find("td").text() for row in lift.find_all("tr")[1:]]
    assert groups[0] == "all"
    lift_tiers = [g for g in groups if g in TIERS]
    assert lift_tiers and lift_tiers == sorted(lift_tiers, key=TIERS.index)
    assert any(c.startswith("Funnel of the campaign win_back") for c in _captions(campaigns))
    assert "win_back (" in facts["Campaigns"]

    shot = world / "report.png"
    proc = _run_chromium("--window-size=1200,4000", f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0 and shot.stat().st_size > 50_000, proc.stderr[-2000:]
    with capsys.disabled():
        print(f"\nscreenshot of the report: {shot}")


def test_absent_or_unattributed_analyses_are_left_out_with_a_sentence(workdir: Path):
    log = shared._foreign_log(workdir / "log.csv")
    frame = pd.read_csv(log)
    frame.loc[:199, "action"] = None  # a control group (no action) for the A/B analysis
    frame.to_csv(log, index=False)
    assert main(["evaluate-policy", "--logs", str(log), "--n-bootstrap", "20"]) == 0
    assert main(["abtest", "--logs", str(log)]) == 0
    ope_json = workdir / "reports" / "ope" / "ope.json"
    # An ope.json of an older nextbest, which did not record its log.
    payload = json.loads(ope_json.read_text())
    del payload["log"]
    ope_json.write_text(json.dumps(payload))
    log.write_text(log.read_text() + log.read_text().splitlines()[-1] + "\n")  # log grows
    assert main(["report"]) == 0

    rendered = render(workdir / "reports" / "report.html")
    assert_loaded_cleanly(rendered)
    dom = rendered.dom
    assert [s.attrs["id"] for s in dom.find_all("section")] == SECTIONS
    ope = _section(dom, "ope")
    assert "did not record which decision log" in ope.text()
    assert not ope.find_all("table") and not ope.find_all("img")
    abtest = _section(dom, "abtest")
    assert "has changed since it was analysed" in abtest.text()
    assert str(log) in abtest.find("p", **{"class": "source"}).text()
    assert "No simulation yet" in _section(dom, "simulation").text()
    assert "No champion model registered yet" in _section(dom, "models").text()
    assert "No features yet" in _section(dom, "segments").text()
    facts = _facts(dom)
    assert facts["Offline evaluation"].startswith("left out")
    assert "no raw orders or events" in facts["Data period"]
    assert "No segment alerts could be computed" in _section(dom, "summary").text()
