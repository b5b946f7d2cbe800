"""The packages stand in layers (docs/ARCHITECTURE.md): none imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("nextbest", "features", "training", "decisions", "campaigns", "serving", "experiments")


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in ``path``, lazy ones inside functions too."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_one_above_it(package: str) -> None:
    above = set(LAYERS[LAYERS.index(package) + 1:])
    offending = [f"{path.relative_to(REPO)}:{line} imports {name}"
                 for path in sorted((REPO / package).glob("*.py"))
                 for name, line in imported_packages(path) if name in above]
    assert offending == [], "\n".join(offending)


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from serving.service import app\n    import experiments.cli\n")
    assert imported_packages(module) == {("serving", 2), ("experiments", 3)}
