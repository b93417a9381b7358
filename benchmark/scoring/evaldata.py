"""The cells one prediction is scored on (`EvalData`), the values derived from them once and cached, and the
seeded subsample of cells the cell-level scores use. The scores' definitions are in `benchmark.scoring.metrics`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.spatial.distance import cdist

from benchmark.core.task import dense
from benchmark.scoring.ranksum import ControlRanks, SampleRanks, bh_qvalues

DEG_K = 100
"""Number of top true-Δ genes used by the `*_deg100` metrics and top DE genes used by `de_overlap_100`."""
TOP_GENES = DEG_K
"""Genes ranked by |Δ| once per EvalData (the J(K) scores' largest K and the DEG set); a larger K ranks anew."""

MAX_DISTANCE_CELLS = 2000
"""K: most cells per side that the cell-level scores use (a seeded subsample beyond it); memory is O(K²)."""

SUBSAMPLE_SEED = 0
"""Seeds the K-cell subsample together with the number of cells, so it is the same on every call."""


_CONSTANT_RTOL = 1e-12


def subsample_index(n: int, k: int | None = None) -> np.ndarray:
    """Rows used by the cell-level scores: all n when n ≤ K, else K sorted rows seeded by (SUBSAMPLE_SEED, n)."""
    k = MAX_DISTANCE_CELLS if k is None else k
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng([SUBSAMPLE_SEED, n]).choice(n, size=k, replace=False))


def _rows(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """x[index] for a `subsample_index`, without copying x when the index keeps every row."""
    return x if index.size == x.shape[0] else x[index]


def _embed(embed: Callable[[np.ndarray], np.ndarray] | None, x: np.ndarray) -> np.ndarray:
    """Apply the embedding (identity when None) and return dense float64."""
    return x if embed is None else np.asarray(embed(x), dtype=np.float64)


def is_constant(x: np.ndarray) -> bool:
    """Whether a vector has no spread beyond float rounding (so correlations and rankings are undefined)."""
    if x.size == 0:
        return True
    scale = max(1.0, float(np.max(np.abs(x))))
    return float(np.ptp(x)) <= _CONSTANT_RTOL * scale


def top_k_genes(delta: np.ndarray, k: int) -> np.ndarray | None:
    """Indices of the k largest |delta|, ties to the lower index; None when all |delta| are equal.

    The same indices as the first k of a stable argsort of -|delta|, found by a partition to the k-th largest
    value and a stable sort of the genes at or above it only (a screen's 8,000 genes, K = 100: ~10x cheaper)."""
    magnitude = np.abs(delta)
    if is_constant(magnitude):
        return None
    n = magnitude.size
    k = min(k, n)
    if 4 * k >= n or np.isnan(magnitude).any():
        return np.argsort(-magnitude, kind="stable")[:k]
    kth = np.partition(magnitude, n - k)[n - k]  # the k-th largest |delta|
    candidates = np.flatnonzero(magnitude >= kth)  # ascending index: a stable sort keeps ties in index order
    return candidates[np.argsort(-magnitude[candidates], kind="stable")[:k]]


def gene_variance(x: np.ndarray) -> np.ndarray:
    """Per-gene sample variance (ddof=1); zeros for a single cell."""
    if x.shape[0] < 2:
        return np.zeros(x.shape[1])
    return x.var(axis=0, ddof=1)


def median_sq_distance(x: np.ndarray) -> float:
    """Median squared Euclidean distance over distinct pairs of rows (NaN with fewer than 2 rows)."""
    if x.shape[0] < 2:
        return float("nan")
    d2 = cdist(x, x, "sqeuclidean")
    return float(np.median(d2[np.triu_indices(x.shape[0], k=1)]))


def rbf_bandwidth(real: np.ndarray, pred: np.ndarray) -> float:
    """The RBF scale h: median squared real-real distance, else pooled, else 1 (see `benchmark.scoring.metrics`)."""
    pooled = np.vstack([real, pred])
    pooled = pooled[subsample_index(pooled.shape[0])]  # at most K rows: the fallback stays O(K²) too
    for sample in (real, pooled):
        h = median_sq_distance(sample)
        if np.isfinite(h) and h > 0:
            return h
    return 1.0


@dataclass(frozen=True, eq=False)
class EvalData:
    """The cells one prediction is scored on: real control, real perturbed and predicted perturbed cells.

    Arrays are cells x genes, log-normalized, with the same genes in the same order; they are stored as dense
    float64. `others` holds the real Δ of the split's other groups (one row each) for `discrimination`.
    Derived quantities (means, Δs, embeddings, DE tests) are computed once and cached on the instance.
    """

    control: np.ndarray
    real: np.ndarray
    pred: np.ndarray
    embed: Callable[[np.ndarray], np.ndarray] | None = None
    others: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("control", "real", "pred"):
            value = dense(getattr(self, name))
            if value.ndim != 2 or value.shape[0] == 0:
                raise ValueError(
                    f"EvalData.{name} must be a non-empty cells x genes matrix, got {value.shape}"
                )
            object.__setattr__(self, name, value)
        genes = {self.control.shape[1], self.real.shape[1], self.pred.shape[1]}
        if len(genes) != 1:
            raise ValueError(
                f"control, real and pred have different gene counts: "
                f"{self.control.shape[1]}, {self.real.shape[1]}, {self.pred.shape[1]}"
            )
        if self.others is not None:
            others = np.asarray(self.others, dtype=np.float64)
            if others.ndim == 1 and others.size == 0:
                others = others.reshape(0, self.real.shape[1])
            if others.ndim != 2 or others.shape[1] != self.real.shape[1]:
                raise ValueError(
                    f"EvalData.others must be groups x {self.real.shape[1]} genes, got {others.shape}"
                )
            object.__setattr__(self, "others", others)

    _REAL_SIDE = (
        "mean_control",
        "mean_real",
        "delta_true",
        "real_index",
        "control_index",
        "real_z",
        "true_top",
        "deg_index",
        "de_real",
        "var_real",
        "control_ranks",
        "real_ranks",
    )
    """Cached values that depend only on the control cells, the real cells and the embedding."""

    _CONTROL_SIDE = ("mean_control",)
    """Cached values that depend only on the control cells (shared by a target's bootstrap halves)."""

    def sharing_control(self, other: EvalData) -> EvalData:
        """Reuse `other`'s control-only values (same control object), computing them there once: the ceiling's
        halves of one target share its control cells."""
        if other.control is not self.control:
            raise ValueError("sharing_control needs the same control object")
        for name in self._CONTROL_SIDE:
            self.__dict__[name] = getattr(other, name)  # computed once on `other` if not yet
        return self

    def sharing_real(self, other: EvalData) -> EvalData:
        """Reuse `other`'s cached real-side values (same control, real and embed objects): scoring several
        predictions of one target computes the real cells' DE test, embedding and variances once."""
        if other.control is not self.control or other.real is not self.real or other.embed is not self.embed:
            raise ValueError("sharing_real needs the same control, real and embed objects")
        for name in self._REAL_SIDE:
            if name in other.__dict__:
                self.__dict__[name] = other.__dict__[name]
        return self

    @cached_property
    def var_real(self) -> np.ndarray:
        return gene_variance(self.real)

    @cached_property
    def var_pred(self) -> np.ndarray:
        return gene_variance(self.pred)

    @cached_property
    def mean_control(self) -> np.ndarray:
        return self.control.mean(axis=0)

    @cached_property
    def mean_real(self) -> np.ndarray:
        return self.real.mean(axis=0)

    @cached_property
    def mean_pred(self) -> np.ndarray:
        return self.pred.mean(axis=0)

    @cached_property
    def delta_true(self) -> np.ndarray:
        return self.mean_real - self.mean_control

    @cached_property
    def delta_pred(self) -> np.ndarray:
        return self.mean_pred - self.mean_control

    @cached_property
    def real_index(self) -> np.ndarray:
        """Rows of `real` used by the cell-level scores (all of them up to MAX_DISTANCE_CELLS)."""
        return subsample_index(self.real.shape[0])

    @cached_property
    def pred_index(self) -> np.ndarray:
        """Rows of `pred` used by the cell-level scores (all of them up to MAX_DISTANCE_CELLS)."""
        return subsample_index(self.pred.shape[0])

    @cached_property
    def control_index(self) -> np.ndarray:
        """Rows of `control` used by the DE tests (all of them up to MAX_DISTANCE_CELLS)."""
        return subsample_index(self.control.shape[0])

    @cached_property
    def real_z(self) -> np.ndarray:
        """Subsampled real perturbed cells in the embedding space (raw genes when there is no embedding)."""
        return _embed(self.embed, self.real[self.real_index])

    @cached_property
    def pred_z(self) -> np.ndarray:
        """Subsampled predicted cells in the embedding space (raw genes when there is no embedding)."""
        return _embed(self.embed, self.pred[self.pred_index])

    @cached_property
    def bandwidth(self) -> float:
        """The RBF scale h of `mmd_rbf` (see `benchmark.scoring.metrics`)."""
        return rbf_bandwidth(self.real_z, self.pred_z)

    @cached_property
    def true_top(self) -> np.ndarray | None:
        """The TOP_GENES genes of largest |Δ_true|, descending, ties to the lower index; None when every |Δ_true|
        is equal."""
        return top_k_genes(self.delta_true, TOP_GENES)

    @cached_property
    def pred_top(self) -> np.ndarray | None:
        """The TOP_GENES genes of largest |Δ_pred|, descending, ties to the lower index; None when every |Δ_pred|
        is equal."""
        return top_k_genes(self.delta_pred, TOP_GENES)

    @cached_property
    def deg_index(self) -> np.ndarray | None:
        """Indices of the top-100 genes by |Δ_true| (all genes if fewer); None when the ranking is undefined."""
        return None if self.true_top is None else self.true_top[:DEG_K]

    @cached_property
    def control_ranks(self) -> ControlRanks:
        """The (subsampled) control cells sorted per gene once, for the rank-sum tests of real and predictions."""
        return ControlRanks(_rows(self.control, self.control_index))

    @cached_property
    def real_ranks(self) -> SampleRanks:
        """The (subsampled) real cells sorted per gene and placed in the sorted control (DE test and ceiling)."""
        return self.control_ranks.rank(_rows(self.real, self.real_index))

    @cached_property
    def de_real(self) -> np.ndarray:
        """BH-adjusted p-values of the rank-sum test real vs control, per gene."""
        real = _rows(self.real, self.real_index)
        return bh_qvalues(self.control_ranks.pvalues(real, self.real_ranks))

    @cached_property
    def de_pred(self) -> np.ndarray:
        """BH-adjusted p-values of the rank-sum test pred vs control, per gene."""
        return bh_qvalues(self.control_ranks.pvalues(_rows(self.pred, self.pred_index)))
