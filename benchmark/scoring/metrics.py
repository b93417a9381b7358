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

Layout: `evaldata` holds `EvalData`, its cached derived values and the seeded cell subsample; `registry` the
`Metric` records, `METRICS`, `register_metric` and `score`; `mean_scores`, `de_scores` and `distribution_scores`
the scores by kind. This module imports them all, so every metric is registered, and re-exports their names;
setting one of them here (a test's monkeypatch) sets it in each part that reads it, as when they were one module.
"""

from __future__ import annotations

from scipy.spatial.distance import cdist

from benchmark.scoring.de_scores import DE_ALPHA, de_direction, de_overlap, significant_top
from benchmark.scoring.distribution_scores import (
    VAR_EPS,
    _offdiag_mean,
    crps_fair,
    energy_distance_shape_u,
    energy_distance_u,
    mmd_rbf_u,
    pair_abs_sums,
)
from benchmark.scoring.evaldata import (
    _CONSTANT_RTOL,
    DEG_K,
    MAX_DISTANCE_CELLS,
    SUBSAMPLE_SEED,
    TOP_GENES,
    EvalData,
    _embed,
    _rows,
    gene_variance,
    is_constant,
    median_sq_distance,
    rbf_bandwidth,
    subsample_index,
    top_k_genes,
)
from benchmark.scoring.mean_scores import L1_CHUNK_VALUES, jaccard_top_k, l1_distances, pearson
from benchmark.scoring.registry import (
    CEILING_CELL_PAIRS,
    CEILING_EXPECTED_MEAN,
    CEILING_HALVES,
    CEILING_MOMENTS,
    CEILING_RANK_SUM,
    CEILING_RULES,
    METRICS,
    Metric,
    register_metric,
    score,
)

__all__ = [
    "CEILING_CELL_PAIRS",
    "CEILING_EXPECTED_MEAN",
    "CEILING_HALVES",
    "CEILING_MOMENTS",
    "CEILING_RANK_SUM",
    "CEILING_RULES",
    "DEG_K",
    "DE_ALPHA",
    "L1_CHUNK_VALUES",
    "MAX_DISTANCE_CELLS",
    "METRICS",
    "SUBSAMPLE_SEED",
    "TOP_GENES",
    "VAR_EPS",
    "EvalData",
    "Metric",
    "cdist",
    "crps_fair",
    "de_direction",
    "de_overlap",
    "energy_distance_shape_u",
    "energy_distance_u",
    "gene_variance",
    "is_constant",
    "jaccard_top_k",
    "l1_distances",
    "median_sq_distance",
    "mmd_rbf_u",
    "pair_abs_sums",
    "pearson",
    "rbf_bandwidth",
    "register_metric",
    "score",
    "significant_top",
    "subsample_index",
    "top_k_genes",
]
_PRIVATE = (_CONSTANT_RTOL, _embed, _offdiag_mean, _rows)
"""Private helpers of the one-module layout, still importable from it."""
