"""What a tiny `bench run` writes to the store (runs, tags, params, metrics, artifacts) and the board it renders
stay as recorded in tests/data: the tracking layer may be reorganised, never what it writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from mlflow.tracking import MlflowClient

from benchmark.cli import main

DATA = Path(__file__).parent / "data"
RECORD, BOARD = DATA / "tracking_record.json", DATA / "tracking_board.md"
REWRITE_ENV = "PERTBENCH_REWRITE_RECORDS"
"""Set to 1 to rewrite the recorded files from the current code (after a deliberate change)."""

VOLATILE_TAGS = ("mlflow.user", "mlflow.source.", "mlflow.log-model", "pertbench.host", "pertbench.pid")
"""Tags whose presence depends on the machine or process, not on what bench logs."""


def _user_file(path: Path) -> str:
    obs = pd.DataFrame(
        [(c, p) for c in ("A", "B") for p in ("ctrl", "stim") for _ in range(12)],
        columns=["cell_type", "condition"],
    )
    obs.index = [f"c{i}" for i in range(len(obs))]
    x = np.random.default_rng(0).gamma(1.0, size=(len(obs), 8)).astype(np.float32)
    AnnData(X=x, obs=obs).write_h5ad(path)
    return str(path)


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def _record(client: MlflowClient) -> list[dict]:
    """Every run of the store, as names and keys (values only where they are stable across machines)."""
    runs = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            tags = sorted(k for k in run.data.tags if not k.startswith(VOLATILE_TAGS))
            artifacts = sorted(
                re.sub(r"[0-9a-f]{16,}", "<digest>", a) for a in _artifacts(client, run.info.run_id)
            )
            runs.append(
                {
                    "experiment": experiment.name,
                    "name": run.info.run_name,
                    "status": run.info.status,
                    "tags": tags,
                    "params": sorted(run.data.params),
                    "metrics": sorted(run.data.metrics),
                    "artifacts": artifacts,
                    "inputs": sorted(d.dataset.name for d in run.inputs.dataset_inputs),
                }
            )
    return sorted(runs, key=lambda r: json.dumps(r, sort_keys=True))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_a_tiny_run_writes_the_recorded_runs_and_board(workdir):
    data = _user_file(workdir / "u.h5ad")
    args = [
        "--data",
        data,
        "--perturbation-key",
        "condition",
        "--control",
        "ctrl",
        "--context-key",
        "cell_type",
    ]
    common = ["--embedding", "pca", "--save-predictions", "--seeds", "0,1"]
    assert main(["run", "--predictor", "mean_shift", *args, *common, "--no-leaderboard"]) == 0
    assert main(["run", "--predictor", "no_change", *args, "--no-figures", "--no-leaderboard"]) == 0
    board = workdir / "board.md"
    assert main(["leaderboard", "--output", str(board)]) == 0
    record = _record(MlflowClient(os.environ["MLFLOW_TRACKING_URI"]))
    text = board.read_text(encoding="utf-8").replace(str(workdir), "<tmp>")
    figures = sorted(p.name for p in (workdir / "figures").iterdir())
    if os.environ.get(REWRITE_ENV) == "1":
        DATA.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps({"runs": record, "figures": figures}, indent=1) + "\n")
        BOARD.write_text(text, encoding="utf-8")
    expected = json.loads(RECORD.read_text())
    assert record == expected["runs"]
    assert figures == expected["figures"]
    assert text == BOARD.read_text(encoding="utf-8")
