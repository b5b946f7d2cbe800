"""The ``nextbest`` command line: configuration, and how every command ends on bad input.

Every command, fed degenerate input, must end cleanly. The commands are found by walking
``nextbest.cli.build_parser()``, so a command added later is covered without touching this
file. Each runs in-process with:

* no arguments (beyond the sizes of :data:`SMALL`, which keep default runs fast);
* an unknown flag;
* every option and positional argument in turn set to a degenerate value: ``0``, ``-1``,
  ``nan``, ``x`` for numbers; the empty string, a missing path, an empty file, an empty
  directory, an empty decision log and a log of 3 decisions for text and paths; a value
  outside the choices where there are choices.

``serve`` and ``learner`` (which run until stopped) get only bad flags: an unknown flag and
bad numbers, refused while parsing. Every run must exit 0, or exit non-zero with at most one
``error:`` line, the last line of stderr (a bare command group prints its help instead); no
traceback, and no "internal error" (degenerate input is the user's mistake, to be named,
not a bug)."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import nextbest.cli
from experiments.simulator import SimulationConfig
from nextbest.cli import build_parser, main
from nextbest.config import load_settings, path_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_config_prints_effective_values(capsys, monkeypatch):
    monkeypatch.setenv("NEXTBEST__BANDIT__CONTROL_SHARE", "0.25")
    assert main(["config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["decision_points"]["buyer_offer"]["control_share"] == 0.25


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


def _raise(exc: BaseException):
    def handler(args: argparse.Namespace, settings) -> int:
        raise exc
    return handler


def test_a_pydantic_validation_error_is_one_line_naming_the_field(capsys, monkeypatch):
    try:
        SimulationConfig(decisions=0)
    except Exception as exc:  # the pydantic error a library call lets through
        monkeypatch.setattr(nextbest.cli, "_show_config", _raise(exc))
    assert main(["config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: decisions: Input should be greater than 0"]


def test_an_unexpected_error_is_one_line_and_its_traceback_is_shown_with_v(capsys, monkeypatch):
    monkeypatch.setattr(nextbest.cli, "_show_config", _raise(RuntimeError("lost\n key")))
    assert main(["config"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: internal error (RuntimeError: lost key); run with -v for the "
                   "traceback"]
    assert main(["-v", "config"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and err[-1].startswith("error: ")


def test_a_usage_error_is_one_line_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--decisions", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: nextbest simulate: argument --decisions: 0 is not a positive whole number "
        "(see nextbest simulate --help)"]


# ------------------------------------------------------------------ degenerate input

# Sizes that keep a command's default run small; prepended to each of its runs (a variant
# given later on the command line overrides them).
SMALL: dict[tuple[str, ...], list[str]] = {
    ("data", "synth"): ["--users", "20", "--days", "30"],
    ("simulate",): ["--decisions", "30", "--users", "10", "--policies", "random,squarecb",
                    "--no-mlflow", "--no-plots", "--quiet"],
    # Loops that run until stopped: one pass.
    ("scheduler",): ["--once"],
    ("dispatch",): ["--once"],
}
# Commands that run until stopped: only bad flags.
SERVERS = {("serve",), ("learner",)}

NUMBERS = ("0", "-1", "nan", "x")
PLACES = ("", "0", "-1", "{missing}", "{empty_file}", "{empty_dir}", "{empty_log}",
          "{log3}")
VALUE_ACTIONS = (argparse._StoreAction, argparse._AppendAction)


def _commands(parser: argparse.ArgumentParser,
              path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of the CLI (groups included) with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _values(action: argparse.Action, server: bool) -> tuple[str, ...]:
    """The degenerate values of one argument."""
    if action.choices is not None:
        return ("not-a-choice",)
    if server:
        return NUMBERS if _numeric(action) else ()
    return NUMBERS if _numeric(action) else PLACES


def _numeric(action: argparse.Action) -> bool:
    """Whether the argument takes a number (its ``type`` turns "1" into an int or float)."""
    try:
        return isinstance(action.type("1"), int | float)  # type: ignore[misc]
    except Exception:  # no type (text), or a type that refuses "1" (a date)
        return False


def _valid(action: argparse.Action) -> list[str]:
    """A plausible value for a required positional while another argument is varied."""
    if action.nargs in ("*", "?"):
        return []
    return [next(iter(action.choices))] if action.choices is not None else ["1"]


def _cases() -> Iterator[list[str]]:
    for path, parser in _commands(build_parser()):
        if not path:  # the root: its own options, tried on the one command without inputs
            yield []
            for value in PLACES:
                yield ["--config", value, "config"]
            continue
        server = path in SERVERS
        base = [*path, *SMALL.get(path, [])]
        positionals = [a for a in parser._actions
                       if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
        if not server:
            yield base
        yield [*base, "--no-such-flag"]
        for action in parser._actions:
            if not isinstance(action, VALUE_ACTIONS):
                continue
            for value in _values(action, server):
                if action.option_strings:
                    filled = [v for p in positionals for v in _valid(p)]
                    yield [*base, *filled, action.option_strings[-1], value]
                else:
                    filled = [v for p in positionals
                              for v in ([value] if p is action else _valid(p))]
                    yield [*base, *filled]


CASES = list(_cases())


@pytest.fixture(scope="module")
def three_decision_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service decision log of 3 decisions with their rewards (a 3-step simulation)."""
    from experiments.runner import simulate
    from experiments.simulator import SimulationConfig, synthetic_population

    root = tmp_path_factory.mktemp("log3")
    settings = load_settings(None, environ=path_overrides(root))
    config = SimulationConfig(decisions=3, users=3)
    simulate(settings, synthetic_population(settings, 3, 7), config, ["squarecb"],
             log_dir=root / "logs")
    return root / "logs" / "squarecb.sqlite"


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           three_decision_log: Path) -> dict[str, str]:
    """The degenerate files and directories, and settings whose paths are all empty."""
    from decisions.decision_log import DecisionLog

    for key, value in path_overrides(tmp_path / "home").items():
        monkeypatch.setenv(key, value)
    (tmp_path / "empty_file.csv").touch()
    (tmp_path / "empty_dir").mkdir()
    DecisionLog(tmp_path / "empty_log.sqlite").close()
    shutil.copy(three_decision_log, tmp_path / "log3.sqlite")
    return {"missing": str(tmp_path / "missing" / "none.sqlite"),
            "empty_file": str(tmp_path / "empty_file.csv"),
            "empty_dir": str(tmp_path / "empty_dir"),
            "empty_log": str(tmp_path / "empty_log.sqlite"),
            "log3": str(tmp_path / "log3.sqlite")}


def _run(argv: list[str]) -> int:
    """``main(argv)``; argparse's exits become their exit code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def test_the_walk_finds_every_stage():
    paths = {path for path, _parser in _commands(build_parser())}
    assert {("config",), ("data", "synth"), ("data", "import"), ("data", "erase"),
            ("features", "build"), ("train",), ("models", "list"), ("models", "promote"),
            ("serve",), ("learner",), ("simulate",), ("evaluate-policy",), ("abtest",),
            ("report",)} <= paths
    assert {tuple(case[:len(path)]) for case in CASES for path in paths} >= paths


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c) or "(no args)" for c in CASES])
def test_degenerate_input_ends_cleanly(argv: list[str], places: dict[str, str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [word.format(**places) for word in argv]
    if tuple(argv[:1]) in SERVERS:  # refused while parsing, before anything is started
        with pytest.raises(SystemExit) as parsing:
            build_parser().parse_args(argv)
        assert parsing.value.code == 2
        capsys.readouterr()
    code = _run(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 0 or not errors:  # a bare group prints its help (stdout) and exits 2
        assert errors == [], err
    else:
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
