"""The scoreboard: a registry of named metrics, each with a direction, scored on one held-out context.

Definitions (Δ_true = mean(real) − mean(control), Δ_pred = mean(pred) − mean(control), per gene):

* Top-K genes rank genes by |Δ| descending; ties are broken by gene order (the lower column index wins, a
  stable sort), so the set is always well defined. When every |Δ| is equal (e.g. a constant Δ_pred, such as
  predicting the control cells themselves), the ranking carries no information and top-K metrics are NaN;
  `jaccard_K` is also NaN when there are no more than K genes (every gene would be selected, J = 1 trivially).
  The `*_deg100` metrics use all genes when there are fewer than 100.
* Pearson correlations are NaN (no warning) when either side is constant.
* Cell-level scores (`energy_distance`, `energy_distance_shape`, `mmd_rbf`, `crps_deg100`, the DE tests) run
  on at most `MAX_DISTANCE_CELLS` cells per side: a larger side is replaced by a uniform subsample without
  replacement, drawn from a generator seeded by (`SUBSAMPLE_SEED`, its number of cells), so the same real
  cells are used for every predictor of a target and for its ceiling. Memory is O(K²), K = MAX_DISTANCE_CELLS.
* `energy_distance`, `energy_distance_shape` and `mmd_rbf` compare pred and real cells in the `embed` space (an
  exact PCA of the split's training cells, see `fit_embedding`), or on the raw genes when `embed` is None. They
  are unbiased U-statistics (pairs of a cell with itself left out), so two samples of one distribution score
  ≈ 0 and a score can be slightly negative; each needs at least 2 cells per side (else NaN).
  energy = 2 mean‖x − y‖ − mean_{i≠j}‖x_i − x_j‖ − mean_{i≠j}‖y_i − y_j‖; `energy_distance_shape` is the same
  after centring each side on its own mean (what is left once the mean shift is removed), with the cross
  distances multiplied by √(2 / (2 − 1/m − 1/n)): centring on a sample mean shrinks a cross difference's
  variance by that factor, which would otherwise make the score negative by about E‖X − X'‖·(1/m + 1/n)/4.
* `mmd_rbf` uses k(x, y) = exp(−‖x − y‖² / h) with h the median squared distance between distinct pairs of
  *real* cells (so every predictor on a split is scored with the same kernel); if that is 0 or undefined, the
  pooled pred+real sample is used, then h = 1. MMD² = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j)
  − 2 mean k(x, y).
* `crps_deg100`: on each of the top-100 genes by |Δ_true|, the CRPS of the predicted cells' distribution,
  averaged over the real cells y: mean|x − y| − ½ mean_{i≠j}|x_i − x_j| (the "fair", unbiased form), then
  averaged over the genes. Exact, O(n log n) per gene by sorting. Lower is better; it is a proper score for
  the per-gene marginal distribution, so it rewards the right spread as well as the right centre.
* `var_ratio` is the median over varying genes of |log((var_pred + ε) / (var_real + ε))|, ε = 1e-6, per-gene
  sample variances (ddof=1). Absolute, so too-wide and too-narrow genes cannot cancel; 0 is best (direction
  None, "best at 0", which for a value ≥ 0 ranks like lower-is-better).
* DE tests: per gene, a two-sided Wilcoxon rank-sum (Mann–Whitney U) test of real vs control and of pred vs
  control (normal approximation with tie correction and continuity correction, as scipy and pdex/cell-eval),
  Benjamini–Hochberg adjusted. A gene constant in both samples has p = 1.
  `de_overlap_100`: among each test's significant genes (BH q < 0.05) rank by |Δ| (log-space mean difference;
  ties to the lower index) and take the top 100; the score is |top_real ∩ top_pred| / min(100, #significant
  real genes), cell-eval's `overlap_at_100` rule with |Δ| in place of |log2 fold change| (a fold change is
  infinite for a gene whose controls are all zero, and such genes would fill the ranking). NaN when no real
  gene is significant. `de_direction`: the fraction of significant real genes whose Δ_pred has the sign of
  Δ_true (a zero Δ_pred counts as wrong); NaN when none is significant.
* `discrimination`: with `others` (the real Δ of the split's other groups), the fraction of those rows lying
  farther (L1) from Δ_pred than Δ_true does, ties counting ½. 1 = the prediction is closest to its own group,
  0.5 = chance; NaN without others. cell-eval's `discrimination_score_l1` ranks the same distances but divides
  by the number of groups including the target: with k others, cell-eval = 1 − (1 − ours)·k / (k + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.spatial.distance import cdist

from benchmark.core.errors import PertbenchError
from benchmark.core.task import dense
from benchmark.scoring.ranksum import ControlRanks, SampleRanks, bh_qvalues

VAR_EPS = 1e-6
"""Added to both per-gene variances in `var_ratio` so genes with zero variance give finite logs."""

DEG_K = 100
"""Number of top true-Δ genes used by the `*_deg100` metrics and top DE genes used by `de_overlap_100`."""
TOP_GENES = DEG_K
"""Genes ranked by |Δ| once per EvalData (the J(K) scores' largest K and the DEG set); a larger K ranks anew."""

DE_ALPHA = 0.05
"""Benjamini–Hochberg level below which a gene counts as differentially expressed."""

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
        """The RBF scale h of `mmd_rbf` (see module docstring)."""
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


@dataclass(frozen=True)
class Metric:
    """A named metric: its function, direction (None = best at 0), whether it compares means or cells
    (`kind`), and the rule its noise ceiling follows (`ceiling`, one of CEILING_RULES)."""

    name: str
    fn: Callable[[EvalData], float]
    higher_is_better: bool | None
    description: str
    kind: str
    ceiling: str = "halves"


CEILING_HALVES = "halves"
"""Size-matched bootstrap halves of the real cells, half A scored as a prediction of half B on copies of the cells:
right for any metric, and the rule of a metric that declares none."""
CEILING_MOMENTS = "moments"
"""Bootstrap halves, for a metric that reads only per-gene means and variances of the cells (top-K overlaps,
discrimination, var_ratio): on large groups the halves' moments come from draw counts, without copying cells."""
CEILING_EXPECTED_MEAN = "expected_mean"
"""The expected score of the true perturbed mean against the n observed cells (Spearman–Brown; `oracle_ceiling`
holds each such metric's formula)."""
CEILING_CELL_PAIRS = "cell_pairs"
"""A cell-level U-statistic over bootstrap halves that leaves out a cell paired with its own copy (the energy,
MMD and CRPS ceilings; `ceiling._CellCeiling` holds each formula)."""
CEILING_RANK_SUM = "rank_sum"
"""The DE scores of bootstrap halves from one sort of the real cells (`ceiling._DeCeiling`)."""
CEILING_RULES = (CEILING_HALVES, CEILING_MOMENTS, CEILING_EXPECTED_MEAN, CEILING_CELL_PAIRS, CEILING_RANK_SUM)


METRICS: dict[str, Metric] = {}
"""All registered metrics, by name, in registration order."""


def register_metric(
    name: str, higher_is_better: bool | None, kind: str, description: str, ceiling: str = CEILING_HALVES
) -> Callable[[Callable[[EvalData], float]], Callable[[EvalData], float]]:
    """Decorator adding a metric function to METRICS under `name`, with its direction, kind and ceiling rule."""
    if kind not in ("mean", "distribution"):
        raise ValueError(f"metric kind must be 'mean' or 'distribution', got {kind!r}")
    if ceiling not in CEILING_RULES:
        raise ValueError(f"metric ceiling rule must be one of {', '.join(CEILING_RULES)}, got {ceiling!r}")

    def decorate(fn: Callable[[EvalData], float]) -> Callable[[EvalData], float]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, higher_is_better, description, kind, ceiling)
        return fn

    return decorate


def score(data: EvalData, names: Iterable[str] | None = None) -> dict[str, float]:
    """Every requested metric (all by default) on `data`, as floats (NaN where undefined)."""
    names = list(METRICS) if names is None else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise PertbenchError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {n: float(METRICS[n].fn(data)) for n in names}


# ---------------------------------------------------------------------------------------------- helpers


def _embed(embed: Callable[[np.ndarray], np.ndarray] | None, x: np.ndarray) -> np.ndarray:
    """Apply the embedding (identity when None) and return dense float64."""
    return x if embed is None else np.asarray(embed(x), dtype=np.float64)


def is_constant(x: np.ndarray) -> bool:
    """Whether a vector has no spread beyond float rounding (so correlations and rankings are undefined)."""
    if x.size == 0:
        return True
    scale = max(1.0, float(np.max(np.abs(x))))
    return float(np.ptp(x)) <= _CONSTANT_RTOL * scale


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN (silently) when either vector is constant or has fewer than 2 entries."""
    if x.size < 2 or is_constant(x) or is_constant(y):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    r = float(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)))
    return float(np.clip(r, -1.0, 1.0))


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


def jaccard_top_k(data: EvalData, k: int) -> float:
    """Jaccard index of the top-k genes by |Δ_true| and by |Δ_pred|; NaN when undefined."""
    if data.delta_true.size <= k:
        return float("nan")
    if data.true_top is None or data.pred_top is None:
        return float("nan")
    if k <= TOP_GENES:
        a, b = data.true_top[:k], data.pred_top[:k]
    else:
        a, b = top_k_genes(data.delta_true, k), top_k_genes(data.delta_pred, k)
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / len(a | b)


def _offdiag_mean(m: np.ndarray) -> float:
    """Mean of a square matrix without its diagonal (pairs of distinct rows)."""
    n = m.shape[0]
    return float((m.sum() - np.trace(m)) / (n * (n - 1)))


def energy_distance_u(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ as an unbiased U-statistic; NaN with < 2 rows a side."""
    if x.shape[0] < 2 or y.shape[0] < 2:
        return float("nan")
    return float(2.0 * cdist(x, y).mean() - _offdiag_mean(cdist(x, x)) - _offdiag_mean(cdist(y, y)))


def energy_distance_shape_u(x: np.ndarray, y: np.ndarray) -> float:
    """Energy U-statistic of x − x̄ and y − ȳ, cross differences rescaled by √(2 / (2 − 1/m − 1/n)).

    Centring on sample means shrinks a cross difference (x_i − x̄) − (y_j − ȳ) to a variance factor of
    2 − 1/m − 1/n against 2 for a within difference x_i − x_j; the rescaling undoes it, so two samples of one
    distribution score ≈ 0 (exactly in expectation for Gaussian cells). NaN with < 2 rows a side.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        return float("nan")
    cross = cdist(x - x.mean(axis=0), y - y.mean(axis=0)).mean() * np.sqrt(2.0 / (2.0 - 1.0 / m - 1.0 / n))
    return float(2.0 * cross - _offdiag_mean(cdist(x, x)) - _offdiag_mean(cdist(y, y)))


def median_sq_distance(x: np.ndarray) -> float:
    """Median squared Euclidean distance over distinct pairs of rows (NaN with fewer than 2 rows)."""
    if x.shape[0] < 2:
        return float("nan")
    d2 = cdist(x, x, "sqeuclidean")
    return float(np.median(d2[np.triu_indices(x.shape[0], k=1)]))


def rbf_bandwidth(real: np.ndarray, pred: np.ndarray) -> float:
    """The RBF scale h: median squared real-real distance, else pooled, else 1 (see module docstring)."""
    pooled = np.vstack([real, pred])
    pooled = pooled[subsample_index(pooled.shape[0])]  # at most K rows: the fallback stays O(K²) too
    for sample in (real, pooled):
        h = median_sq_distance(sample)
        if np.isfinite(h) and h > 0:
            return h
    return 1.0


def mmd_rbf_u(x: np.ndarray, y: np.ndarray, h: float) -> float:
    """Squared MMD, unbiased U-statistic, with kernel exp(−‖a − b‖² / h); NaN with < 2 rows a side."""
    if x.shape[0] < 2 or y.shape[0] < 2:
        return float("nan")
    kxx = _offdiag_mean(np.exp(-cdist(x, x, "sqeuclidean") / h))
    kyy = _offdiag_mean(np.exp(-cdist(y, y, "sqeuclidean") / h))
    kxy = np.exp(-cdist(x, y, "sqeuclidean") / h).mean()
    return float(kxx + kyy - 2.0 * kxy)


def gene_variance(x: np.ndarray) -> np.ndarray:
    """Per-gene sample variance (ddof=1); zeros for a single cell."""
    if x.shape[0] < 2:
        return np.zeros(x.shape[1])
    return x.var(axis=0, ddof=1)


def pair_abs_sums(values: np.ndarray, w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per column c, Σ_i Σ_j w_i u_j |v_ic − v_jc| in O(n log n) by sorting (w, u: non-negative cell weights).

    Used with 0/1 weights for sums within or across two samples stacked in `values`, and with bootstrap
    counts for the ceiling (a pair of copies of one cell adds |0| and so nothing).
    """
    order = np.argsort(values, axis=0, kind="stable")
    v = np.take_along_axis(values, order, axis=0)
    ws, us = w[order], u[order]
    w_le, wv_le = np.cumsum(ws, axis=0), np.cumsum(ws * v, axis=0)  # weight and weighted sum at or below
    below = v * w_le - wv_le
    above = (wv_le[-1] - wv_le) - v * (w_le[-1] - w_le)
    return np.sum(us * (below + above), axis=0)


def crps_fair(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per gene, mean over real cells y of the fair CRPS mean|x − y| − ½ mean_{i≠j}|x_i − x_j| of pred cells x."""
    m, n = pred.shape[0], real.shape[0]
    stacked = np.vstack([pred, real])
    in_pred = np.concatenate([np.ones(m), np.zeros(n)])
    cross = pair_abs_sums(stacked, in_pred, 1.0 - in_pred) / (m * n)
    if m < 2:  # a single predicted cell is a point forecast: CRPS = |x − y|
        return cross
    return cross - 0.5 * pair_abs_sums(pred, np.ones(m), np.ones(m)) / (m * (m - 1))


L1_CHUNK_VALUES = 1 << 17
"""Values (rows x genes) of one chunk in `l1_distances` (1 MB: the differences stay in cache)."""


def l1_distances(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Σ_g |rows[i, g] − v[g]| for every row, a chunk of rows at a time: the same per-row sums as
    `np.abs(rows - v).sum(axis=1)` without its rows x genes temporary (a screen's 2,000 other groups x 8,000 genes
    is 128 MB per call, and `discrimination` is called 23 times per target)."""
    out = np.empty(rows.shape[0])
    step = max(1, L1_CHUNK_VALUES // max(1, rows.shape[1]))
    buffer = np.empty((min(step, rows.shape[0]), rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        diff = np.subtract(rows[start : start + step], v, out=buffer[: min(step, rows.shape[0] - start)])
        out[start : start + step] = np.abs(diff, out=diff).sum(axis=1)
    return out


def significant_top(q: np.ndarray, delta: np.ndarray, k: int) -> np.ndarray:
    """Genes with q < DE_ALPHA ranked by |Δ| (ties to the lower index), the first k."""
    sig = np.flatnonzero(q < DE_ALPHA)
    return sig[np.argsort(-np.abs(delta[sig]), kind="stable")][:k]


def de_overlap(
    q_real: np.ndarray, delta_true: np.ndarray, q_pred: np.ndarray, delta_pred: np.ndarray
) -> float:
    """|top_real ∩ top_pred| / min(DEG_K, #significant real genes) of `significant_top`; NaN without any."""
    real_top = significant_top(q_real, delta_true, DEG_K)
    if real_top.size == 0:
        return float("nan")
    pred_top = significant_top(q_pred, delta_pred, DEG_K)
    k = min(DEG_K, real_top.size)
    return float(np.intersect1d(real_top[:k], pred_top[:k]).size / k)


def de_direction(q_real: np.ndarray, delta_true: np.ndarray, delta_pred: np.ndarray) -> float:
    """Fraction of the significant real genes where Δ_pred has the sign of Δ_true; NaN without any."""
    sig = np.flatnonzero(q_real < DE_ALPHA)
    if sig.size == 0:
        return float("nan")
    return float(np.mean(np.sign(delta_pred[sig]) == np.sign(delta_true[sig])))


# ---------------------------------------------------------------------------------------------- metrics


@register_metric(
    "r",
    True,
    "mean",
    "Pearson correlation of Δ_pred and Δ_true over all genes",
    ceiling=CEILING_EXPECTED_MEAN,
)
def _r(data: EvalData) -> float:
    return pearson(data.delta_true, data.delta_pred)


@register_metric(
    "jaccard_25",
    True,
    "mean",
    "Jaccard overlap of the top-25 genes by |Δ| (true vs pred)",
    ceiling=CEILING_MOMENTS,
)
def _jaccard_25(data: EvalData) -> float:
    return jaccard_top_k(data, 25)


@register_metric(
    "jaccard_50",
    True,
    "mean",
    "Jaccard overlap of the top-50 genes by |Δ| (true vs pred)",
    ceiling=CEILING_MOMENTS,
)
def _jaccard_50(data: EvalData) -> float:
    return jaccard_top_k(data, 50)


@register_metric(
    "jaccard_100",
    True,
    "mean",
    "Jaccard overlap of the top-100 genes by |Δ| (true vs pred)",
    ceiling=CEILING_MOMENTS,
)
def _jaccard_100(data: EvalData) -> float:
    return jaccard_top_k(data, 100)


@register_metric(
    "r_deg100",
    True,
    "mean",
    "Pearson of Δ_pred and Δ_true on the top-100 genes by |Δ_true|",
    ceiling=CEILING_EXPECTED_MEAN,
)
def _r_deg100(data: EvalData) -> float:
    idx = data.deg_index
    return float("nan") if idx is None else pearson(data.delta_true[idx], data.delta_pred[idx])


@register_metric(
    "r2_mean_deg100",
    True,
    "mean",
    "Squared Pearson of mean(pred) and mean(real) on the top-100 genes by |Δ_true|",
    ceiling=CEILING_EXPECTED_MEAN,
)
def _r2_mean_deg100(data: EvalData) -> float:
    idx = data.deg_index
    return float("nan") if idx is None else pearson(data.mean_real[idx], data.mean_pred[idx]) ** 2


@register_metric(
    "mse_mean",
    False,
    "mean",
    "Mean squared error between mean(pred) and mean(real) over all genes",
    ceiling=CEILING_EXPECTED_MEAN,
)
def _mse_mean(data: EvalData) -> float:
    return float(np.mean((data.mean_pred - data.mean_real) ** 2))


@register_metric(
    "de_overlap_100",
    True,
    "mean",
    "Overlap of the top-100 Wilcoxon-significant genes (by |Δ|), real vs control and pred vs control",
    ceiling=CEILING_RANK_SUM,
)
def _de_overlap_100(data: EvalData) -> float:
    return de_overlap(data.de_real, data.delta_true, data.de_pred, data.delta_pred)


@register_metric(
    "de_direction",
    True,
    "mean",
    "Fraction of the significant real DE genes whose Δ_pred has the right sign",
    ceiling=CEILING_RANK_SUM,
)
def _de_direction(data: EvalData) -> float:
    return de_direction(data.de_real, data.delta_true, data.delta_pred)


@register_metric(
    "discrimination",
    True,
    "mean",
    "Fraction of the other groups' real Δ farther (L1) from Δ_pred than the target's; 0.5 = chance",
    ceiling=CEILING_MOMENTS,
)
def _discrimination(data: EvalData) -> float:
    if data.others is None or data.others.shape[0] == 0:
        return float("nan")
    own = np.abs(data.delta_pred - data.delta_true).sum()
    other = l1_distances(data.others, data.delta_pred)
    return float((np.sum(other > own) + 0.5 * np.sum(other == own)) / other.size)


@register_metric(
    "energy_distance",
    False,
    "distribution",
    "Energy distance (unbiased U-statistic) between pred and real cells, embedded",
    ceiling=CEILING_CELL_PAIRS,
)
def _energy_distance(data: EvalData) -> float:
    return energy_distance_u(data.pred_z, data.real_z)


@register_metric(
    "energy_distance_shape",
    False,
    "distribution",
    "Energy distance after centring pred and real cells on their own means: the shape beyond the shift",
    ceiling=CEILING_CELL_PAIRS,
)
def _energy_distance_shape(data: EvalData) -> float:
    return energy_distance_shape_u(data.pred_z, data.real_z)


@register_metric(
    "mmd_rbf",
    False,
    "distribution",
    "Squared MMD (unbiased; RBF, median-heuristic bandwidth on real cells), embedded",
    ceiling=CEILING_CELL_PAIRS,
)
def _mmd_rbf(data: EvalData) -> float:
    return mmd_rbf_u(data.pred_z, data.real_z, data.bandwidth)


@register_metric(
    "crps_deg100",
    False,
    "distribution",
    "CRPS of the predicted cells' per-gene distribution at the real cells, top-100 genes by |Δ_true|",
    ceiling=CEILING_CELL_PAIRS,
)
def _crps_deg100(data: EvalData) -> float:
    idx = data.deg_index
    if idx is None:
        return float("nan")
    pred, real = data.pred[np.ix_(data.pred_index, idx)], data.real[np.ix_(data.real_index, idx)]
    return float(np.mean(crps_fair(pred, real)))


@register_metric(
    "var_ratio",
    None,
    "distribution",
    "Median over varying genes of |log(var_pred / var_real)|; 0 best, signs cannot cancel",
    ceiling=CEILING_MOMENTS,
)
def _var_ratio(data: EvalData) -> float:
    # Genes constant in both samples (on sparse data: most genes, all zero) say nothing about dispersion and
    # would pull the median to 0, so only genes that vary in the real or the predicted cells count.
    pred_var, real_var = data.var_pred, data.var_real
    varying = (pred_var > VAR_EPS) | (real_var > VAR_EPS)
    if not varying.any():
        return 0.0
    return float(np.median(np.abs(np.log((pred_var[varying] + VAR_EPS) / (real_var[varying] + VAR_EPS)))))
