from pathlib import Path

import yaml

from nextbest.cli import main
from nextbest.config import load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_config_prints_effective_values(capsys, monkeypatch):
    monkeypatch.setenv("NEXTBEST__BANDIT__CONTROL_SHARE", "0.25")
    assert main(["config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["bandit"]["control_share"] == 0.25


def test_bad_config_exits_nonzero_with_one_line(capsys, monkeypatch):
    monkeypatch.setenv("NEXTBEST__BANDIT__CONTROL_SHARE", "lots")
    assert main(["config"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bandit.control_share" in err[0]


def test_example_config_is_the_defaults():
    """nextbest.example.yaml documents every default; it must load and equal them."""
    example = load_settings(ROOT / "nextbest.example.yaml", environ={})
    assert example == load_settings(environ={})
    on_disk = yaml.safe_load((ROOT / "nextbest.example.yaml").read_text())
    assert on_disk == load_settings(environ={}).model_dump(mode="json"), (
        "regenerate with: .venv/bin/nextbest config > nextbest.example.yaml (keep the header)"
    )
