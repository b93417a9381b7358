"""Shared fixtures for the speed benchmarks: the real Kang data (skipped when the data folder is absent)."""

from __future__ import annotations

import pytest

from benchmark.core.errors import PertbenchError
from benchmark.data.datasets import load_dataset
from benchmark.data.splits import make_splits


@pytest.fixture(scope="session")
def kang():
    try:
        return load_dataset("kang2018")
    except PertbenchError as exc:
        pytest.skip(f"kang2018 not available: {exc}")


@pytest.fixture(scope="session")
def kang_cd4t(kang):
    """The CD4T holdout_context split of kang2018 with its training AnnData."""
    split = next(
        s for s in make_splits(kang.adata, kang.task, "holdout_context") if s.name.startswith("CD4T/")
    )
    train = kang.adata[list(split.train_cells)].copy()
    return kang, split, train
