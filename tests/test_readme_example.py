"""The README's 'Add a predictor' example, run exactly as written through `bench run`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import mlflow
import pytest

from benchmark.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    block = re.search(r"<!-- example:start -->\s*```python\n(.*?)```\s*<!-- example:end -->", text, re.S)
    assert block, "README lost its example block"
    return block.group(1)


@pytest.fixture
def example_module(tmp_path, monkeypatch):
    (tmp_path / "my_predictors.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    sys.modules.pop("my_predictors", None)


def test_readme_example_runs_with_bench_run(example_module, capsys):
    code = main(
        [
            "run",
            "--predictor",
            "my_predictors:PooledShift",
            "--param",
            "scale=0.5",
            "--dataset",
            "synthetic",
            "--max-splits",
            "2",
            "--no-figures",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "my_predictors:PooledShift on synthetic" in out
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = [r for r in runs if r.data.tags.get("pertbench.level") == "parent"]
    assert parent[0].data.params["hp.scale"] == "0.5"
    assert all(r.info.status == "FINISHED" for r in runs)
    assert (example_module / ".pertbench" / "LEADERBOARD.md").read_text().count(
        "my_predictors:PooledShift"
    ) >= 1


def test_readme_example_registers_through_an_entry_point(example_module, monkeypatch):
    from importlib.metadata import EntryPoint

    import predictors.registry as registry

    fake = [EntryPoint("pooled_shift", "my_predictors:PooledShift", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(
        registry, "entry_points", lambda group: fake if group == registry.ENTRY_POINT_GROUP else []
    )
    assert "pooled_shift" in registry.available_predictors()
    name, predictor = registry.make_predictor("pooled_shift", scale=2.0)
    assert type(predictor).__name__ == "PooledShift" and predictor.get_params() == {"scale": 2.0}
