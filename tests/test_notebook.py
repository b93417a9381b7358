"""The docs notebook runs as written: its code cells executed in order, in one namespace, with the Agg backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "compare.ipynb"


def code_cells(path: Path) -> list[str]:
    """The sources of a notebook's code cells, in order."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.integration
def test_the_comparison_notebook_runs_and_draws_its_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, source in enumerate(code_cells(NOTEBOOK)):
        exec(compile(source, f"{NOTEBOOK.name}[{i}]", "exec"), namespace)
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert namespace["cmp"].verdict().startswith("r: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.png"]  # TRACKING = None wrote nothing else


def test_the_notebook_has_code_and_no_stored_outputs():
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    assert len(code_cells(NOTEBOOK)) >= 4
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")
