"""The notebook API: pb.run / pb.score give the numbers the harness logs, pb.compare reads them with the
leaderboard's statistics."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from anndata import AnnData
from mlflow.tracking import MlflowClient

import pertbench as pb
from benchmark.cli import main as bench
from benchmark.core.errors import PertbenchError
from benchmark.core.task import dense, lognormalize
from benchmark.data.synthetic import make_synthetic
from benchmark.tracking import schema
from pertbench.api import TABLE_COLUMNS
from predictors.baselines import MeanShift

KEYS = dict(perturbation_key="condition", control="control", context_key="cell_type", expression="counts")


@pytest.fixture(scope="module")
def cells() -> AnnData:
    return make_synthetic(n_genes=40, n_contexts=3, n_perturbations=2, cells_per_group=30, seed=3, n_combos=0)


@pytest.fixture(scope="module")
def untracked(cells):
    """mean_shift and linear on two splits, into no store."""
    runs = {
        p: pb.run(p, cells, max_splits=2, tracking=None, progress=False, **KEYS)
        for p in ("mean_shift", "linear")
    }
    return runs


def test_run_by_name_logs_what_the_table_says(cells, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = pb.run("mean_shift", cells, max_splits=1, tracking=uri, figures=False, progress=False, **KEYS)
    table = result.table
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table["row"]) == {"predictor", "reference", "oracle", "ceiling"}
    assert result.tracking_uri == uri
    first = result.run.results[0]
    logged = MlflowClient(uri).get_run(first.run_id).data.metrics
    target = f"{first.context}/{first.perturbation}"
    mine = table[(table.target == target) & (table.seed == first.seed)].set_index(["row", "metric"])["value"]
    assert mine[("predictor", "r")] == pytest.approx(logged["r"], abs=1e-12)
    assert mine[("reference", "r")] == pytest.approx(logged[schema.REFERENCE_PREFIX + "r"], abs=1e-12)
    assert mine[("ceiling", "energy_distance")] == pytest.approx(
        logged[schema.CEILING_PREFIX + "energy_distance"]
    )


def test_an_instance_runs_as_its_registered_name_and_untracked_runs_write_nothing(
    cells, untracked, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    result = pb.run(MeanShift(), cells, max_splits=2, tracking=None, progress=False, **KEYS)
    assert result.predictor == "mean_shift" and result.tracking_uri is None
    assert list(tmp_path.iterdir()) == []  # no store, artifacts, cache or figures in the working directory
    assert (os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_EXPERIMENT_ID")) == before
    by_name = untracked["mean_shift"].table
    assert np.array_equal(result.table["value"].to_numpy(), by_name["value"].to_numpy(), equal_nan=True)


def test_an_in_memory_anndata_is_not_changed_and_keeps_its_checksum(cells):
    copy = cells.copy()
    first = pb.load_dataset(copy, **KEYS)
    assert first.checksum == pb.load_dataset(copy, **KEYS).checksum
    assert np.array_equal(dense(copy.X), dense(cells.X)) and copy.obs.equals(cells.obs)
    changed = cells.copy()
    changed.X.data[0] += 1  # one count more in one cell, same sparsity and dtype
    assert pb.load_dataset(changed, **KEYS).checksum != first.checksum
    with pytest.raises(PertbenchError, match="perturbation_key"):
        pb.load_dataset(copy)


def test_score_of_an_anndata_equals_bench_score_of_the_same_file(cells, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "cells.h5ad"
    cells.write_h5ad(data)
    held = cells[(cells.obs["cell_type"] == "C0") & (cells.obs["condition"] == "P0")]
    predictions = AnnData(
        X=dense(lognormalize(held.X)).astype(np.float32),
        obs=held.obs[["condition", "cell_type"]].rename(
            columns={"condition": "perturbation", "cell_type": "context"}
        ),
        var=held.var,
    )
    predictions.X = predictions.X + 0.05  # a slightly shifted copy of the real cells
    file = tmp_path / "preds.h5ad"
    predictions.write_h5ad(file)
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    args = ["score", "--predictions", str(file), "--data", str(data), "--perturbation-key", "condition"]
    args += ["--control", "control", "--context-key", "cell_type", "--expression", "counts", "--name", "mine"]
    assert bench([*args, "--tracking-uri", uri, "--no-leaderboard", "--no-figures"]) == 0
    mine = pb.score(predictions, dataset=data, name="mine", tracking=None, progress=False, **KEYS)
    table = mine.table[mine.table.row == "predictor"].set_index("metric")["value"]
    assert len(mine.table.target.unique()) == 1 and len(mine.declined) > 0
    client = MlflowClient(uri)
    children = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{schema.TAG_STATUS}` = '{schema.STATUS_OK}'",
    )
    assert len(children) == 1
    logged = children[0].data.metrics
    for metric in ("r", "energy_distance", "crps_deg100", "var_ratio"):
        assert table[metric] == pytest.approx(logged[metric], abs=1e-12)


def test_compare_gives_paired_differences_and_a_verdict(untracked):
    cmp = pb.compare(untracked["mean_shift"], untracked["linear"], metrics=("r", "energy_distance"))
    table = cmp.table
    assert list(table.predictor.unique()) == ["linear"]  # the reference result is not compared with itself
    assert set(table.relation) <= {">", "<", "≈"}
    row = table.set_index("metric").loc["r"]
    assert row.low <= row.difference <= row.high
    assert row.difference == pytest.approx(row["mean"] - row.reference_mean)
    lines = cmp.verdict().splitlines()
    assert [line.split(":")[0] for line in lines] == ["r", "energy_distance"]
    assert all({"linear", "mean_shift"} <= set(line.split()) for line in lines)
    other = dataclasses.replace(untracked["mean_shift"], split_kind="random")
    with pytest.raises(PertbenchError, match="one dataset and split kind"):
        pb.compare(untracked["linear"], other)
    with pytest.raises(PertbenchError, match="unknown metric"):
        pb.compare(untracked["linear"], metrics=("pearson_delta",))


def test_listings_name_every_metric_and_predictor():
    metrics = pb.list_metrics()
    assert {"name", "description", "direction"} <= set(metrics.columns)
    assert metrics.set_index("name").loc["energy_distance", "direction"] == "lower"
    assert "mean_shift" in set(pb.list_predictors()["name"])


def test_compare_without_the_reference_result_pairs_with_the_engine_reference(untracked):
    alone = pb.compare(untracked["linear"], metrics=("r",))
    paired = pb.compare(untracked["mean_shift"], untracked["linear"], metrics=("r",))
    # the engine's reference rows are mean_shift scored on the same cells: the same differences
    assert alone.table["difference"].to_numpy() == pytest.approx(paired.table["difference"].to_numpy())
    assert "mean_shift" in alone.verdict().split()
    with pytest.raises(PertbenchError, match="no result is named 'linear_cv'"):
        pb.compare(untracked["linear"], reference="linear_cv")


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(max_splits=0), "max_splits"),
        (dict(seeds=(-1,)), "seeds"),
        (dict(tracking="ftp://x"), "unknown tracking URI scheme"),
        (dict(split="nope"), "unknown split kind"),
        (dict(predictor="nope"), "unknown predictor"),
    ],
)
def test_bad_arguments_are_one_line_errors(cells, bad, message):
    args = dict(predictor="mean_shift", dataset=cells, tracking=None, **KEYS) | bad
    with pytest.raises(PertbenchError, match=message):
        pb.run(**args)


def test_an_instance_outside_the_registry_runs_as_module_class_with_its_changed_params():
    import helpers_predictors as hp

    from pertbench.api import resolve_predictor

    key = ("toy", "checksum")
    assert resolve_predictor(hp.TunableSpy(scale=1.5), None, key) == (
        "helpers_predictors:TunableSpy",
        {"scale": 1.5},
    )
    assert resolve_predictor(hp.TunableSpy(), {"noise": 0.05}, key) == (
        "helpers_predictors:TunableSpy",
        {"noise": 0.05},
    )

    class Local(hp.TunableSpy):
        pass

    with pytest.raises(PertbenchError, match="cannot be imported"):
        resolve_predictor(Local(), None, key)
    with pytest.raises(PertbenchError, match="not the class"):
        resolve_predictor(hp.TunableSpy, None, key)
