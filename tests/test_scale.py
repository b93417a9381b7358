"""Large data on one machine: batched log-normalization, backed files and index-only splits give the same
numbers as the whole-matrix path (forced here on small data by a tiny batch)."""

from __future__ import annotations

import numpy as np
import pytest

import benchmark.core.task
import benchmark.data.splits as splits_module
import benchmark.execution.scorer as scorer_module
import benchmark.scoring.embedding as embedding_module
import benchmark.scoring.evaluate as evaluate_module
import benchmark.scoring.mean_scores as mean_scores
from benchmark.core.pseudobulk import group_profiles
from benchmark.core.task import Positions, Task, lognorm_batches
from benchmark.data.datasets import Dataset, load_h5ad
from benchmark.data.splits import MIN_CELLS, make_splits
from benchmark.data.synthetic import write_synthetic
from benchmark.execution.options import RunOptions
from benchmark.execution.runner import run_benchmark
from benchmark.scoring.embedding import fit_embedding, fit_embedding_cells
from benchmark.scoring.evaluate import OtherDeltas, other_deltas
from benchmark.scoring.metrics import l1_distances
from benchmark.scoring.ranksum import ControlRanks

TASK = Task("condition", "control", "cell_type", expression="counts")


def test_batches_cover_every_row_once_and_one_batch_is_the_whole_matrix(small_synthetic, monkeypatch):
    whole = list(lognorm_batches(small_synthetic, TASK))
    assert len(whole) == 1 and whole[0][0] == slice(0, small_synthetic.n_obs)
    monkeypatch.setattr(benchmark.core.task, "BATCH_CELLS", 100)
    parts = list(lognorm_batches(small_synthetic[::2], TASK))
    assert [p[0].stop - p[0].start for p in parts][:-1] == [100] * (len(parts) - 1)
    stacked = np.vstack([x.toarray() for _, x in parts])
    np.testing.assert_array_equal(stacked, TASK.lognorm(small_synthetic[::2]).toarray())


def test_batched_group_profiles_and_pca_match_the_whole_matrix(small_synthetic, monkeypatch):
    means, sizes = group_profiles(small_synthetic, TASK)
    embed = fit_embedding(TASK.lognorm(small_synthetic), n_components=10)
    monkeypatch.setattr(benchmark.core.task, "BATCH_CELLS", 64)
    batched_means, batched_sizes = group_profiles(small_synthetic, TASK)
    assert batched_sizes == sizes
    for group, mean in means.items():
        np.testing.assert_allclose(batched_means[group], mean, rtol=0, atol=1e-12)
    batched = fit_embedding_cells(small_synthetic, TASK, n_components=10)
    cells = TASK.lognorm(small_synthetic[:50]).toarray()
    np.testing.assert_allclose(batched(cells), embed(cells), rtol=0, atol=1e-8)


def test_positions_look_up_ids_and_reject_unknown_ones(small_synthetic):
    positions = Positions(small_synthetic.obs_names)
    ids = tuple(small_synthetic.obs_names[[5, 2, 9]])
    np.testing.assert_array_equal(positions.of(ids), [5, 2, 9])
    assert positions[ids[1]] == 2
    with pytest.raises(Exception, match="not in the dataset"):
        positions.of(("nope",))


@pytest.mark.parametrize(
    ("kind", "sampled"), [("holdout_context", False), ("random", False), ("random", True)]
)
def test_a_backed_batched_run_scores_like_the_in_memory_run(tmp_path, monkeypatch, kind, sampled):
    if sampled:  # each target gets a sample of its context's controls, taken from the block read once
        monkeypatch.setattr(splits_module, "MIN_PREDICTED_CELLS", 5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "screen.h5ad"
    write_synthetic(path, n_genes=60, n_contexts=2, n_perturbations=3, cells_per_group=60, seed=2)
    options = RunOptions(figures=False, max_splits=1, embedding="pca")

    def run(backed: bool) -> list:
        loaded = load_h5ad(path, "condition", "control", "cell_type", expression="counts", backed=backed)
        dataset = Dataset("screen", loaded.adata, TASK, "checksum", str(path), kind)
        return run_benchmark("mean_shift", dataset, kind, options, lambda _: None).results

    memory = run(backed=False)
    monkeypatch.setattr(benchmark.core.task, "BATCH_CELLS", 97)
    backed = run(backed=True)
    assert [r.label for r in backed] == [r.label for r in memory]
    if sampled:
        split = make_splits(
            load_h5ad(path, "condition", "control", "cell_type", expression="counts").adata, TASK, kind
        )[0]
        assert all(0 < len(t.control_cells) < 60 for t in split.targets)
    for a, b in zip(memory, backed, strict=True):
        for part in ("metrics", "ceiling", "reference", "oracle"):
            x, y = getattr(a, part), getattr(b, part)
            assert x.keys() == y.keys()
            np.testing.assert_allclose([y[k] for k in x], [x[k] for k in x], rtol=1e-9, atol=1e-9)


def test_a_large_training_set_is_embedded_from_its_seeded_pca_sample(small_synthetic, monkeypatch):
    monkeypatch.setattr(embedding_module, "PCA_MAX_CELLS", 200)
    rows = embedding_module.pca_rows(small_synthetic.n_obs)
    assert rows.size == 200 and np.array_equal(rows, embedding_module.pca_rows(small_synthetic.n_obs))
    sampled = fit_embedding_cells(small_synthetic, TASK, n_components=10)
    exact = fit_embedding(TASK.lognorm(small_synthetic[rows]), n_components=10)
    cells = TASK.lognorm(small_synthetic[:50]).toarray()
    np.testing.assert_allclose(sampled(cells), exact(cells), rtol=0, atol=1e-8)


def _brute_force_others(means, sizes, kind, perturbation, context):
    """The comparison groups by their definition, one target at a time: no shared pool."""
    if kind == "holdout_context":
        groups = [(t, p) for (t, p) in means if p == perturbation and t != context]
    else:
        groups = [(t, p) for (t, p) in means if t == context and p not in (perturbation, "control")]
    usable = [
        g
        for g in sorted(groups)
        if sizes.get(g, 0) >= MIN_CELLS and sizes.get((g[0], "control"), 0) >= MIN_CELLS
    ]
    usable = [usable[i] for i in evaluate_module.capped_pool(len(usable), perturbation, context)]
    rows = [means[g] - means[(g[0], "control")] for g in usable]
    return np.asarray(rows, dtype=np.float64) if rows else None


@pytest.mark.parametrize("cap", [None, 2])
@pytest.mark.parametrize("kind", ["holdout_context", "holdout_combo"])
def test_the_per_context_others_pool_gives_every_target_what_other_deltas_gives(
    small_synthetic, kind, cap, monkeypatch
):
    if cap is not None:  # a pool larger than MAX_OTHER_GROUPS: both cut it to the same sample
        monkeypatch.setattr(evaluate_module, "MAX_OTHER_GROUPS", cap)
    means, sizes = group_profiles(small_synthetic, TASK)
    small = dict(sizes)
    small[("C0", "P1")] = MIN_CELLS - 1  # a group too small to compare against
    pool = OtherDeltas(means, small, "control", kind)
    targets = [t for s in make_splits(small_synthetic, TASK, kind) for t in s.targets]
    assert targets
    for t in targets:
        expected = _brute_force_others(means, small, kind, t.perturbation, t.context)
        got = pool(t.perturbation, t.context, MIN_CELLS)
        if expected is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, expected)
            assert cap is None or len(got) <= cap


def test_a_large_comparison_pool_is_a_seeded_sample_of_the_others_the_same_for_every_seed(monkeypatch):
    monkeypatch.setattr(evaluate_module, "MAX_OTHER_GROUPS", 5)
    genes = 4
    groups = [("C", f"P{i}") for i in range(12)]
    means = {g: np.full(genes, float(i + 1)) for i, g in enumerate(groups)} | {
        ("C", "control"): np.zeros(genes)
    }
    sizes = dict.fromkeys(means, 50)
    got = other_deltas(means, sizes, "control", "random", "P3", "C", MIN_CELLS)
    assert got.shape == (5, genes)
    assert 4.0 not in got[:, 0]  # never the target's own Δ
    labels = [f"P{int(v) - 1}" for v in got[:, 0]]
    assert len(set(labels)) == 5 and labels == sorted(labels)  # distinct groups, in the pool's (label) order
    again = OtherDeltas(means, sizes, "control", "random")("P3", "C", MIN_CELLS)
    np.testing.assert_array_equal(again, got)  # the per-split pool cuts the same sample
    np.testing.assert_array_equal(other_deltas(means, sizes, "control", "random", "P3", "C", MIN_CELLS), got)
    samples = {
        tuple(other_deltas(means, sizes, "control", "random", f"P{i}", "C", MIN_CELLS)[:, 0])
        for i in range(12)
    }
    assert len(samples) > 1  # seeded by the target: targets do not all share one sample


def test_l1_distances_chunk_by_chunk_are_numpys_row_sums(monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(mean_scores, "L1_CHUNK_VALUES", 50)  # several chunks, a short last one
    for rows, genes in [(1, 3), (7, 20), (33, 16)]:
        others, v = rng.normal(size=(rows, genes)), rng.normal(size=genes)
        np.testing.assert_array_equal(l1_distances(others, v), np.abs(others - v).sum(axis=1))


def test_control_ranks_test_several_samples_like_pooled_ranking():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(3)
    control = np.round(rng.gamma(1.0, size=(40, 12)), 1) * (rng.random((40, 12)) < 0.6)
    control[:, 0] = 0.0  # a gene constant in control and in the first sample: p = 1
    ranks = ControlRanks(control)
    for _ in range(3):
        sample = np.round(rng.gamma(1.2, size=(25, 12)), 1) * (rng.random((25, 12)) < 0.6)
        sample[:, 0] = 0.0
        got = ranks.pvalues(sample)
        assert got[0] == 1.0
        expected = [
            mannwhitneyu(sample[:, g], control[:, g], method="asymptotic").pvalue for g in range(1, 12)
        ]
        np.testing.assert_allclose(got[1:], expected, rtol=1e-12, atol=0)


def test_a_large_held_out_group_is_scored_on_a_bounded_sample(small_synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(splits_module, "MAX_SCORED_CELLS", 15)
    split = make_splits(small_synthetic, TASK, "holdout_context")[0]
    target = split.targets[0]
    assert len(target.test_cells) > 15 and len(target.control_cells) == 15  # controls stop at the cap
    scored = splits_module.scored_test_cells(target.test_cells)
    assert len(scored) == 15 and set(scored) <= set(target.test_cells)
    assert scored == splits_module.scored_test_cells(target.test_cells)  # seeded: the same every time
    taken: list[int] = []
    real_take = scorer_module.take
    monkeypatch.setattr(scorer_module, "take", lambda a, p: taken.append(len(p)) or real_take(a, p))
    dataset = Dataset("screen", small_synthetic, TASK, "checksum", "screen.h5ad", "holdout_context")
    options = RunOptions(figures=False, max_splits=1, embedding="pca")
    results = run_benchmark("mean_shift", dataset, "holdout_context", options, lambda _: None).results
    assert results[0].status == "ok" and np.isfinite(results[0].metrics["r"])
    assert taken and max(taken) <= 15  # no target reads more than the cap of cells


def test_arpack_on_the_scatter_matrix_gives_the_dense_solvers_pca(small_synthetic, monkeypatch):
    monkeypatch.setattr(benchmark.core.task, "BATCH_CELLS", 64)  # the batched (scatter-matrix) path
    dense_fit = fit_embedding_cells(small_synthetic, TASK, n_components=10)
    monkeypatch.setattr(embedding_module, "DENSE_EIGH_MAX_GENES", 10)  # fewer than the genes: ARPACK
    arpack_fit = fit_embedding_cells(small_synthetic, TASK, n_components=10)
    cells = TASK.lognorm(small_synthetic[:50]).toarray()
    np.testing.assert_allclose(arpack_fit(cells), dense_fit(cells), rtol=0, atol=1e-8)
