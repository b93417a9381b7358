"""Fuzzing the loaders: any obs layout, label dtype, sparsity or value ends in a scored run or a one-line
PertbenchError, never in another exception (hypothesis draws the datasets)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data.datasets import load_h5ad, prepare
from benchmark.execution.options import RunOptions
from benchmark.execution.runner import run_benchmark
from benchmark.tracking import store as tracking

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

LABELS = ["ctrl", "stim", "A+B", "", " ", "Ünïcødé-α", "日本", "1", "0", "True", "nan", "a/b", "x" * 80]


@st.composite
def datasets(draw):
    """(adata, task, write_to_file): groups of 8-60 cells, so many inputs reach a scored run (a split needs 10
    held-out cells; a random split holds out a fifth of a group)."""
    n_groups = draw(st.integers(2, 6))
    sizes = draw(st.lists(st.sampled_from([10, 12, 14, 8, 55, 60]), min_size=n_groups, max_size=n_groups))
    n = sum(sizes)
    pert_pool = draw(st.lists(st.sampled_from(LABELS), min_size=2, max_size=4, unique=True))
    ctx_pool = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=3, unique=True))
    kinds = st.sampled_from(["str", "category", "int", "float", "bool", "mixed"])
    group_pert = draw(st.lists(st.integers(0, len(pert_pool) - 1), min_size=n_groups, max_size=n_groups))
    group_ctx = draw(st.lists(st.integers(0, len(ctx_pool) - 1), min_size=n_groups, max_size=n_groups))
    pert_kind, ctx_kind = draw(kinds), draw(kinds)
    pert = np.repeat(group_pert, sizes)
    ctx = np.repeat(group_ctx, sizes)

    def column(kind, codes, pool):
        labels = [pool[c] for c in codes]
        if kind == "category":
            return pd.Categorical(labels)
        if kind == "int":
            return codes.astype("int64")
        if kind == "float":
            out = codes.astype(float)
            if draw(st.booleans()):
                out[draw(st.integers(0, n - 1))] = np.nan
            return out
        if kind == "bool":
            return codes % 2 == 0
        if kind == "mixed":
            return np.array(
                [c if c % 3 == 0 else s for c, s in zip(codes, labels, strict=True)], dtype=object
            )
        return np.array(labels, dtype=object)

    obs = pd.DataFrame(
        {"perturbation": column(pert_kind, pert, pert_pool), "cell_type": column(ctx_kind, ctx, ctx_pool)}
    )
    obs["extra"] = draw(st.sampled_from([0, "x", np.nan]))
    obs.index = [f"c{i}" for i in range(n)] if draw(st.booleans()) else ["dup"] * n  # tidy makes them unique
    # the control label as the user would type it: one of the column's labels, written as a string
    shown = pd.Series(obs["perturbation"]).astype(str)
    control = draw(st.sampled_from(sorted(set(shown)) * 4 + ["absent"]))
    context_key = draw(st.sampled_from(["cell_type"] * 4 + [None, None, "missing_key"]))
    perturbation_key = draw(st.sampled_from(["perturbation"] * 8 + ["missing_key"]))

    expression = draw(st.sampled_from(["lognorm", "counts"]))
    genes = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    counts = rng.poisson(draw(st.sampled_from([0.05, 1.0, 5.0])), size=(n, genes)).astype(np.float64)
    x = counts if expression == "counts" else np.log1p(counts)
    if draw(st.sampled_from([False] * 4 + [True])):  # sometimes the other scale than declared
        x = np.log1p(counts) if expression == "counts" else counts * draw(st.sampled_from([1, 100]))
    special = draw(st.sampled_from([None] * 8 + [np.nan, np.inf, -1.0, 1e30, 31.5, 0.5]))
    if special is not None:
        x[draw(st.integers(0, n - 1)), draw(st.integers(0, genes - 1))] = special
    x = x.astype(draw(st.sampled_from([np.float32, np.float64, np.int32]))) if np.isfinite(x).all() else x
    layout = draw(st.sampled_from(["dense", "csr", "csc"]))
    matrix = {"dense": lambda a: a, "csr": sp.csr_matrix, "csc": sp.csc_matrix}[layout](x)
    var = pd.DataFrame(index=[f"g{j}" for j in range(genes)] if draw(st.booleans()) else ["g"] * genes)
    adata = AnnData(X=matrix, obs=obs, var=var)
    task = Task(perturbation_key, control, context_key, expression=expression)
    return adata, task, draw(st.booleans())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        tracking.use_store(f"sqlite:///{root / 'mlflow.db'}")
        yield root


def _load(adata: AnnData, task: Task, to_file: bool, folder):
    """Through an h5ad file and load_h5ad when anndata can write it, else prepare() in memory."""
    from benchmark.data.datasets import Dataset, _guess_split

    if to_file:
        path = folder / "fuzz.h5ad"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adata.write_h5ad(path)
        except Exception:  # noqa: BLE001 - anndata cannot store every object column; test in memory instead
            to_file = False
        else:
            return load_h5ad(
                path, task.perturbation_key, task.control_label, task.context_key, task.expression
            )
    prepared = prepare(adata.copy(), task)
    return Dataset("fuzz", prepared, task, "none", "memory", _guess_split(prepared, task))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
    derandomize=True,
    database=None,
)
@given(case=datasets())
def test_any_input_is_scored_or_a_one_line_error(store, case):
    adata, task, to_file = case
    options = RunOptions(figures=False, max_splits=1, cache_dir=None)
    try:
        dataset = _load(adata, task, to_file, store)
        result = run_benchmark("mean_shift", dataset, dataset.default_split, options, progress=lambda _: None)
    except PertbenchError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return
    table = result.table()
    assert len(table) >= 1 and set(table["status"]) <= {"ok", "not_applicable"}
