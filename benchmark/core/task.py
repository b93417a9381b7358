"""The task object: which obs keys and labels define perturbation, control and context."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import PertbenchError

ExpressionKind = Literal["lognorm", "counts"]

LOGNORM_LAYER = "lognorm"
"""Layer holding log1p(counts / library size * TARGET_SUM) when X holds counts."""

TARGET_SUM = 1e4
"""Size-normalization target used to turn counts into log-normalized values (scanpy's default)."""

BATCH_CELLS = 10_000
"""Most cells whose log-normalized values `lognorm_batches` holds at once (whole-dataset and training-set sums
and the PCA scatter run batch by batch). A set of at most this many cells is one batch, computed exactly as it
was before batching, so results on the committed datasets (all smaller) do not move."""


@dataclass(frozen=True)
class Task:
    """Names the keys and labels of a dataset; predictors read obs only through it.

    `expression` says what X holds: log-normalized values, or raw counts (then the harness log-normalizes the
    cells it reads, a group or batch at a time, and scores predictions, always log-normalized, on that scale).
    """

    perturbation_key: str
    control_label: str
    context_key: str | None = None
    expression: ExpressionKind = "lognorm"
    combo_separator: str = "+"

    def perturbations(self, adata: AnnData) -> np.ndarray:
        """The perturbation label of every cell, as strings."""
        return adata.obs[self.perturbation_key].astype(str).to_numpy()

    def contexts(self, adata: AnnData) -> np.ndarray:
        """The context label of every cell (a single 'all' when the task has no context key)."""
        if self.context_key is None:
            return np.full(adata.n_obs, "all", dtype=object)
        return adata.obs[self.context_key].astype(str).to_numpy()

    def is_control(self, adata: AnnData) -> np.ndarray:
        """Boolean mask of control cells."""
        return self.perturbations(adata) == self.control_label

    def genes_of(self, perturbation: str) -> list[str]:
        """The single perturbations a label is made of ('A+B' -> ['A', 'B']; control -> [])."""
        if perturbation == self.control_label:
            return []
        return [g for g in perturbation.split(self.combo_separator) if g]

    def lognorm(self, adata: AnnData):
        """Log-normalized expression of `adata`: X itself, or for count data the lognorm layer (computed from X
        when absent). Never writes into `adata`, which may be a view or the caller's object."""
        if self.expression == "lognorm":
            return adata.X
        if LOGNORM_LAYER in adata.layers:
            return adata.layers[LOGNORM_LAYER]
        return lognormalize(adata.X)


def lognorm_batches(
    adata: AnnData, task: Task, batch_cells: int | None = None
) -> Iterator[tuple[slice, object]]:
    """The log-normalized rows of `adata` (in memory, a view, or backed on disk) as (rows, matrix) batches of at
    most `batch_cells` (default BATCH_CELLS) cells, so no second full matrix is ever held; one batch is
    `task.lognorm(adata)` itself."""
    n, batch_cells = adata.n_obs, batch_cells or BATCH_CELLS
    if n <= batch_cells and not (adata.isbacked and not adata.is_view):
        yield slice(0, n), task.lognorm(adata)
        return
    base, rows = _indexable(adata)
    for start in range(0, n, batch_cells):
        stop = min(start + batch_cells, n)
        yield slice(start, stop), task.lognorm(_rows_of(base, rows[start:stop]))


def _rows_of(base: AnnData, positions: np.ndarray) -> AnnData:
    """`base[positions]`. From a backed file, increasing positions that span at most twice their number (a batch
    of the whole dataset or of a split's training cells) are read as one contiguous slice and picked in memory:
    anndata reads an index array from disk a row at a time (110k cells: 720k h5py reads, half a pass's time)."""
    if (
        base.isbacked
        and len(positions) > 1
        and positions[-1] - positions[0] < 2 * len(positions)
        and bool(np.all(np.diff(positions) > 0))
    ):
        lo = int(positions[0])
        block = base[lo : int(positions[-1]) + 1].to_memory()
        return block[positions - lo]
    return base[positions]


def _indexable(adata: AnnData) -> tuple[AnnData, np.ndarray]:
    """An AnnData that can be indexed into once more, and the positions of `adata`'s rows in it (anndata cannot
    take a view of a view of a backed file, so a backed view is re-indexed from its file-backed parent)."""
    if adata.isbacked and adata.is_view:
        parent = adata._adata_ref  # noqa: SLF001 - anndata keeps no public handle on a view's parent
        return parent, np.arange(parent.n_obs)[adata._oidx]  # noqa: SLF001
    return adata, np.arange(adata.n_obs)


def take(adata: AnnData, positions: np.ndarray) -> AnnData:
    """The cells at `positions` as an in-memory AnnData (read from disk when `adata` is backed)."""
    base, rows = _indexable(adata)
    view = base[rows[positions]]
    return view.to_memory() if view.isbacked else view.copy()


class Positions:
    """Row positions of cell ids in a dataset, by `obs_names.get_indexer` (no dict of every id); a tuple of ids
    that several targets share (a context's controls) is looked up once."""

    def __init__(self, obs_names: pd.Index) -> None:
        self.obs_names = pd.Index(obs_names)
        self._memo: dict[int, tuple[Sequence[str], np.ndarray]] = {}

    def __getitem__(self, cell: str) -> int:
        return int(self.of((cell,))[0])

    def of(self, cells: Sequence[str]) -> np.ndarray:
        """Positions of `cells`, in order; an id that is not in the dataset is an error."""
        hit = self._memo.get(id(cells))
        if hit is not None and hit[0] is cells:
            return hit[1]
        positions = self.obs_names.get_indexer(pd.Index(list(cells), dtype=object))
        if (positions < 0).any():
            missing = [cells[i] for i in np.flatnonzero(positions < 0)[:3]]
            raise PertbenchError(f"cell id(s) {', '.join(map(repr, missing))} are not in the dataset")
        if len(cells) > 1000:  # worth keeping: a shared control set, or a split's training cells
            if len(self._memo) >= 16:
                self._memo.pop(next(iter(self._memo)))
            self._memo[id(cells)] = (cells, positions)
        return positions


def lognormalize(counts, target_sum: float = TARGET_SUM):
    """log1p(counts / library size * target_sum), row-wise; keeps sparse input sparse."""
    if sp.issparse(counts):
        counts = sp.csr_matrix(counts, dtype=np.float32)
        lib = np.asarray(counts.sum(axis=1)).ravel()
        scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
        out = sp.diags(scale.astype(np.float32)) @ counts
        out = sp.csr_matrix(out)
        out.data = np.log1p(out.data)
        return out
    counts = np.asarray(counts, dtype=np.float32)
    lib = counts.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
    return np.log1p(counts * scale)


def dense(x) -> np.ndarray:
    """A dense float64 copy of a (small) matrix; use on group subsets, never on a whole dataset."""
    if sp.issparse(x):
        x = x.toarray()
    return np.asarray(x, dtype=np.float64)


def mean_profile(x) -> np.ndarray:
    """Per-gene mean of a cells x genes matrix, sparse or dense, as float64."""
    return np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
