"""The registered scores of the mean response (kind "mean"): correlations and errors of Δ, top-K gene overlaps,
the DE scores and discrimination among the split's groups (definitions in `benchmark.scoring.metrics`)."""

from __future__ import annotations

import numpy as np

from benchmark.scoring.de_scores import de_direction, de_overlap
from benchmark.scoring.evaldata import TOP_GENES, EvalData, is_constant, top_k_genes
from benchmark.scoring.registry import (
    CEILING_EXPECTED_MEAN,
    CEILING_MOMENTS,
    CEILING_RANK_SUM,
    register_metric,
)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN (silently) when either vector is constant or has fewer than 2 entries."""
    if x.size < 2 or is_constant(x) or is_constant(y):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    r = float(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)))
    return float(np.clip(r, -1.0, 1.0))


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
