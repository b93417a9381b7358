"""`bench score` reproduces `bench run` exactly from saved predictions; unscorable files get one line; saved
predictions are usable cells (control ids, obs, var) under the harness's negative-value rule."""

from __future__ import annotations

import glob
from pathlib import Path

import anndata as ad
import mlflow
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from benchmark.cli import main
from benchmark.data.datasets import load_synthetic
from benchmark.execution.score import NO_PREDICTED_CELLS, read_predictions
from benchmark.reports.leaderboard import collect
from benchmark.scoring import evaluate
from benchmark.tracking import schema
from benchmark.tracking import store as tracking

RUN = ["--predictor", "mean_shift", "--dataset", "synthetic", "--no-figures", "--no-leaderboard"]


def _children(parent_id: str) -> dict[str, mlflow.entities.Run]:
    """A parent's child runs by split name."""
    parent = mlflow.get_run(parent_id)
    runs = mlflow.search_runs(
        [parent.info.experiment_id], filter_string=schema.children_filter(parent_id), output_format="list"
    )
    return {r.data.tags[schema.TAG_SPLIT]: r for r in runs}


def _parents(predictor: str) -> list[mlflow.entities.Run]:
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"{schema.parent_filter()} and tags.`{schema.TAG_PREDICTOR}` = '{predictor}'",
        output_format="list",
    )


def _merged(folder: Path, out: Path) -> Path:
    """The per-target prediction files of a store's artifacts, merged into one h5ad."""
    files = sorted(glob.glob(str(folder / "mlartifacts" / "*" / "artifacts" / "predictions" / "*.h5ad")))
    merged = ad.concat([ad.read_h5ad(f) for f in files], merge="same", index_unique="-")
    merged.write_h5ad(out)
    return out


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """`bench run --predictor mean_shift --dataset synthetic --save-predictions` (first 2 splits), merged."""
    folder = tmp_path_factory.mktemp("score")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        assert main(["run", *RUN, "--save-predictions", "--max-splits", "2"]) == 0
        (parent,) = _parents("mean_shift")
    return folder, parent.info.run_id, _merged(folder, folder / "merged.h5ad")


@pytest.fixture
def workdir(saved_run, monkeypatch):
    folder = saved_run[0]
    monkeypatch.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.use_store(uri)
    return folder


def test_score_reproduces_the_runs_metrics_exactly(saved_run, workdir, capsys):
    _, run_parent, merged = saved_run
    code = main(
        [
            "score",
            "--predictions",
            str(merged),
            "--dataset",
            "synthetic",
            "--name",
            "mean_shift",
            "--no-figures",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    (score_parent,) = [p for p in _parents("mean_shift") if p.info.run_id != run_parent]
    assert score_parent.data.tags[schema.TAG_SOURCE] == schema.SOURCE_SCORE
    assert not any(k.startswith(schema.HP_PREFIX) for k in score_parent.data.params)
    ran, scored = _children(run_parent), _children(score_parent.info.run_id)
    assert len(ran) == 2 and len(scored) == 12  # every split of the kind, only two predicted
    for split, child in ran.items():
        expected = {k: v for k, v in child.data.metrics.items() if k != schema.FIT_SECONDS}
        got = scored[split].data.metrics
        assert len(expected) > 60  # metrics, ceiling_, reference_, oracle_, norm_
        assert {k: got[k] for k in expected} == pytest.approx(expected, rel=0, abs=0, nan_ok=True)
        assert scored[split].data.params[schema.PARAM_REFERENCE] == child.data.params[schema.PARAM_REFERENCE]
    missing = [c for s, c in scored.items() if s not in ran]
    assert {c.data.tags[schema.TAG_STATUS] for c in missing} == {schema.STATUS_NOT_APPLICABLE}
    assert {c.data.tags[schema.TAG_REASON] for c in missing} == {NO_PREDICTED_CELLS}
    means = {k: v for k, v in mlflow.get_run(run_parent).data.metrics.items() if k.startswith("mean_")}
    assert {k: score_parent.data.metrics[k] for k in means} == pytest.approx(means, rel=0, abs=0, nan_ok=True)
    # the leaderboard keeps the two apart and reproduces the scored file with `bench score`
    (board,) = collect()
    commands = board.commands
    assert commands["mean_shift (scored file)"].startswith("bench score --predictions merged.h5ad ")
    assert "--name mean_shift --split holdout_context --seed 0" in commands["mean_shift (scored file)"]
    assert any(c.startswith("bench run --predictor mean_shift") for c in commands.values())
    # the end of the output says where everything went
    assert f"MLflow store:  sqlite:///{workdir / 'mlflow.db'}" in out
    assert f"ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}" in out
    assert str(workdir / "mlartifacts" / score_parent.info.run_id / "artifacts") in out


def _write(adata: AnnData, path: Path) -> str:
    adata.write_h5ad(path)
    return str(path)


def _counts(a: AnnData) -> AnnData:
    a.X = np.round(np.expm1(a.X) * 5)
    return a


def _scaled(a: AnnData) -> AnnData:
    a.X = (a.X - a.X.mean(axis=0)) / (a.X.std(axis=0) + 1e-6)
    return a


def _other_group(a: AnnData) -> AnnData:
    a.obs["context"] = a.obs["context"].astype(str).replace({"C0": "C9"})
    return a


def _unknown_perturbation(a: AnnData) -> AnnData:
    a.obs["perturbation"] = a.obs["perturbation"].astype(str).replace({"P1": "P9"})
    return a


def _no_context(a: AnnData) -> AnnData:
    a.obs = a.obs.drop(columns=["context", "cell_type"])
    return a


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a[:, 3:].copy(), "lacks 3 of the dataset's 200 genes"),
        (_counts, "wrong scale: integers up to"),
        (_scaled, "wrong scale: negative values hold"),
        (
            _other_group,
            "not held-out targets of the holdout_context split with seed 0 (context/perturbation: C9/P0",
        ),
        (_unknown_perturbation, "1 group(s) that are not held-out targets"),
        (_no_context, "no context column ('context' or 'cell_type')"),
    ],
    ids=["missing_genes", "counts", "scaled", "unknown_context", "unknown_perturbation", "no_context"],
)
def test_unscorable_files_get_one_line(saved_run, workdir, capsys, change, message):
    bad = _write(change(ad.read_h5ad(saved_run[2])), workdir / "bad.h5ad")
    code = main(["score", "--predictions", bad, "--dataset", "synthetic", "--name", "x", "--no-leaderboard"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("bench: error:"), err
    assert message in err


def test_a_file_of_another_seed_gets_one_line(saved_run, workdir, capsys):
    args = [
        "score",
        "--predictions",
        str(saved_run[2]),
        "--dataset",
        "synthetic",
        "--name",
        "x",
        "--seed",
        "1",
    ]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds seed(s) 0 in obs['seed'], not --seed 1" in err


def test_cell_eval_layout_and_gene_order_read_as_bench_layout(saved_run):
    dataset = load_synthetic()
    own = read_predictions(saved_run[2], dataset, seed=0)
    cells = ad.read_h5ad(saved_run[2])
    controls = cells[:5].copy()
    controls.obs["perturbation"] = "non-targeting"
    layout = ad.concat([cells, controls], merge="same", index_unique="-")
    layout.obs = layout.obs.rename(columns={"perturbation": "target_gene"}).drop(columns=["context", "seed"])
    layout = layout[:, np.random.default_rng(0).permutation(layout.n_vars)].copy()  # genes in another order
    other = read_predictions(_write(layout, Path(saved_run[0]) / "celleval.h5ad"), dataset, seed=0)
    assert other.perturbation_key == "target_gene" and other.context_key == "cell_type"
    assert other.n_control_rows == 5
    assert own.groups.keys() == other.groups.keys()
    for key, group in own.groups.items():
        np.testing.assert_array_equal(group.X, other.groups[key].X)


def _tiny_data(path: Path) -> str:
    """A small lognorm file: 2 cell types x (ctrl, stim) x 15 cells x 12 genes, var with a gene symbol column."""
    rng = np.random.default_rng(3)
    obs = pd.DataFrame(
        [(c, p, f"donor{i % 2}") for c in ("A", "B") for p in ("ctrl", "stim") for i in range(15)],
        columns=["cell_type", "condition", "donor"],
    )
    obs.index = [f"c{i}" for i in range(len(obs))]
    stim = (obs["condition"] == "stim").to_numpy()[:, None]
    rate = np.where(stim, np.r_[np.full(6, 3.0), np.full(6, 0.2)], 1.0)  # half the genes up, half down
    x = np.log1p(rng.poisson(rate, size=(len(obs), 12)))
    var = pd.DataFrame({"symbol": [f"S{j}" for j in range(12)]}, index=[f"g{j}" for j in range(12)])
    AnnData(X=x.astype(np.float32), obs=obs, var=var).write_h5ad(path)
    return str(path)


@pytest.mark.parametrize("clip", [False, True])
def test_saved_predictions_are_the_scored_cells_with_their_source(tmp_path, monkeypatch, clip):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(evaluate, "CLIP_NEGATIVE_PREDICTIONS", clip)
    data = _tiny_data(tmp_path / "data.h5ad")
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
    assert main(["run", "--predictor", "mean_shift", *args, "--save-predictions", "--no-figures"]) == 0
    merged = ad.read_h5ad(_merged(tmp_path, tmp_path / "merged.h5ad"))
    real = ad.read_h5ad(data)
    source = merged.obs["source_cell"].astype(str)
    assert set(source) <= set(real.obs_names[real.obs["condition"] == "ctrl"])
    assert (merged.obs["donor"].astype(str).to_numpy() == real.obs.loc[source, "donor"].to_numpy()).all()
    assert (merged.obs["condition"] == "stim").all() and merged.var.equals(real.var)
    assert ((merged.X < 0).any()) is not clip  # the shift baseline goes below 0 unless the rule clips it
    (run,) = _parents("mean_shift")
    assert (
        main(
            ["score", "--predictions", str(tmp_path / "merged.h5ad"), *args, "--name", "file", "--no-figures"]
        )
        == 0
    )
    (scored,) = _parents("file")
    for split, child in _children(run.info.run_id).items():
        expected = {k: v for k, v in child.data.metrics.items() if k != schema.FIT_SECONDS}
        got = _children(scored.info.run_id)[split].data.metrics
        assert {k: got[k] for k in expected} == pytest.approx(expected, rel=0, abs=0, nan_ok=True)
    if clip:  # under the rule a saved prediction is valid input: with the real controls it runs as data
        controls = real[real.obs["condition"] == "ctrl"]
        both = ad.concat([controls, merged[:, real.var_names]], merge="same", index_unique="-")
        path = _write(both, tmp_path / "back.h5ad")
        again = [
            "--data",
            path,
            "--perturbation-key",
            "condition",
            "--control",
            "ctrl",
            "--context-key",
            "cell_type",
        ]
        assert main(["run", "--predictor", "mean_shift", *again, "--no-figures", "--no-leaderboard"]) == 0


def test_saved_predictions_merged_without_unique_names_read_without_anndata_warnings(saved_run, workdir):
    """Files merged without index_unique repeat cell names; bench groups the cells itself, so its one-line
    errors and outputs are not preceded by anndata's duplicate-names warning."""
    import warnings

    from benchmark.data.datasets import load_dataset
    from benchmark.execution.score import read_predictions

    folder = saved_run[0]
    files = sorted(glob.glob(str(folder / "mlartifacts" / "*" / "artifacts" / "predictions" / "*.h5ad")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = ad.concat([ad.read_h5ad(f) for f in files] * 2, merge="same")  # every name twice
    assert not merged.obs_names.is_unique
    path = folder / "repeated.h5ad"
    merged.write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictions = read_predictions(path, load_dataset("synthetic"))
    assert sum(g.n_obs for g in predictions.groups.values()) == merged.n_obs
