"""MLflow's real UI on a store made by `bench run`, driven in headless Chromium: what a user opening the printed
link sees (the runs table with the parent runs and their r, a figure artifact that loads)."""

from __future__ import annotations

import os

import mlflow
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.tracking import schema
from benchmark.tracking import ui as mlflow_ui

pytestmark = pytest.mark.integration

PREDICTORS = ("mean_shift", "linear")


@pytest.fixture
def browser():
    """Chromium and chromedriver: skipped where they are not installed, a failure in CI (`.ci/run` installs them)."""
    if mlflow_ui.chromium_paths() is None:
        message = "chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with mlflow_ui.chromium() as driver:
        yield driver


@pytest.fixture
def kang_store(tmp_path, monkeypatch, shared_data_dir, capsys):
    """A store of `bench run` on kang2018 (first split, figures on): mean_shift and linear; its URI and what the
    runs printed."""
    monkeypatch.setenv("PERTBENCH_DATA_DIR", str(shared_data_dir))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for predictor in PREDICTORS:
        args = [
            "run",
            "--predictor",
            predictor,
            "--dataset",
            "kang2018",
            "--max-splits",
            "1",
            "--embedding",
            "pca",
        ]
        assert main([*args, "--no-cache", "--no-leaderboard", "--tracking-uri", uri]) == 0
    mlflow.set_tracking_uri(uri)
    return uri, capsys.readouterr().out


def test_runs_page_lists_parent_runs_with_r_and_a_figure_loads(kang_store, browser):
    uri, printed = kang_store
    experiment = mlflow.get_experiment_by_name(f"{schema.EXPERIMENT_PREFIX}/kang2018")
    parents = mlflow.search_runs(
        [experiment.experiment_id], filter_string=schema.parent_filter(), output_format="list"
    )
    assert sorted(p.data.tags[schema.TAG_PREDICTOR] for p in parents) == sorted(PREDICTORS)
    # the printed link is the page the browser opens
    assert f"open http://127.0.0.1:5000{schema.runs_page_path(experiment.experiment_id)}" in printed
    with mlflow_ui.mlflow_server(uri) as base:
        rows = mlflow_ui.runs_table(browser, base, experiment.experiment_id, [p.info.run_id for p in parents])
        for parent in parents:
            row = rows[parent.info.run_id]
            assert parent.data.tags[schema.TAG_RUN_NAME].startswith(
                parent.data.tags[schema.TAG_PREDICTOR] + " ·"
            )
            assert parent.data.tags[schema.TAG_RUN_NAME][:20] in row["attributes.`Run Name`"]
            assert float(row["metrics.`r`"]) == pytest.approx(parent.data.metrics["r"], abs=1e-6)
            assert row["attributes.`Dataset`"].startswith("kang2018 (")  # the logged input, with its digest
        child = mlflow.search_runs(
            [experiment.experiment_id],
            filter_string=schema.children_filter(parents[0].info.run_id, schema.STATUS_OK),
            output_format="list",
        )[0]
        figure = f"{schema.FIGURES_DIR}/{schema.COMPOSITE_FIGURE}"
        width = mlflow_ui.artifact_image_width(
            browser, base, experiment.experiment_id, child.info.run_id, figure
        )
    with Image.open(
        mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path=figure)
    ) as png:
        assert width == png.width > 0
