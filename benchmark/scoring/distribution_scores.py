"""The registered scores of the cells' distribution (kind "distribution"): energy distances, MMD, CRPS and the
variance ratio, with their U-statistics (definitions in `benchmark.scoring.metrics`)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

import benchmark.scoring.mean_scores  # noqa: F401  (registers the mean scores first: METRICS keeps the board's order)
from benchmark.scoring.evaldata import EvalData
from benchmark.scoring.registry import CEILING_CELL_PAIRS, CEILING_MOMENTS, register_metric

VAR_EPS = 1e-6
"""Added to both per-gene variances in `var_ratio` so genes with zero variance give finite logs."""


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


def mmd_rbf_u(x: np.ndarray, y: np.ndarray, h: float) -> float:
    """Squared MMD, unbiased U-statistic, with kernel exp(−‖a − b‖² / h); NaN with < 2 rows a side."""
    if x.shape[0] < 2 or y.shape[0] < 2:
        return float("nan")
    kxx = _offdiag_mean(np.exp(-cdist(x, x, "sqeuclidean") / h))
    kyy = _offdiag_mean(np.exp(-cdist(y, y, "sqeuclidean") / h))
    kxy = np.exp(-cdist(x, y, "sqeuclidean") / h).mean()
    return float(kxx + kyy - 2.0 * kxy)


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
