"""The synthetic generator is deterministic, count-valued, and its ground truth matches the data it makes."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pytest

from benchmark.cli import main
from benchmark.core.task import TARGET_SUM, Task, dense, lognormalize
from benchmark.data.datasets import prepare
from benchmark.data.splits import make_splits
from benchmark.data.synthetic import (
    CONTEXT_KEY,
    CONTROL,
    PERTURBATION_KEY,
    describe,
    make_synthetic,
    sample_cells,
    true_lfc,
    write_synthetic,
)
from benchmark.scoring.embedding import fit_embedding
from benchmark.scoring.metrics import EvalData, score
from predictors.baselines import MeanShift

SCREEN = {"n_genes": 500, "n_contexts": 1, "n_perturbations": 30, "n_controls": 1000}
"""A small Replogle-like screen: one context, many perturbations, many controls."""


def _group_mean(adata, context: str, condition: str) -> np.ndarray:
    """Mean size-normalized expression (counts / library * TARGET_SUM) of one (context, condition) group."""
    mask = ((adata.obs["cell_type"] == context) & (adata.obs["condition"] == condition)).to_numpy()
    x = adata.X[mask].toarray().astype(np.float64)
    return (x / x.sum(axis=1, keepdims=True) * TARGET_SUM).mean(axis=0)


def _empirical_lfc(adata, context: str, perturbation: str) -> np.ndarray:
    """Empirical log mean ratio, perturbed over control, of normalized expression in one context."""
    pseudo = 1.0
    return np.log(_group_mean(adata, context, perturbation) + pseudo) - np.log(
        _group_mean(adata, context, "control") + pseudo
    )


def test_layout(small_synthetic):
    a = small_synthetic
    assert a.shape == (3 * 6 * 40, 60)
    assert list(a.obs["condition"].cat.categories) == ["control", "P0", "P1", "P2", "P0+P1", "P0+P2"]
    assert list(a.obs["cell_type"].cat.categories) == ["C0", "C1", "C2"]
    assert a.obs_names.is_unique and a.var_names[0] == "G0000"
    assert a.obs.groupby(["cell_type", "condition"], observed=True).size().eq(40).all()
    gt = a.uns["ground_truth"]
    assert gt["lfc"].shape == (3, 5, 60) and gt["dispersion"].shape == (60,)


def test_counts_are_integers_in_csr_float32(small_synthetic):
    x = small_synthetic.X
    assert x.format == "csr" and x.dtype == np.float32
    assert np.array_equal(x.data, np.round(x.data)) and x.data.min() >= 0


def test_deterministic_by_seed():
    a, b = (
        make_synthetic(n_genes=30, cells_per_group=10, seed=3),
        make_synthetic(n_genes=30, cells_per_group=10, seed=3),
    )
    c = make_synthetic(n_genes=30, cells_per_group=10, seed=4)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert np.array_equal(a.uns["ground_truth"]["lfc"], b.uns["ground_truth"]["lfc"])
    assert (a.X != c.X).nnz > 0
    assert not np.array_equal(a.uns["ground_truth"]["lfc"], c.uns["ground_truth"]["lfc"])


def test_truth_does_not_depend_on_cell_count():
    a, b = make_synthetic(n_genes=30, cells_per_group=5), make_synthetic(n_genes=30, cells_per_group=20)
    assert np.array_equal(a.uns["ground_truth"]["lfc"], b.uns["ground_truth"]["lfc"])


def test_ground_truth_matches_empirical_lfc():
    adata = make_synthetic(seed=0)
    shift = adata.uns["ground_truth"]["composition_shift"]
    for c, context in enumerate(["C0", "C1", "C2", "C3"]):
        for p, perturbation in enumerate(["P0", "P1", "P2"]):
            truth = true_lfc(adata, context, perturbation)
            affected = truth != 0
            empirical = _empirical_lfc(adata, context, perturbation)
            assert np.corrcoef(truth[affected], empirical[affected])[0, 1] > 0.95, (context, perturbation)
            # unaffected genes move only by the library-composition shift
            assert np.abs(empirical[~affected] + shift[c, p]).mean() < 0.15, (context, perturbation)


def test_context_specific_effects_differ():
    adata = make_synthetic(seed=0)
    gt = adata.uns["ground_truth"]
    scale = gt["context_scale"]
    assert scale.max(axis=0).min() / scale.min(axis=0).max() > 1.2  # responses differ in strength
    for p in ["P0", "P1", "P2"]:
        c0, c1 = true_lfc(adata, "C0", p), true_lfc(adata, "C1", p)
        only_c0 = (c0 != 0) & (c1 == 0)
        assert only_c0.sum() >= 5
        e0, e1 = _empirical_lfc(adata, "C0", p), _empirical_lfc(adata, "C1", p)
        assert np.abs(e0[only_c0]).mean() > 2 * np.abs(e1[only_c0]).mean()
        assert np.corrcoef(c0, c1)[0, 1] < 0.9


def test_combos_add_single_effects(small_synthetic):
    for context in ["C0", "C2"]:
        combo = true_lfc(small_synthetic, context, "P0+P2")
        assert np.allclose(
            combo, true_lfc(small_synthetic, context, "P0") + true_lfc(small_synthetic, context, "P2")
        )


def test_h5ad_round_trip(small_synthetic, tmp_path):
    path = tmp_path / "syn.h5ad"
    small_synthetic.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert np.array_equal(true_lfc(back, "C1", "P0+P1"), true_lfc(small_synthetic, "C1", "P0+P1"))
    assert back.uns["ground_truth"]["params"]["seed"] == 1


def test_describe_is_stable():
    assert describe() == describe(seed=0)
    assert describe() != describe(seed=1) and describe().startswith("synthetic:")


@pytest.mark.parametrize("bad", [{"n_genes": 0}, {"n_combos": 4}, {"frac_affected": 0.0}])
def test_bad_parameters(bad):
    with pytest.raises(ValueError):
        make_synthetic(**bad)


# ---------------------------------------------------------------------------------- spread (dispersion) effects


def test_spread_effects_change_variance_not_mean():
    adata = make_synthetic(
        n_genes=100,
        n_contexts=1,
        n_perturbations=1,
        cells_per_group=2000,
        seed=2,
        frac_variance=0.3,
        library_sd=0.0,
    )
    gt = adata.uns["ground_truth"]
    spread, lfc = gt["dispersion_lfc"][0, 0], gt["lfc"][0, 0]
    assert (spread != 0).sum() == 30 and not ((spread != 0) & (lfc != 0)).any()  # spread-only genes
    x = adata.X.toarray().astype(np.float64)
    pert = (adata.obs["condition"] == "P0").to_numpy()
    mean_ratio = np.log(x[pert].mean(0) + 0.1) - np.log(x[~pert].mean(0) + 0.1)
    var_ratio = np.log(x[pert].var(0) + 0.1) - np.log(x[~pert].var(0) + 0.1)
    up, down = spread > 0.5, spread < -0.5
    assert var_ratio[up].mean() > 0.3 and var_ratio[down].mean() < -0.3
    assert np.abs(mean_ratio[up | down]).mean() < 0.1


def test_sampling_the_true_law_beats_the_mean_oracle_on_shape_scores():
    """The generator's own law (fresh cells) beats control + the true mean shift on the shape scores, and the
    true mean shift beats mean_shift on r: the spread effects make a mean shift an incomplete prediction."""
    task = Task(PERTURBATION_KEY, CONTROL, CONTEXT_KEY, expression="counts")
    params = {"n_contexts": 3, "n_perturbations": 2, "cells_per_group": 300, "frac_variance": 0.2}
    adata = prepare(make_synthetic(**params, variance_effect=1.5), task)
    x, rows = task.lognorm(adata), adata.obs_names.get_indexer
    shape_scores = ("energy_distance_shape", "crps_deg100", "var_ratio")
    sums = {name: dict.fromkeys((*shape_scores, "r"), 0.0) for name in ("sampler", "oracle", "mean_shift")}
    for split in make_splits(adata, task, "holdout_context", perturbations=["P0"]):
        target = split.targets[0]
        train = adata[rows(list(split.train_cells))].copy()
        control = adata[rows(list(target.control_cells))].copy()
        control_x, real = dense(x[rows(list(target.control_cells))]), dense(x[rows(list(target.test_cells))])
        fresh = sample_cells(adata, target.context, target.perturbation, len(real), seed=1)
        preds = {
            "sampler": dense(lognormalize(fresh)),
            "oracle": control_x + real.mean(axis=0) - control_x.mean(axis=0),
            "mean_shift": dense(MeanShift().fit(train, task).predict(control, "P0", target.context).X),
        }
        embed = fit_embedding(task.lognorm(train), n_components=50)
        for name, pred in preds.items():
            for metric, value in score(EvalData(control_x, real, pred, embed)).items():
                if metric in sums[name]:
                    sums[name][metric] += abs(value) if metric == "var_ratio" else value
    for metric in shape_scores:
        assert sums["sampler"][metric] < sums["oracle"][metric], metric
    assert sums["oracle"]["r"] > sums["mean_shift"]["r"]


# ---------------------------------------------------------------------------------- scale: chunks and streaming


def test_screen_layout():
    adata = make_synthetic(**SCREEN, cells_per_group=5)
    counts = adata.obs["condition"].value_counts()
    assert adata.n_obs == 1000 + 30 * 5 and counts["control"] == 1000 and (counts.drop("control") == 5).all()
    assert adata.uns["ground_truth"]["params"]["n_controls"] == 1000


def test_chunked_output_equals_one_chunk():
    one = make_synthetic(**SCREEN, cells_per_group=20, seed=5, chunk_cells=10**9)
    for chunk in (1, 700, 1536):
        many = make_synthetic(**SCREEN, cells_per_group=20, seed=5, chunk_cells=chunk)
        assert (many.X != one.X).nnz == 0 and many.obs.equals(one.obs)
        assert many.X.has_canonical_format and many.X.dtype == np.float32


def test_streamed_file_equals_in_memory_and_reads_back_backed(tmp_path):
    path = write_synthetic(tmp_path / "screen.h5ad", chunk_cells=600, **SCREEN, cells_per_group=40, seed=3)
    memory = make_synthetic(**SCREEN, cells_per_group=40, seed=3)
    backed = ad.read_h5ad(path, backed="r")
    assert backed.shape == memory.shape and list(backed.obs.columns) == ["condition", "cell_type"]
    assert backed.obs["condition"].cat.categories[0] == "control"
    back = ad.read_h5ad(path)
    assert back.X.format == "csr" and (back.X != memory.X).nnz == 0 and back.obs.equals(memory.obs)
    assert np.array_equal(true_lfc(back, "C0", "P7"), true_lfc(memory, "C0", "P7"))


def _peak_write_bytes(path, n_cells: int) -> int:
    """Peak traced memory while streaming a one-context screen of about n_cells cells x 500 genes."""
    tracemalloc.start()
    try:
        write_synthetic(path, chunk_cells=1024, **SCREEN, cells_per_group=(n_cells - 1000) // 30)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_memory_does_not_grow_with_cells(tmp_path):
    small, large = (
        _peak_write_bytes(tmp_path / "a.h5ad", 4_000),
        _peak_write_bytes(tmp_path / "b.h5ad", 16_000),
    )
    dense_bytes = 16_000 * 500 * 8  # one float64 cells x genes array, which the generator never builds
    assert large < 1.3 * small and large < dense_bytes / 3


def test_make_synthetic_command(tmp_path, capsys):
    out = tmp_path / "screen.h5ad"
    args = [
        "make-synthetic",
        "--cells",
        "1300",
        "--genes",
        "50",
        "--perturbations",
        "30",
        "--controls",
        "1000",
    ]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1300 cells x 50 genes" in printed and "--perturbation-key condition --control control" in printed
    assert ad.read_h5ad(out, backed="r").shape == (1300, 50)
    assert main([*args[:2], "500", *args[3:], "--out", str(out)]) == 2  # no cells left for perturbations


def test_make_synthetic_defaults_to_a_replogle_like_control_group(tmp_path, capsys):
    out = tmp_path / "screen.h5ad"
    args = ["make-synthetic", "--cells", "3000", "--genes", "20", "--perturbations", "27", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "3000 cells x 20 genes (100 cells per perturbation)" in printed.out and not printed.err
    labels = ad.read_h5ad(out, backed="r").obs["condition"]
    assert (labels == "control").sum() == 300  # min(10,000, a tenth of the cells)
    few = ["make-synthetic", "--cells", "600", "--genes", "20", "--perturbations", "20", "--out", str(out)]
    assert main(few) == 0  # 27 cells per perturbation: 5 held out by the random split
    assert "holds out 5 of 27 cells per perturbation, fewer than the 10" in capsys.readouterr().err
