"""The differential-expression scores from the rank-sum tests' q-values: the overlap of the top significant genes
and the share of significant genes moved in the right direction (definitions in `benchmark.scoring.metrics`)."""

from __future__ import annotations

import numpy as np

from benchmark.scoring.evaldata import DEG_K

DE_ALPHA = 0.05
"""Benjamini–Hochberg level below which a gene counts as differentially expressed."""


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
