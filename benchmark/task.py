"""The task object: which obs keys and labels define perturbation, control and context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

ExpressionKind = Literal["lognorm", "counts"]

LOGNORM_LAYER = "lognorm"
"""Layer holding log1p(counts / library size * TARGET_SUM) when X holds counts."""

TARGET_SUM = 1e4
"""Size-normalization target used to turn counts into log-normalized values (scanpy's default)."""


@dataclass(frozen=True)
class Task:
    """Names the keys and labels of a dataset; predictors read obs only through it.

    `expression` says what X holds: log-normalized values, or raw counts (then the harness adds
    `layers["lognorm"]` and scores predictions, which are always log-normalized, on that scale).
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
