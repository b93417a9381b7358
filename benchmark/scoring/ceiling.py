"""The noise ceiling (how well an ideal predictor can score, given the sampling noise of the real cells) and
scores normalized between a reference baseline and that ceiling.

Rule: each metric declares its own (`Metric.ceiling`, set by `register_metric`); ceiling.py asks it.

* `r`, `r_deg100`, `r2_mean_deg100`, `mse_mean` (`oracle_ceiling`): the expected score of the true perturbed
  mean. Gene g's observed mean carries noise N_g = s²_g / n; across the genes of a set the ideal prediction
  correlates with the observed Δ (or mean) at √(1 − mean N / var_obs) — Spearman–Brown for an n-cell measurement
  against its noise-free form — and its mse_mean is mean N. (Spearman–Brown on bootstrap halves would overstate
  it: two bootstrap halves share the group's own sampling error. On a weak synthetic perturbation √r_AB = 0.79
  while predicting the true mean scores 0.655, as the formula says.)
* `halves` (any metric that declares no rule) and `moments` (top-K, discrimination, var_ratio): size-matched
  bootstrap halves, as cell-eval's `compute_ceiling`. Each repeat draws 2n cells
  with replacement from the n real cells and splits the draw into two n-cell halves; half A is scored as a
  "prediction" of half B against the same control cells, with each metric's own definition; the ceiling is the
  mean over repeats (NaN repeats left out).
* Cell-level U-statistics (`energy_distance`, `energy_distance_shape`, `mmd_rbf`, `crps_deg100`): a bootstrap
  half holds copies of a cell, and a copy paired with itself would bias every within- and cross-half mean.
  Such pairs are left out (they add 0 to a distance sum; the kernel sum drops them), so each term averages
  pairs of distinct cells and the energy and MMD ceilings are ≈ 0. They run on the same ≤ MAX_DISTANCE_CELLS
  subsample, embedding, bandwidth and distance matrix as the scores (computed once, reused by every repeat).
* The DE scores reuse the scores' sort of the control cells per gene (`ControlRanks`) and one sort of the real
  cells (`_DeCeiling`): a half's rank sum and tie term follow from per-cell counts, the same p-values as testing
  the half directly.
* Top-K and DE overlaps, `de_direction`, `discrimination` and `var_ratio` are the half-vs-half values,
  uncorrected: an ideal predictor is noise-free there too, so a good predictor can sit slightly above them.

A normalized score puts a value on the scale 0 = reference baseline, 1 = noise ceiling (see
`normalized_score`). When the ceiling is not better than the reference ("no headroom": the reference already
scores as well as the noise in the real cells allows), the scale is undefined and the normalized score is NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from benchmark.core.task import dense
from benchmark.scoring.metrics import (
    CEILING_CELL_PAIRS,
    CEILING_EXPECTED_MEAN,
    CEILING_HALVES,
    CEILING_MOMENTS,
    CEILING_RANK_SUM,
    MAX_DISTANCE_CELLS,
    METRICS,
    EvalData,
    de_direction,
    de_overlap,
    pair_abs_sums,
    score,
)
from benchmark.scoring.ranksum import bh_qvalues, mwu_pvalues

_FORMULAS = {
    CEILING_EXPECTED_MEAN: ("r", "r_deg100", "r2_mean_deg100", "mse_mean"),
    CEILING_CELL_PAIRS: ("energy_distance", "energy_distance_shape", "mmd_rbf", "crps_deg100"),
    CEILING_RANK_SUM: ("de_overlap_100", "de_direction"),
}
"""The metrics each formula-based rule has a ceiling formula for; a metric declaring such a rule must be one."""


def _by_rule(names: list[str]) -> dict[str, list[str]]:
    """The requested metrics grouped by the ceiling rule each declares (`Metric.ceiling`)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        rule = METRICS[name].ceiling
        if rule in _FORMULAS and name not in _FORMULAS[rule]:
            raise ValueError(
                f"metric {name!r} declares the {rule!r} ceiling rule, which has formulas only for "
                f"{', '.join(_FORMULAS[rule])}; declare {CEILING_HALVES!r} (bootstrap halves of the cells)"
            )
        groups.setdefault(rule, []).append(name)
    return groups


def noise_ceiling(
    data_control: np.ndarray,
    real: np.ndarray,
    embed: Callable[[np.ndarray], np.ndarray] | None,
    n_repeats: int = 20,
    seed: int = 0,
    names: Iterable[str] | None = None,
    others: np.ndarray | None = None,
    shared: EvalData | None = None,
) -> dict[str, float]:
    """Each metric's noise ceiling from `n_repeats` size-matched bootstrap halves of the real cells (module rule).

    With fewer than 2 real cells the ceiling is undefined and every metric is NaN. Repeats where a metric is
    NaN are left out of its mean. `others` (the other groups' real Δ) is passed to every half's EvalData.
    `shared`, an EvalData of the same control and real cells, lends its cached real side (the control's sort
    for the DE tests, the embedded real cells), which gives the same values without computing them again.
    """
    names = list(METRICS) if names is None else list(names)
    control, real = dense(data_control), dense(real)
    n = real.shape[0]
    if n < 2:
        return {name: float("nan") for name in names}
    rng = np.random.default_rng(seed)
    full = EvalData(control=control, real=real, pred=real[:2], embed=embed, others=others)
    if shared is not None:
        full.sharing_real(shared)
    rules = _by_rule(names)
    cell_names, de_names = rules.get(CEILING_CELL_PAIRS, []), rules.get(CEILING_RANK_SUM, [])
    oracle_names = rules.get(CEILING_EXPECTED_MEAN, [])
    moment_names, half_names = rules.get(CEILING_MOMENTS, []), rules.get(CEILING_HALVES, [])
    cells = _CellCeiling(full, cell_names) if cell_names else None
    de = _DeCeiling(full, de_names) if de_names else None
    runs: dict[str, list[float]] = {name: [] for name in names}
    moments = _HalfMoments(full) if moment_names and n > MAX_DISTANCE_CELLS else None
    de_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(n_repeats):
        draws = rng.integers(0, n, size=2 * n)
        copied = None
        if half_names or (moment_names and moments is None):
            copied = EvalData(control=control, real=real[draws[n:]], pred=real[draws[:n]], others=others)
            copied.sharing_control(full)  # the same control cells: their mean once
        if moment_names:
            half = copied if moments is None else moments.half(draws[:n], draws[n:])
            for name, value in score(half, moment_names).items():
                runs[name].append(value)
        if half_names:  # any other metric reads the cells themselves: always a real copy of each half
            for name, value in score(copied, half_names).items():
                runs[name].append(value)
        if cells is not None or de is not None:
            m = full.real_index.size  # the cell-level scores' subsample; draws reused when it is every cell
            a, b = (draws[:n], draws[n:]) if m == n else np.split(rng.integers(0, m, size=2 * m), 2)
            for name, value in ({} if cells is None else cells.score(a, b)).items():
                runs[name].append(value)
            de_pairs.append((a, b))
    for scored in [] if de is None else de.score_many(de_pairs):  # the halves' DE tests in one batch
        for name, value in scored.items():
            runs[name].append(value)
    out = {name: _nanmean(values) for name, values in runs.items() if name not in oracle_names}
    out.update(oracle_ceiling(full, oracle_names))
    return {name: out[name] for name in names}


def oracle_ceiling(
    data: EvalData, names: Iterable[str] = _FORMULAS[CEILING_EXPECTED_MEAN]
) -> dict[str, float]:
    """Expected score of the population mean of the perturbed cells against the n observed ones (module rule).

    The observed mean of gene g carries sampling noise of variance N_g = s²_g / n (s² with ddof=1); across the
    genes of a set, an ideal prediction correlates with the observed Δ (or mean) at √(1 − mean N / var_obs):
    the Spearman–Brown correlation of an n-cell measurement with its infinitely long (noise-free) form.
    """
    n = data.real.shape[0]
    noise = data.real.var(axis=0, ddof=1) / n if n > 1 else np.full(data.real.shape[1], np.nan)
    idx = data.deg_index

    def corr(observed: np.ndarray, genes) -> float:
        if genes is None:
            return float("nan")
        spread = float(np.var(observed[genes]))
        if not spread > 0 or not np.isfinite(noise[genes]).all():
            return float("nan")
        return math.sqrt(min(1.0, max(0.0, 1.0 - float(np.mean(noise[genes])) / spread)))

    values = {
        "r": lambda: corr(data.delta_true, slice(None)),
        "r_deg100": lambda: corr(data.delta_true, idx),
        "r2_mean_deg100": lambda: corr(data.mean_real, idx) ** 2,
        "mse_mean": lambda: float(np.mean(noise)),
    }
    return {name: values[name]() for name in names}


class _HalfMoments:
    """A bootstrap half's per-gene means and variances from its cells' draw counts (two matrix-vector products),
    instead of copying the half: used above MAX_DISTANCE_CELLS real cells, where the copies cost most of the
    ceiling. The half-vs-half scores (top-K, discrimination, var_ratio) need only these moments; they equal the
    copied halves' up to float rounding (every committed dataset's groups are smaller, so copy as before)."""

    def __init__(self, full: EvalData) -> None:
        self.full = full
        self.squares = full.real * full.real

    def _moments(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = draws.size
        counts = np.bincount(draws, minlength=self.full.real.shape[0]).astype(np.float64)
        mean = counts @ self.full.real / n
        var = np.maximum(counts @ self.squares - n * mean * mean, 0.0) / max(n - 1, 1)
        return mean, var

    def half(self, a: np.ndarray, b: np.ndarray) -> EvalData:
        """EvalData of half A as a prediction of half B, its moments seeded (its cell matrices are placeholders)."""
        full = self.full
        data = EvalData(control=full.control, real=full.real, pred=full.real, others=full.others)
        (mean_a, var_a), (mean_b, var_b) = self._moments(a), self._moments(b)
        data.__dict__.update(
            mean_control=full.mean_control, mean_pred=mean_a, var_pred=var_a, mean_real=mean_b, var_real=var_b
        )
        return data


class _CellCeiling:
    """Cell-level U-statistics of bootstrap halves from one pairwise-distance matrix of the real subsample."""

    def __init__(self, full: EvalData, names: list[str]) -> None:
        self.names = names
        self.z = full.real_z
        d2 = np.maximum(cdist(self.z, self.z, "sqeuclidean"), 0.0)
        self.d2, self.d = d2, np.sqrt(d2)
        self.kernel = np.exp(-d2 / full.bandwidth) if "mmd_rbf" in names else None
        idx = full.deg_index
        self.genes = None if idx is None else full.real[np.ix_(full.real_index, idx)]

    def score(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        """Scores of half A as a prediction of half B (indices into the subsample, with repeats)."""
        m = self.z.shape[0]
        ca, cb = np.bincount(a, minlength=m).astype(float), np.bincount(b, minlength=m).astype(float)
        n_a, n_b = ca.sum(), cb.sum()
        pairs_aa, pairs_bb, pairs_ab = n_a**2 - ca @ ca, n_b**2 - cb @ cb, n_a * n_b - ca @ cb
        out: dict[str, float] = {}
        if min(pairs_aa, pairs_bb, pairs_ab) <= 0:  # a half made of copies of one cell
            return {name: float("nan") for name in self.names}
        within_a, within_b = ca @ self.d @ ca / pairs_aa, cb @ self.d @ cb / pairs_bb
        if "energy_distance" in self.names:
            out["energy_distance"] = 2.0 * (ca @ self.d @ cb) / pairs_ab - within_a - within_b
        if "energy_distance_shape" in self.names:
            shift = (ca @ self.z) / n_a - (cb @ self.z) / n_b  # centring moves A against B by −shift
            proj = self.z @ shift
            cross = np.sqrt(np.maximum(self.d2 - 2.0 * (proj[:, None] - proj[None, :]) + shift @ shift, 0.0))
            # The same small-sample rescaling as energy_distance_shape_u: a centred cross difference of cells i
            # and j is e_i − e_j − δ in cell weights (δ = ca/n_a − cb/n_b), of variance factor ‖·‖² against 2.
            delta = ca / n_a - cb / n_b
            factor = 2.0 - 2.0 * (delta[:, None] - delta[None, :]) + delta @ delta
            cross = cross * np.sqrt(2.0 / np.maximum(factor, 1e-12))
            cross_sum = ca @ cross @ cb - np.sum(ca * cb * np.diag(cross))
            out["energy_distance_shape"] = 2.0 * cross_sum / pairs_ab - within_a - within_b
        if "mmd_rbf" in self.names:
            k = self.kernel
            kaa, kbb = (ca @ k @ ca - ca @ ca) / pairs_aa, (cb @ k @ cb - cb @ cb) / pairs_bb
            out["mmd_rbf"] = kaa + kbb - 2.0 * (ca @ k @ cb - ca @ cb) / pairs_ab
        if "crps_deg100" in self.names:
            if self.genes is None:
                out["crps_deg100"] = float("nan")
            else:
                cross = pair_abs_sums(self.genes, ca, cb) / pairs_ab
                spread = pair_abs_sums(self.genes, ca, ca) / pairs_aa
                out["crps_deg100"] = float(np.mean(cross - 0.5 * spread))
        return {name: float(out[name]) for name in self.names}


class _DeCeiling:
    """The DE scores of bootstrap halves, from one sort of the real subsample and the control cells per gene.

    A half's rank-sum U against the control is the sum over its cells (with their bootstrap counts) of
    #control below + ½ #control equal, and its tie term follows from the counts per distinct value, so each
    repeat costs O(cells x genes) instead of a sort: the same p-values as `rank_sum_pvalues` on the half.
    """

    def __init__(self, full: EvalData, names: list[str]) -> None:
        self.names = names
        self.real = full.real[full.real_index]
        self.mean_control = full.mean_control
        ranks, real_ranks = full.control_ranks, full.real_ranks  # shared with the scores' DE tests
        n, self.k = self.real.shape[0], ranks.sorted.shape[1]
        genes = self.real.shape[1]
        order, xs, below, upto = real_ranks.order, real_ranks.xs, real_ranks.below, real_ranks.upto
        start = np.ones(xs.shape, dtype=bool)  # first real cell of each distinct value, per gene
        start[:, 1:] = xs[:, 1:] != xs[:, :-1]
        run = np.cumsum(start.ravel()).reshape(genes, n) - 1  # run id of each distinct (gene, value)
        real_run = np.empty((genes, n), dtype=np.int64)
        np.put_along_axis(real_run, order, run, axis=1)
        real_run = np.ascontiguousarray(real_run.T)  # cells x genes
        s = np.empty((genes, n))
        np.put_along_axis(s, order, below + 0.5 * (upto - below), axis=1)
        self.s = np.ascontiguousarray(s.T)  # cells x genes: #control below + half #control equal
        self.ctrl_ties = ranks.ties
        # Only runs holding a real cell change a half's tie term: their control copies and genes, compactly.
        self.c_touched = (upto - below)[start]
        gene_touched = np.nonzero(start)[0]
        # A half's cells per run: a sparse (runs x cells) 0/1 map, so every half's run sizes are one product.
        runs = self.c_touched.size
        cell_of = np.broadcast_to(np.arange(n)[:, None], (n, genes)).ravel()
        self.run_cells = sp.csr_matrix(
            (np.ones(n * genes), (real_run.ravel(), cell_of)), shape=(runs, n), dtype=np.float64
        )
        self.run_gene = sp.csr_matrix(
            (np.ones(runs), (gene_touched, np.arange(runs))), shape=(genes, runs), dtype=np.float64
        )

    def qvalues(self, counts: np.ndarray) -> np.ndarray:
        """BH q-values of each half (a row of per-cell bootstrap counts) vs the control, all halves at once.

        Counts, run sizes and tie terms are integers (U halves of them), so the batched sums are exact: the same
        p-values as one half at a time, bit for bit."""
        counts = np.atleast_2d(counts)
        m = counts.sum(axis=1, keepdims=True)
        u1 = counts @ self.s
        c = self.c_touched[:, None]
        t = c + self.run_cells @ counts.T  # runs x halves: control copies + the half's cells in each run
        extra = (self.run_gene @ ((t**3 - t) - (c**3 - c))).T  # halves x genes
        return bh_qvalues(mwu_pvalues(u1, m, self.k, self.ctrl_ties + extra))

    def score(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        """de_overlap_100 and de_direction of half A as a prediction of half B."""
        return self.score_many([(a, b)])[0]

    def score_many(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, float]]:
        """`score` of each (half A, half B) pair, their rank-sum tests batched."""
        n = self.real.shape[0]
        counts = np.stack([np.bincount(h, minlength=n).astype(float) for pair in pairs for h in pair])
        q = self.qvalues(counts) if pairs else counts
        out = []
        for i in range(len(pairs)):
            ca, cb, q_pred, q_real = counts[2 * i], counts[2 * i + 1], q[2 * i], q[2 * i + 1]
            d_pred = ca @ self.real / ca.sum() - self.mean_control
            d_true = cb @ self.real / cb.sum() - self.mean_control
            scores = {
                "de_overlap_100": de_overlap(q_real, d_true, q_pred, d_pred),
                "de_direction": de_direction(q_real, d_true, d_pred),
            }
            out.append({name: scores[name] for name in self.names})
        return out


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values, NaN (without a warning) when there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values else float("nan")


def _goodness(x: float, higher_is_better: bool | None) -> float:
    """Map a metric value so that larger is better: x, −x, or −|x| for best-at-0 metrics."""
    if higher_is_better is None:
        return -abs(x)
    return x if higher_is_better else -x


def normalized_score(value: float, baseline: float, ceiling: float, higher_is_better: bool | None) -> float:
    """(value − baseline) / (ceiling − baseline) in the metric's direction: 0 at the baseline, 1 at the ceiling.

    Best-at-0 metrics (higher_is_better None) are compared by absolute value. NaN when any input is NaN, or
    when the ceiling is not strictly better than the baseline ("no headroom": the baseline already scores as
    well as the real cells' own noise allows, so there is no scale to measure progress on).
    Never clipped: use `clip_for_display` for plots and tables.
    """
    if any(math.isnan(float(v)) for v in (value, baseline, ceiling)):
        return float("nan")
    g_value, g_base, g_ceil = (_goodness(float(v), higher_is_better) for v in (value, baseline, ceiling))
    if not g_ceil > g_base:
        return float("nan")
    return (g_value - g_base) / (g_ceil - g_base)


def clip_for_display(x, lo: float = -1.0, hi: float = 1.0):
    """Clip a normalized score (float or array) to [lo, hi] for display; NaN stays NaN."""
    clipped = np.clip(x, lo, hi)
    return float(clipped) if np.ndim(clipped) == 0 else clipped
