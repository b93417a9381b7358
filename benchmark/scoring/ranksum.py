"""Per-gene two-sided Wilcoxon rank-sum (Mann–Whitney U) tests of samples against one sorted control.

The per-gene work runs in compiled kernels (numba, `nogil`), so the runner's scoring threads test several targets
at once. The control is sorted once per target; zeros, most of the values of sparse expression data, are one tie
block placed in O(1). A sample's other values are bucket-sorted per gene and merged into the sorted control (a
galloping search per distinct value), so a test costs about one pass over the sample's nonzero values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
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

    A sample's U = Σ_i #(c < x_i) + ½ #(c = x_i), found by placing each distinct sample value in the sorted
    control, and its tie term Σ(t³ − t) over the pooled values is the control's own plus, for each distinct
    sample value, the change from adding its copies: U and the tie term are sums of half-integers, so they (and
    the p-values) equal those of ranking the pooled sample exactly.
    """

    def __init__(self, c: np.ndarray) -> None:
        self.c = c
        # sorted: genes x control cells; the zeros of gene g are sorted[g, zero_lo[g]:zero_hi[g]].
        self.sorted, self.zero_lo, self.zero_hi, self.ties = _sort_control(_cells_by_genes(c))
        self.varying = self.sorted[:, -1] > self.sorted[:, 0]

    def rank(self, x: np.ndarray) -> SampleRanks:
        """The sample x (cells x genes) sorted per gene and placed in the sorted control, for every gene."""
        order, xs, below, upto = _rank_sample(_cells_by_genes(x), self.sorted, self.zero_lo, self.zero_hi)
        return SampleRanks(order, xs, below, upto)

    def pvalues(self, x: np.ndarray, ranked: SampleRanks | None = None) -> np.ndarray:
        """Two-sided p-values of the sample x (cells x genes) against the control, per gene (`ranked`: x's
        `rank`, when already computed)."""
        if x.shape[1] != self.sorted.shape[0]:
            raise ValueError(f"the sample has {x.shape[1]} genes, the control {self.sorted.shape[0]}")
        if ranked is not None:
            u1, ties, varying = _ranked_stats(ranked.xs, ranked.below, ranked.upto, self.sorted, self.ties)
        else:
            u1, ties, varying = _sample_stats(
                _cells_by_genes(x), self.sorted, self.zero_lo, self.zero_hi, self.ties
            )
        p = np.ones(x.shape[1])
        if varying.any():
            p[varying] = mwu_pvalues(u1[varying], x.shape[0], self.c.shape[0], ties[varying])
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


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values of each row of p (the last axis), the same numbers as
    scipy.stats.false_discovery_control(p, axis=-1) without its input checks: p-values from `mwu_pvalues` are
    in [0, 1] already, and the DE tests of a target and its ceiling's halves correct thousands of genes each."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    if m <= 1:
        return p.copy()
    order = np.argsort(p, axis=-1)
    q = np.take_along_axis(p, order, axis=-1) * (m / np.arange(1, m + 1, dtype=np.float64))
    np.minimum.accumulate(q[..., ::-1], out=q[..., ::-1], axis=-1)
    out = np.empty_like(q)
    np.put_along_axis(out, order, q, axis=-1)
    return np.clip(out, 0.0, 1.0)


def _cells_by_genes(x: np.ndarray) -> np.ndarray:
    """x as the kernels read it: a C-ordered float64 cells x genes matrix (no copy when it already is one)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"rank-sum tests need a non-empty cells x genes matrix, got shape {x.shape}")
    return x


# Compiled kernels. Each reads cells x genes row by row (the memory order) and works gene by gene from there.


@njit(nogil=True, cache=True)
def _values_by_gene(x, pivot):
    """Each column of x split into its zeros, its copies of pivot[g] and the rest, gene after gene:
    (starts, counts, zeros, values); gene g's other values are values[starts[g]:starts[g] + counts[g]], in cell
    order. Each gene has one spare slot after them, so both passes run without a branch on the value (zeros come
    in no predictable order)."""
    m, g = x.shape
    counts = np.zeros(g, dtype=np.int64)
    zeros = np.zeros(g, dtype=np.int64)
    for i in range(m):
        for j in range(g):
            v = x[i, j]
            zeros[j] += v == 0.0
            counts[j] += (v != 0.0) & (v != pivot[j])
    starts = np.empty(g, dtype=np.int64)
    total = 0
    for j in range(g):
        starts[j] = total
        total += counts[j] + 1
    values = np.empty(total)
    fill = starts.copy()
    for i in range(m):
        for j in range(g):
            v = x[i, j]
            values[fill[j]] = (
                v  # a zero or pivot lands in the spare slot and is overwritten by the next value
            )
            fill[j] += (v != 0.0) & (v != pivot[j])
    return starts, counts, zeros, values


@njit(nogil=True, cache=True)
def _insertion_sort(a, lo, hi, budget):
    """Sort a[lo:hi] in place by insertion; False (a[lo:hi] then only permuted) once it moves more than
    `budget` values, so that a long unsorted run goes to a comparison sort instead."""
    moves = 0
    for i in range(lo + 1, hi):
        v = a[i]
        j = i - 1
        while j >= lo and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        moves += i - 1 - j
        a[j + 1] = v
        if moves > budget:
            return False
    return True


@njit(nogil=True, cache=True)
def _sort_values(a, buffer, bucket):
    """a's values sorted, in buffer[:a.size] (finite values; buffer and the int64 workspace `bucket` longer than
    a): a bucket sort by value, linear in a's length for spread values, finished by one insertion pass, or by
    np.sort when the values come clustered and unordered.

    The bucket of v, floor((v − min) · n / (max − min)), never decreases as v grows, so the buckets come in
    order whatever the rounding and the insertion pass only reorders values within one."""
    n = a.size
    out = buffer[:n]
    if n <= 32:
        out[:] = a
        if not _insertion_sort(out, 0, n, 4 * n):
            out[:] = np.sort(a)
        return out
    lo, hi, finite = a[0], a[0], True
    for v in a:
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
        elif v != v:
            finite = False
    if hi == lo and finite:
        out[:] = a
        return out
    scale = n / (hi - lo)
    if not (finite and np.isfinite(hi - lo) and np.isfinite(scale)):
        out[:] = np.sort(a)  # NaN or infinities: np.sort's order
        return out
    fill = bucket[: n + 1]
    fill[:] = 0
    for v in a:
        fill[min(int((v - lo) * scale), n - 1) + 1] += 1
    for b in range(n):
        fill[b + 1] += fill[b]
    for v in a:
        b = min(int((v - lo) * scale), n - 1)
        out[fill[b]] = v
        fill[b] += 1
    if not _insertion_sort(out, 0, n, 8 * n):
        out[:] = np.sort(a)
    return out


@njit(nogil=True, cache=True)
def _first_above(row, lo, hi, v, strict):
    """The first index in row[lo:hi] (sorted) holding a value > v (strict) or >= v (not strict), else hi."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if row[mid] < v or (strict and row[mid] == v):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def _gallop(row, lo, hi, v, strict):
    """`_first_above` searched from lo outwards in doubling steps: O(log distance), so a merge of two sorted
    sequences by it costs about the shorter one's length times a logarithm."""
    step = 1
    while lo + step < hi and (row[lo + step - 1] < v or (strict and row[lo + step - 1] == v)):
        lo += step
        step *= 2
    return _first_above(row, lo, min(lo + step, hi), v, strict)


@njit(nogil=True, cache=True)
def _place(row, zero_lo, zero_hi, v):
    """#control below v and #control at or below v, in one gene's sorted control row."""
    if v == 0.0:
        return zero_lo, zero_hi
    lo, hi = (0, zero_lo) if v < 0.0 else (zero_hi, row.size)
    below = _first_above(row, lo, hi, v, False)
    return below, _first_above(row, below, hi, v, True)


@njit(nogil=True, cache=True)
def _tie_change(copies, in_control):
    """How much adding `copies` of a value the control holds `in_control` times adds to Σ(t³ − t)."""
    t = copies + in_control
    return (t**3 - t) - (in_control**3 - in_control)


@njit(nogil=True, cache=True)
def _sort_control(c):
    """Per gene, the sorted control values, where its zeros start and end, and its tie term Σ(t³ − t)."""
    k, g = c.shape
    starts, counts, _, values = _values_by_gene(c, np.zeros(g))
    out = np.empty((g, k))
    zero_lo = np.empty(g, dtype=np.int64)
    zero_hi = np.empty(g, dtype=np.int64)
    ties = np.zeros(g)
    buffer, bucket = np.empty(k), np.empty(k + 1, dtype=np.int64)
    for j in range(g):
        seg = _sort_values(values[starts[j] : starts[j] + counts[j]], buffer, bucket)
        negative = _first_above(seg, 0, seg.size, 0.0, False)
        zeros = k - seg.size
        row = out[j]
        row[:negative] = seg[:negative]
        row[negative : negative + zeros] = 0.0
        row[negative + zeros :] = seg[negative:]
        zero_lo[j], zero_hi[j] = negative, negative + zeros
        total, start = 0.0, 0
        for r in range(1, k + 1):
            if r == k or row[r] != row[start]:
                t = float(r - start)
                total += t**3 - t
                start = r
        ties[j] = total
    return out, zero_lo, zero_hi, ties


@njit(nogil=True, cache=True)
def _sample_stats(x, sorted_c, zero_lo, zero_hi, ctrl_ties):
    """Per gene, the sample's U, the pooled tie term and whether the pooled values differ at all.

    The zeros and the copies of the first cell's value are two tie blocks, each placed in the control at once:
    in a shifted copy of a sparse control (the mean oracle, shift predictions) most cells of a gene hold one
    nonzero value, which the first cell usually holds too."""
    m, g = x.shape
    k = sorted_c.shape[1]
    pivot = x[0].copy()
    starts, counts, zeros, values = _values_by_gene(x, pivot)
    u1 = np.zeros(g)
    ties = np.empty(g)
    varying = np.ones(g, dtype=np.bool_)
    buffer, bucket = np.empty(m), np.empty(m + 1, dtype=np.int64)
    for j in range(g):
        seg = _sort_values(values[starts[j] : starts[j] + counts[j]], buffer, bucket)
        row = sorted_c[j]
        u, extra = 0.0, 0.0
        if zeros[j] > 0:
            below, upto = zero_lo[j], zero_hi[j]
            u += zeros[j] * (below + 0.5 * (upto - below))
            extra += _tie_change(float(zeros[j]), float(upto - below))
        copies_of_pivot = 0 if pivot[j] == 0.0 else m - zeros[j] - seg.size
        if copies_of_pivot > 0:
            below, upto = _place(row, zero_lo[j], zero_hi[j], pivot[j])
            u += copies_of_pivot * (below + 0.5 * (upto - below))
            extra += _tie_change(float(copies_of_pivot), float(upto - below))
        start, at = 0, 0  # the other values in ascending order, merged with the sorted control
        for r in range(1, seg.size + 1):
            if r == seg.size or seg[r] != seg[start]:
                v = seg[start]
                if v > 0.0 and at < zero_hi[j]:
                    at = zero_hi[j]
                below = _gallop(row, at, k, v, False)
                upto = at = _gallop(row, below, k, v, True)
                copies = float(r - start)
                u += copies * (below + 0.5 * (upto - below))
                extra += _tie_change(copies, float(upto - below))
                start = r
        u1[j] = u
        ties[j] = ctrl_ties[j] + extra
        if row[0] == row[k - 1] and (zeros[j] == m or copies_of_pivot == m):  # one value in each sample
            varying[j] = pivot[j] != row[0]
    return u1, ties, varying


@njit(nogil=True, cache=True)
def _rank_sample(x, sorted_c, zero_lo, zero_hi):
    """Per gene, the sample's stable sort order, its sorted values, and #control below / at or below each."""
    m, g = x.shape
    order = np.empty((g, m), dtype=np.int64)
    xs = np.empty((g, m))
    below = np.empty((g, m))
    upto = np.empty((g, m))
    column = np.empty(m)
    for j in range(g):
        for i in range(m):
            column[i] = x[i, j]
        o = np.argsort(column, kind="mergesort")
        row = sorted_c[j]
        b, e = 0, 0
        for r in range(m):
            v = column[o[r]]
            if r == 0 or v != xs[j, r - 1]:
                b, e = _place(row, zero_lo[j], zero_hi[j], v)
            order[j, r] = o[r]
            xs[j, r] = v
            below[j, r] = b
            upto[j, r] = e
    return order, xs, below, upto


@njit(nogil=True, cache=True)
def _ranked_stats(xs, below, upto, sorted_c, ctrl_ties):
    """`_sample_stats` from a sample already sorted and placed in the control (`ControlRanks.rank`)."""
    g, m = xs.shape
    k = sorted_c.shape[1]
    u1 = np.zeros(g)
    ties = np.empty(g)
    varying = np.ones(g, dtype=np.bool_)
    for j in range(g):
        u, extra, start = 0.0, 0.0, 0
        for r in range(m):
            u += below[j, r] + 0.5 * (upto[j, r] - below[j, r])
        for r in range(1, m + 1):
            if r == m or xs[j, r] != xs[j, start]:
                extra += _tie_change(float(r - start), upto[j, start] - below[j, start])
                start = r
        u1[j] = u
        ties[j] = ctrl_ties[j] + extra
        c0, c1 = sorted_c[j, 0], sorted_c[j, k - 1]
        varying[j] = not (c0 == c1 and xs[j, 0] == xs[j, m - 1] and xs[j, 0] == c0)
    return u1, ties, varying
