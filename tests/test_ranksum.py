"""The compiled rank-sum kernels against scipy's Mann–Whitney U test and against the plain numpy implementation
they replaced (kept here as the oracle: p-values must not move)."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from scipy.stats import false_discovery_control, mannwhitneyu

from benchmark.scoring import ranksum
from benchmark.scoring.ranksum import ControlRanks, bh_qvalues, mwu_pvalues, rank_sum_pvalues


class _NumpyControlRanks:
    """The numpy implementation the kernels replaced: a Python loop of two searchsorted calls per gene."""

    def __init__(self, c: np.ndarray) -> None:
        self.c = c
        self.sorted = np.ascontiguousarray(np.sort(c.T, axis=1))
        self.ties = _run_ties(self.sorted)
        self.varying = np.ptp(c, axis=0) > 0

    def counts(self, xs, genes):
        below, upto = np.empty(xs.shape), np.empty(xs.shape)
        for row, g in enumerate(genes.tolist()):
            below[row] = self.sorted[g].searchsorted(xs[row], side="left")
            upto[row] = self.sorted[g].searchsorted(xs[row], side="right")
        return below, upto

    def rank(self, x):
        order = np.argsort(x.T, axis=1, kind="stable")
        xs = np.take_along_axis(x.T, order, axis=1)
        below, upto = self.counts(xs, np.arange(x.shape[1]))
        return order, xs, below, upto

    def pvalues(self, x, ranked=None):
        c = self.c
        m, k = x.shape[0], c.shape[0]
        p = np.ones(x.shape[1])
        varying = (np.ptp(x, axis=0) > 0) | self.varying | (x[0] != c[0])
        if not varying.any():
            return p
        genes = np.flatnonzero(varying)
        if ranked is not None:
            xs, below, upto = (a[genes] for a in ranked[1:])
        else:
            xs = np.sort(x[:, genes].T, axis=1)
            below, upto = self.counts(xs, genes)
        u1 = below.sum(axis=1) + 0.5 * (upto - below).sum(axis=1)
        start = np.ones(xs.shape, dtype=bool)
        start[:, 1:] = xs[:, 1:] != xs[:, :-1]
        rows, cols = np.nonzero(start)
        ends = np.r_[cols[1:], 0]
        ends[np.r_[rows[1:] != rows[:-1], True]] = xs.shape[1]
        in_x = (ends - cols).astype(np.float64)
        in_c = (upto - below)[rows, cols]
        t = in_x + in_c
        extra = np.bincount(rows, weights=(t**3 - t) - (in_c**3 - in_c), minlength=genes.size)
        p[genes] = mwu_pvalues(u1, m, k, self.ties[genes] + extra)
        return p


def _run_ties(zs):
    start = np.ones(zs.shape, dtype=bool)
    start[:, 1:] = zs[:, 1:] != zs[:, :-1]
    rows, cols = np.nonzero(start)
    ends = np.r_[cols[1:], 0]
    ends[np.r_[rows[1:] != rows[:-1], True]] = zs.shape[1]
    t = (ends - cols).astype(np.float64)
    return np.bincount(rows, weights=t**3 - t, minlength=zs.shape[0])


def _sparse(rng, cells, genes, zeros=0.85, signed=False):
    """Log-count-like values: mostly zeros, the rest on a coarse grid (many ties); some genes all zero."""
    x = np.round(np.log1p(rng.poisson(rng.gamma(0.8, 2.0, genes), size=(cells, genes))), 1)
    x *= rng.random((cells, genes)) > zeros
    if signed:
        x *= rng.choice([-1.0, 1.0], size=(cells, genes))
    x[:, :2] = 0.0
    return x


def _cases():
    rng = np.random.default_rng(7)
    for cells_c, cells_x, genes, signed in [(40, 25, 60, False), (120, 7, 50, True), (33, 300, 40, False)]:
        c = _sparse(rng, cells_c, genes, signed=signed)
        x = _sparse(rng, cells_x, genes, zeros=0.6, signed=signed)
        x[:, 2] = 0.0  # all zero in the sample only
        c[:, 3], x[:, 3] = 1.5, 1.5  # one nonzero value in both: p = 1
        x[:, 4] = 2.0  # a constant sample against a varying control
        c[:, 5] = 0.0
        x[:, 5] = np.linspace(-1, 1, cells_x) if signed else np.linspace(0, 1, cells_x)  # all distinct
        yield c, x
    c = rng.normal(size=(50, 30))  # continuous: no ties at all
    yield c, rng.normal(0.3, size=(45, 30))
    yield c, np.maximum(c + rng.normal(size=30), 0.0)  # a per-gene monotone transform of the control (oracle)


@pytest.mark.parametrize("case", range(5))
def test_pvalues_match_scipy_mannwhitneyu(case):
    c, x = list(_cases())[case]
    got = rank_sum_pvalues(x, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = mannwhitneyu(x, c, axis=0, method="asymptotic", use_continuity=True).pvalue
    constant = np.ptp(np.vstack([x, c]), axis=0) == 0
    np.testing.assert_array_equal(got[constant], 1.0)
    np.testing.assert_allclose(got[~constant], ref[~constant], rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", range(5))
def test_kernels_give_the_numpy_implementations_results_exactly(case):
    c, x = list(_cases())[case]
    new, old = ControlRanks(c), _NumpyControlRanks(c)
    np.testing.assert_array_equal(new.sorted, old.sorted)
    np.testing.assert_array_equal(new.ties, old.ties)
    np.testing.assert_array_equal(new.varying, old.varying)
    np.testing.assert_array_equal(new.pvalues(x), old.pvalues(x))
    ranked, old_ranked = new.rank(x), old.rank(x)
    for got, expected in zip((ranked.order, ranked.xs, ranked.below, ranked.upto), old_ranked, strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(new.pvalues(x, ranked), old.pvalues(x, old_ranked))


def test_one_sorted_control_serves_several_samples_and_float32_input():
    rng = np.random.default_rng(11)
    c = _sparse(rng, 80, 40)
    ranks, old = ControlRanks(c), _NumpyControlRanks(c)
    for _ in range(3):
        x = _sparse(rng, 20, 40, zeros=0.5).astype(np.float32)
        np.testing.assert_array_equal(ranks.pvalues(x), old.pvalues(x.astype(np.float64)))
    with pytest.raises(ValueError, match="genes"):
        ranks.pvalues(np.zeros((3, 39)))


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).normal(size=500),
        np.random.default_rng(2).exponential(size=1000) ** 6,  # skewed: most values in the first bucket
        np.r_[np.full(300, 0.7), np.random.default_rng(3).random(40)],  # one large tie block (the oracle)
        np.r_[np.linspace(5, 4, 200), 1e300, -1e300],  # reversed, with a range that overflows
        np.round(np.random.default_rng(4).normal(size=900), 2),  # many ties
        np.r_[np.random.default_rng(5).random(50), np.inf, -np.inf, np.nan],
        np.random.default_rng(6).random(20),  # short: insertion sort only
        np.r_[1.0, np.nextafter(1.0, 2.0), 1.0, np.nextafter(1.0, 0.0)].repeat(20),  # neighbouring floats
    ],
)
def test_sort_values_is_numpys_sort(values):
    got = ranksum._sort_values(
        values.copy(), np.empty(values.size), np.empty(values.size + 1, dtype=np.int64)
    )
    np.testing.assert_array_equal(got, np.sort(values))


def test_kernels_release_the_gil():
    rng = np.random.default_rng(0)
    c, x = _sparse(rng, 500, 4000), _sparse(rng, 2000, 4000, zeros=0.3)
    ranks = ControlRanks(c)
    ranks.pvalues(x[:5])  # compiled (or loaded) before timing
    start = time.perf_counter()
    ranks.pvalues(x)
    alone = time.perf_counter() - start
    gaps, done = [], threading.Event()
    worker = threading.Thread(target=lambda: (ranks.pvalues(x), ranks.pvalues(x), done.set()))
    last = time.perf_counter()
    worker.start()
    while (
        not done.is_set()
    ):  # a thread holding the GIL through a kernel would freeze this loop for its length
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    worker.join()
    assert max(gaps) < alone / 2, (max(gaps), alone)


def test_bh_qvalues_are_scipys_false_discovery_control():
    rng = np.random.default_rng(9)
    p = rng.random(3000)
    p[:800], p[800:900], p[900:905] = 1.0, 0.004, 0.0  # ties, ones and zeros, as DE p-values have
    np.testing.assert_array_equal(bh_qvalues(p), false_discovery_control(p))
    rows = np.round(rng.random((7, 400)) ** 3, 3)  # several tests corrected at once, row by row
    np.testing.assert_array_equal(bh_qvalues(rows), false_discovery_control(rows, axis=-1))
    np.testing.assert_array_equal(bh_qvalues(np.array([0.3])), [0.3])


def test_random_shapes_and_values_match_the_numpy_implementation_exactly():
    rng = np.random.default_rng(123)
    grids = [
        lambda n, g: rng.normal(size=(n, g)),
        lambda n, g: np.round(rng.normal(size=(n, g)), 1),
        lambda n, g: rng.choice(
            [0.0, -0.0, 1.0, 2.0, -1.0, 1e-300, 5e-324], size=(n, g)
        ),  # signed zeros, denormals
        lambda n, g: np.round(rng.exponential(size=(n, g)), 1) * (rng.random((n, g)) < 0.2),
    ]
    for _ in range(150):
        k, m, g = (int(v) for v in rng.integers(1, 60, size=3))  # down to one cell on either side
        c, x = grids[rng.integers(4)](k, g), grids[rng.integers(4)](m, g)
        new, old = ControlRanks(c), _NumpyControlRanks(c)
        np.testing.assert_array_equal(new.pvalues(x), old.pvalues(x))
        ranked, old_ranked = new.rank(x), old.rank(x)
        np.testing.assert_array_equal(new.pvalues(x, ranked), old.pvalues(x, old_ranked))
        np.testing.assert_array_equal(ranked.below, old_ranked[2])
