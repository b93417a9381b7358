"""The scoring PCA is fitted once per (dataset, split) and kept in the model cache; a cached run scores the same."""

from __future__ import annotations

import numpy as np

from benchmark.data.datasets import load_synthetic
from benchmark.data.splits import make_splits
from benchmark.execution import model_cache
from benchmark.scoring.embedding import fit_embedding_cells


def test_cached_embedding_is_the_fitted_one_bit_for_bit(tmp_path, monkeypatch):
    dataset = load_synthetic()
    split = make_splits(dataset.adata, dataset.task, "holdout_context", seed=0)[0]
    train = dataset.adata[list(split.train_cells)]
    fitted = fit_embedding_cells(train, dataset.task)
    first = model_cache.cached_embedding(train, dataset.task, dataset.checksum, split.digest(), tmp_path)
    saved = list((tmp_path / model_cache.EMBEDDINGS_DIR).glob("*.npz"))
    assert len(saved) == 1
    calls = []
    monkeypatch.setattr(
        "benchmark.scoring.embedding.fit_embedding_cells", lambda *a, **k: calls.append(1) or fitted
    )
    again = model_cache.cached_embedding(train, dataset.task, dataset.checksum, split.digest(), tmp_path)
    assert calls == []  # loaded, not fitted
    for got in (first, again):
        np.testing.assert_array_equal(got.mean, fitted.mean)
        np.testing.assert_array_equal(got.components, fitted.components)
    other = model_cache.cached_embedding(train, dataset.task, "another-checksum", split.digest(), tmp_path)
    assert calls == [1] and other is fitted  # another dataset: its own entry
    saved[0].write_bytes(b"not an npz")
    model_cache.cached_embedding(train, dataset.task, dataset.checksum, split.digest(), tmp_path)
    assert calls == [1, 1]  # an unreadable entry is refitted, not an error


def test_no_cache_dir_fits_every_time(tmp_path):
    dataset = load_synthetic()
    split = make_splits(dataset.adata, dataset.task, "holdout_context", seed=0)[0]
    train = dataset.adata[list(split.train_cells)]
    got = model_cache.cached_embedding(train, dataset.task, dataset.checksum, split.digest(), None)
    np.testing.assert_array_equal(got.components, fit_embedding_cells(train, dataset.task).components)
    assert not any(tmp_path.iterdir())
