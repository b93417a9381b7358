"""The synthetic generator is deterministic, count-valued, and its ground truth matches the data it makes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from benchmark.synthetic import describe, make_synthetic, true_lfc
from benchmark.task import TARGET_SUM


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
