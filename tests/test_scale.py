"""Large data on one machine: batched log-normalization, backed files and index-only splits give the same
numbers as the whole-matrix path (forced here on small data by a tiny batch)."""

from __future__ import annotations

import numpy as np
import pytest

import benchmark.metrics as metrics_module
import benchmark.task
from benchmark.datasets import Dataset, load_h5ad
from benchmark.metrics import fit_embedding, fit_embedding_cells
from benchmark.pseudobulk import group_profiles
from benchmark.runner import RunOptions, run_benchmark
from benchmark.synthetic import write_synthetic
from benchmark.task import Positions, Task, lognorm_batches

TASK = Task("condition", "control", "cell_type", expression="counts")


def test_batches_cover_every_row_once_and_one_batch_is_the_whole_matrix(small_synthetic, monkeypatch):
    whole = list(lognorm_batches(small_synthetic, TASK))
    assert len(whole) == 1 and whole[0][0] == slice(0, small_synthetic.n_obs)
    monkeypatch.setattr(benchmark.task, "BATCH_CELLS", 100)
    parts = list(lognorm_batches(small_synthetic[::2], TASK))
    assert [p[0].stop - p[0].start for p in parts][:-1] == [100] * (len(parts) - 1)
    stacked = np.vstack([x.toarray() for _, x in parts])
    np.testing.assert_array_equal(stacked, TASK.lognorm(small_synthetic[::2]).toarray())


def test_batched_group_profiles_and_pca_match_the_whole_matrix(small_synthetic, monkeypatch):
    means, sizes = group_profiles(small_synthetic, TASK)
    embed = fit_embedding(TASK.lognorm(small_synthetic), n_components=10)
    monkeypatch.setattr(benchmark.task, "BATCH_CELLS", 64)
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


@pytest.mark.parametrize("kind", ["holdout_context", "random"])
def test_a_backed_batched_run_scores_like_the_in_memory_run(tmp_path, monkeypatch, kind):
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
    monkeypatch.setattr(benchmark.task, "BATCH_CELLS", 97)
    backed = run(backed=True)
    assert [r.label for r in backed] == [r.label for r in memory]
    for a, b in zip(memory, backed, strict=True):
        for part in ("metrics", "ceiling", "reference", "oracle"):
            x, y = getattr(a, part), getattr(b, part)
            assert x.keys() == y.keys()
            np.testing.assert_allclose([y[k] for k in x], [x[k] for k in x], rtol=1e-9, atol=1e-9)


def test_a_large_training_set_is_embedded_from_its_seeded_pca_sample(small_synthetic, monkeypatch):
    monkeypatch.setattr(metrics_module, "PCA_MAX_CELLS", 200)
    rows = metrics_module.pca_rows(small_synthetic.n_obs)
    assert rows.size == 200 and np.array_equal(rows, metrics_module.pca_rows(small_synthetic.n_obs))
    sampled = fit_embedding_cells(small_synthetic, TASK, n_components=10)
    exact = fit_embedding(TASK.lognorm(small_synthetic[rows]), n_components=10)
    cells = TASK.lognorm(small_synthetic[:50]).toarray()
    np.testing.assert_allclose(sampled(cells), exact(cells), rtol=0, atol=1e-8)
