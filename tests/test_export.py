"""`bench run --save-predictions` also writes each target's real and predicted cells in cell-eval's input layout;
cell-eval run on that export agrees with bench on the metrics the two tools share."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import anndata as ad
import mlflow
import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.core.errors import PertbenchError
from benchmark.core.task import dense
from benchmark.data import export
from benchmark.data.datasets import load_h5ad, load_synthetic
from benchmark.execution.score import read_predictions
from benchmark.scoring import evaluate
from benchmark.tracking import schema

RUN = ["--predictor", "mean_shift", "--dataset", "synthetic", "--no-figures", "--no-leaderboard"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One split of mean_shift on the synthetic card, saved under the clip rule: (child run, its artifacts)."""
    folder = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        mp.setattr(evaluate, "CLIP_NEGATIVE_PREDICTIONS", True)
        assert main(["run", *RUN, "--save-predictions", "--max-splits", "1"]) == 0
        (real,) = glob.glob(
            str(folder / "mlartifacts" / "*" / "artifacts" / schema.CELL_EVAL_DIR / "real.h5ad")
        )
        artifacts = Path(real).parents[1]
        run = mlflow.get_run(artifacts.parent.name)
    return run, artifacts


def test_export_is_the_scored_cells_in_cell_evals_layout(exported):
    run, artifacts = exported
    real = ad.read_h5ad(artifacts / schema.CELL_EVAL_DIR / export.REAL_FILE)
    pred = ad.read_h5ad(artifacts / schema.CELL_EVAL_DIR / export.PRED_FILE)
    (saved_file,) = (artifacts / schema.PREDICTIONS_DIR).glob("*.h5ad")
    saved = ad.read_h5ad(saved_file)
    dataset = load_synthetic()
    perturbation = run.data.tags[schema.TAG_PERTURBATION]
    for cells in (real, pred):
        assert list(cells.var_names) == list(dataset.adata.var_names)
        assert set(cells.obs[export.PERT_COL]) == {export.CONTROL, perturbation}
        assert cells.obs_names.is_unique and (cells.X.data >= 0).all()
    is_control = (real.obs[export.PERT_COL] == export.CONTROL).to_numpy()
    assert is_control.sum() == int(run.data.params[schema.PARAM_N_CONTROL])
    assert (~is_control).sum() == int(run.data.params[schema.PARAM_N_TEST])
    # the same control cells in both files: cell-eval's deltas start from the control bench scored against
    controls = pred[(pred.obs[export.PERT_COL] == export.CONTROL).to_numpy()]
    assert list(controls.obs_names) == list(real.obs_names[is_control])
    np.testing.assert_array_equal(controls.X.toarray(), real[is_control].X.toarray())
    # real rows are the dataset's log-normalized cells; predicted rows are the saved prediction, linked to sources
    lognorm = dense(dataset.task.lognorm(dataset.adata[real.obs_names]))
    np.testing.assert_allclose(real.X.toarray(), lognorm, rtol=0, atol=0)
    predicted = pred[(pred.obs[export.PERT_COL] == perturbation).to_numpy()]
    np.testing.assert_array_equal(predicted.X.toarray(), saved.X)
    assert list(predicted.obs[export.SOURCE_CELL]) == list(saved.obs[export.SOURCE_CELL])
    assert set(predicted.obs[export.SOURCE_CELL]) <= set(controls.obs_names)
    assert (predicted.obs["cell_type"].astype(str) == run.data.tags[schema.TAG_CONTEXT]).all()
    # `bench score` reads the export's pred file as it reads the saved prediction
    from_export = read_predictions(artifacts / schema.CELL_EVAL_DIR / export.PRED_FILE, dataset)
    from_saved = read_predictions(saved_file, dataset, seed=0)
    assert from_export.n_control_rows == len(controls)
    assert from_export.groups.keys() == from_saved.groups.keys()
    for key, group in from_saved.groups.items():
        np.testing.assert_array_equal(group.X, from_export.groups[key].X)


@pytest.mark.integration
def test_cell_eval_run_on_the_export_agrees_with_bench(exported, tmp_path):
    """`cell-eval run` (the README's command): pearson_delta is bench's r, mse and mse_delta its mse_mean."""
    run, artifacts = exported
    folder = artifacts / schema.CELL_EVAL_DIR
    command = [sys.executable, "-m", "cell_eval", "run", "-ar", str(folder / export.REAL_FILE)]
    command += ["-ap", str(folder / export.PRED_FILE), "--pert-col", export.PERT_COL]
    command += ["--control-pert", export.CONTROL, "--num-threads", "1", "--profile", "anndata"]
    command += ["-o", str(tmp_path / "out")]
    subprocess.run(command, check=True, capture_output=True)
    (row,) = pd.read_csv(tmp_path / "out" / "results.csv").to_dict("records")
    assert row["perturbation"] == run.data.tags[schema.TAG_PERTURBATION]
    ours = run.data.metrics
    assert row["pearson_delta"] == pytest.approx(ours["r"], abs=1e-6)
    assert row["mse"] == pytest.approx(ours["mse_mean"], rel=1e-5)
    assert row["mse_delta"] == pytest.approx(ours["mse_mean"], rel=1e-5)


def test_bench_run_data_accepts_the_export_and_explains_a_bare_saved_prediction(
    exported, tmp_path, monkeypatch
):
    _, artifacts = exported
    pred = artifacts / schema.CELL_EVAL_DIR / export.PRED_FILE
    (saved,) = (artifacts / schema.PREDICTIONS_DIR).glob("*.h5ad")
    for keys in (("target_gene", "non-targeting", None), ("condition", "control", "cell_type")):
        data = load_h5ad(pred, *keys)  # the loader of `bench run --data`: tidy + validate
        assert data.adata.X.dtype == np.float32 and data.adata.obs_names.is_unique
    with pytest.raises(
        PertbenchError, match=r"saved prediction \(source_cell in obs\) holds predicted cells only"
    ):
        load_h5ad(saved, "condition", "control", "cell_type")
    # the saved cells pass the loader's checks once control cells are beside them (the export's first rows)
    controls = ad.read_h5ad(pred)
    controls = controls[(controls.obs[export.PERT_COL] == export.CONTROL).to_numpy()]
    both = ad.concat([controls, ad.read_h5ad(saved)], join="inner", index_unique="-")
    both.write_h5ad(tmp_path / "both.h5ad")
    assert load_h5ad(tmp_path / "both.h5ad", "condition", "control", "cell_type").adata.n_obs == both.n_obs


@pytest.mark.integration
def test_bench_run_runs_on_the_export(exported, tmp_path, monkeypatch):
    pred = exported[1] / schema.CELL_EVAL_DIR / export.PRED_FILE
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["--data", str(pred), "--perturbation-key", "target_gene", "--control", "non-targeting"]
    assert main(["run", "--predictor", "mean_shift", *args, "--no-figures", "--no-leaderboard"]) == 0


def test_a_sampling_predictors_cells_get_unique_names_and_no_source(tiny, tiny_task):
    """A predictor that returns its own number of cells (names repeating) still gives a valid pair."""
    from benchmark.data.splits import Target

    control = tiny[
        (tiny.obs["cell_type"] == "A").to_numpy() & (tiny.obs["condition"] == "control").to_numpy()
    ]
    real = tiny[(tiny.obs["cell_type"] == "A").to_numpy() & (tiny.obs["condition"] == "p1").to_numpy()]
    target = Target("p1", "A", tuple(real.obs_names), tuple(control.obs_names))
    values = np.abs(np.random.default_rng(0).normal(size=(7, tiny.n_vars)))
    with pytest.warns(UserWarning, match="not unique"):  # more cells than controls, all of one name
        predicted = ad.AnnData(values, obs=pd.DataFrame(index=["s"] * 7))
    saved = export.saved_prediction(values, predicted, control, tiny_task, target, "A/p1", 0)
    assert saved.obs_names.is_unique and (saved.obs[export.SOURCE_CELL] == "").all()
    real_pair, pred_pair = export.cell_eval_pair(
        control, dense(control.X), real, dense(real.X), saved, target
    )
    assert pred_pair.obs_names.is_unique and pred_pair.n_obs == control.n_obs + 7
    assert list(pred_pair.obs[export.PERT_COL]) == [export.CONTROL] * control.n_obs + ["p1"] * 7
    assert real_pair.n_obs == control.n_obs + real.n_obs and list(real_pair.var_names) == list(tiny.var_names)
    np.testing.assert_allclose(pred_pair.X.toarray()[control.n_obs :], values.astype(np.float32))
