"""The package's layout rules: only `benchmark.tracking` talks to MLflow, and no module outgrows one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "benchmark"
SIZED = ("benchmark", "predictors", "pertbench")
"""The packages whose modules the line limit holds."""
MAX_LINES = 500
MLFLOW_ALLOWED = ("benchmark/tracking/",)
"""Where MLflow may be imported: the tracking layer only (the CLI and the Python API read runs through it)."""
OVERSIZED: dict[str, int] = {}
"""Modules still over MAX_LINES (by path from the repository root), each held to about its present size so none
grows while it waits its split."""


def _modules() -> list[Path]:
    """Every Python module of the packages the line limit holds."""
    return sorted(path for package in SIZED for path in (ROOT / package).rglob("*.py"))


def oversized(sizes: dict[str, int], limit: int = MAX_LINES, allowed: dict[str, int] | None = None) -> dict:
    """The modules of `sizes` (path -> lines) over the limit, or over their own allowance in `allowed`."""
    allowed = OVERSIZED if allowed is None else allowed
    return {name: n for name, n in sizes.items() if n > allowed.get(name, limit)}


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
    modules = _modules()
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in modules}
    assert {name.split("/")[0] for name in sizes} == set(SIZED)
    over = oversized(sizes)
    assert over == {}, f"modules over {MAX_LINES} lines (split them): {over}"


def test_the_size_check_flags_a_module_over_the_limit_in_any_package():
    sizes = {"predictors/big.py": MAX_LINES + 1, "pertbench/ok.py": MAX_LINES, "benchmark/x.py": 520}
    assert oversized(sizes, allowed={}) == {"predictors/big.py": MAX_LINES + 1, "benchmark/x.py": 520}
    assert oversized(sizes, allowed={"benchmark/x.py": 520}) == {"predictors/big.py": MAX_LINES + 1}


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
