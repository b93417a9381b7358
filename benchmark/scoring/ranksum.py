"""Per-gene two-sided Wilcoxon rank-sum (Mann–Whitney U) tests of samples against one sorted control."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr


def rank_sum_pvalues(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per gene, the two-sided Wilcoxon rank-sum (Mann–Whitney U) p-value of x vs c.

    Normal approximation with tie and continuity correction, exactly as scipy.stats.mannwhitneyu(method=
    'asymptotic') and pdex; vectorized over genes. A gene with one value in both samples has p = 1.
    """
    return ControlRanks(c).pvalues(x)


class ControlRanks:
    """The control side of per-gene rank-sum tests, sorted once so that several samples (the real cells and each
    prediction of a target) are tested against it without sorting the control again.

    A sample's U = Σ_i #(c < x_i) + ½ #(c = x_i), found by binary search of its sorted values in the sorted
    control, and its tie term Σ(t³ − t) over the pooled values is the control's own plus, for each distinct
    sample value, the change from adding its copies: U and the tie term are sums of half-integers, so they (and
    the p-values) equal those of ranking the pooled sample exactly.
    """

    def __init__(self, c: np.ndarray) -> None:
        self.c = c
        self.sorted = np.ascontiguousarray(np.sort(c.T, axis=1))  # genes x control cells
        self.ties = _run_ties(self.sorted)
        self.varying = np.ptp(c, axis=0) > 0

    def counts(self, xs: np.ndarray, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of `xs` (the sorted sample values of gene genes[row]), #control < value and #control <= value."""
        cs = self.sorted
        below, upto = np.empty(xs.shape), np.empty(xs.shape)
        for row, g in enumerate(genes.tolist()):
            sorted_c, values = cs[g], xs[row]
            below[row] = sorted_c.searchsorted(values, side="left")
            upto[row] = sorted_c.searchsorted(values, side="right")
        return below, upto

    def rank(self, x: np.ndarray) -> SampleRanks:
        """The sample x (cells x genes) sorted per gene and placed in the sorted control, for every gene."""
        order = np.argsort(x.T, axis=1, kind="stable")  # genes x sample cells
        xs = np.take_along_axis(x.T, order, axis=1)
        below, upto = self.counts(xs, np.arange(x.shape[1]))
        return SampleRanks(order, xs, below, upto)

    def pvalues(self, x: np.ndarray, ranked: SampleRanks | None = None) -> np.ndarray:
        """Two-sided p-values of the sample x (cells x genes) against the control, per gene (`ranked`: x's
        `rank`, when already computed)."""
        c = self.c
        m, k = x.shape[0], c.shape[0]
        p = np.ones(x.shape[1])
        varying = (np.ptp(x, axis=0) > 0) | self.varying | (x[0] != c[0])
        if not varying.any():
            return p
        genes = np.flatnonzero(varying)
        every = genes.size == x.shape[1]
        if ranked is not None:
            xs, below, upto = (ranked.xs, ranked.below, ranked.upto) if every else ranked.rows(genes)
        else:
            xs = np.sort((x if every else x[:, genes]).T, axis=1)  # genes x sample cells
            below, upto = self.counts(xs, genes)
        u1 = below.sum(axis=1) + 0.5 * (upto - below).sum(axis=1)
        start = np.ones(xs.shape, dtype=bool)  # first copy of each distinct sample value, per gene
        start[:, 1:] = xs[:, 1:] != xs[:, :-1]
        rows, cols = np.nonzero(start)
        ends = np.r_[cols[1:], 0]
        ends[np.r_[rows[1:] != rows[:-1], True]] = xs.shape[1]
        in_x = (ends - cols).astype(np.float64)  # copies of each distinct sample value
        in_c = (upto - below)[rows, cols]  # control cells equal to it
        t = in_x + in_c
        extra = np.bincount(rows, weights=(t**3 - t) - (in_c**3 - in_c), minlength=genes.size)
        p[genes] = mwu_pvalues(u1, m, k, self.ties[genes] + extra)
        return p


@dataclass(frozen=True)
class SampleRanks:
    """A sample sorted per gene (`order`, `xs`: genes x cells) and, per sorted value, #control below and at or
    below it: what the rank-sum test of the sample, and the ceiling's tests of its bootstrap halves, need."""

    order: np.ndarray
    xs: np.ndarray
    below: np.ndarray
    upto: np.ndarray

    def rows(self, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xs, below and upto of these genes only."""
        return self.xs[genes], self.below[genes], self.upto[genes]


def _run_ties(zs: np.ndarray) -> np.ndarray:
    """Σ(t³ − t) over the runs of equal values of each row of a row-sorted matrix."""
    start = np.ones(zs.shape, dtype=bool)
    start[:, 1:] = zs[:, 1:] != zs[:, :-1]
    rows, cols = np.nonzero(start)
    ends = np.r_[cols[1:], 0]
    ends[np.r_[rows[1:] != rows[:-1], True]] = zs.shape[1]
    t = (ends - cols).astype(np.float64)
    return np.bincount(rows, weights=t**3 - t, minlength=zs.shape[0])


def mwu_pvalues(u1: np.ndarray, m: float, k: float, ties: np.ndarray) -> np.ndarray:
    """Two-sided p-values from U of the first sample (m cells vs k) and the tie term Σ(t³ − t) per gene."""
    n = m + k
    mu = m * k / 2.0
    var = m * k / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    u = np.maximum(u1, m * k - u1)
    with np.errstate(divide="ignore", invalid="ignore"):
        zstat = (u - mu - 0.5) / np.sqrt(var)
        p = np.where(var > 0, np.minimum(2.0 * ndtr(-zstat), 1.0), 1.0)
    return np.nan_to_num(p, nan=1.0)
