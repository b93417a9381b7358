"""The package's layout rules: only `benchmark.tracking` talks to MLflow, and no module outgrows one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "benchmark"
MAX_LINES = 500
MLFLOW_ALLOWED = ("benchmark/tracking/",)
"""Where MLflow may be imported: the tracking layer only (the CLI and the Python API read runs through it)."""
OVERSIZED: dict[str, int] = {}
"""Modules still over MAX_LINES, each held to about its present size so none grows while it waits its split."""


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def mlflow_imports(source: str) -> list[int]:
    """Line numbers of the statements in `source` that import mlflow or one of its submodules."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_tracking_layer_imports_mlflow():
    sources = sorted(
        [*PACKAGE.rglob("*.py"), *(ROOT / "pertbench").rglob("*.py"), *(ROOT / "predictors").rglob("*.py")]
    )
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}:{line}"
        for path in sources
        if not path.relative_to(ROOT).as_posix().startswith(MLFLOW_ALLOWED)
        for line in mlflow_imports(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "import mlflow through benchmark.tracking instead: " + ", ".join(offenders)


def test_no_module_is_over_the_line_limit():
    sizes = {_relative(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}
    over = {name: n for name, n in sizes.items() if n > OVERSIZED.get(name, MAX_LINES)}
    assert over == {}, f"modules over {MAX_LINES} lines (split them): {over}"


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import mlflow\n", [1]),
        ("x = 1\nfrom mlflow.tracking import MlflowClient\n", [2]),
        ("def f():\n    import mlflow.artifacts as a\n", [2]),
        ("import mlflowish\nfrom .mlflow import x\n# import mlflow\n", []),
    ],
)
def test_the_import_check_finds_mlflow_wherever_it_is_imported(source, found):
    assert mlflow_imports(source) == found
