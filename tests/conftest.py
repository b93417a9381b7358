"""Shared fixtures: tiny hand-made datasets, a small synthetic one, and the real-data folder (or a skip)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.task import Task
from benchmark.data.synthetic import make_synthetic

REAL_FILES = (
    "kang2018_pbmc_ifnb.h5ad",
    "kang2018_pbmc_ifnb_counts.h5ad",
    "perturbench_devel_norman19_mcfaline23.h5ad",
)


def make_tiny(
    expression: str = "lognorm",
    sparse: bool = True,
    contexts: tuple[str, ...] = ("A", "B"),
    perturbations: tuple[str, ...] = ("control", "p1", "p2"),
    cells: int = 4,
    genes: int = 5,
    seed: int = 0,
) -> AnnData:
    """A tiny valid dataset: `cells` cells per (context, perturbation); obs condition / cell_type."""
    rng = np.random.default_rng(seed)
    groups = [(c, p) for c in contexts for p in perturbations for _ in range(cells)]
    counts = rng.poisson(3.0, size=(len(groups), genes)).astype(np.float32)
    x = counts if expression == "counts" else np.log1p(counts).astype(np.float32)
    obs = pd.DataFrame(
        {"condition": [p for _, p in groups], "cell_type": [c for c, _ in groups]},
        index=[f"cell{i}" for i in range(len(groups))],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(genes)])
    return AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)


@pytest.fixture(name="make_tiny")
def make_tiny_fixture():
    """The make_tiny factory, for tests that need a variant (dense, counts, other labels)."""
    return make_tiny


@pytest.fixture
def tiny() -> AnnData:
    """A tiny log-normalized sparse dataset: contexts A, B x {control, p1, p2} x 4 cells x 5 genes."""
    return make_tiny()


@pytest.fixture
def tiny_counts() -> AnnData:
    """The tiny dataset with raw integer counts in X."""
    return make_tiny(expression="counts")


@pytest.fixture
def tiny_task() -> Task:
    """The task of the tiny datasets (log-normalized)."""
    return Task("condition", "control", "cell_type", expression="lognorm")


@pytest.fixture(scope="session")
def _small_synthetic() -> AnnData:
    return make_synthetic(n_genes=60, n_contexts=3, n_perturbations=3, cells_per_group=40, seed=1, n_combos=2)


@pytest.fixture
def small_synthetic(_small_synthetic: AnnData) -> AnnData:
    """A small synthetic count dataset (3 contexts, P0..P2, combos P0+P1 and P0+P2, 40 cells per group); a copy."""
    return _small_synthetic.copy()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real-data folder ($PERTBENCH_DATA_DIR, else ../shared/data next to the repo); skip if absent."""
    env = os.environ.get("PERTBENCH_DATA_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    missing = [f for f in REAL_FILES if not (folder / f).is_file()]
    if missing:
        pytest.skip(f"real data not available in {folder} (missing {', '.join(missing)})")
    return folder
