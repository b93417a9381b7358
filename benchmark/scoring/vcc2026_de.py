"""The DE half of the Virtual Cell Challenge 2026 score: cell-eval2's CPU DE table and its four DE members.

A side's DE table tests each target's cells against one control pool, per gene: log2 fold change of the mean
CPM, log2((mean_target + 1e-9) / (mean_control + 1e-9)); a two-sided Wilcoxon rank-sum test of log1p(CPM) with
tie correction and no continuity correction (scanpy's `rank_genes_groups(method="wilcoxon", tie_correct=True)`,
which cell-eval2 runs on a machine with neither a GPU nor pdex; with pdex installed it runs pdex, whose p-values
carry the continuity correction: `DE_BACKENDS`); only genes whose mean CPM in the control pool exceeds 5 are
kept, and Benjamini-Hochberg is applied per target over the kept genes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

from benchmark.scoring.ranksum import ControlRanks, _cells_by_genes, _sample_stats, bh_qvalues, mwu_pvalues

DE_TARGET_SUM = 1e6
"""Per-cell normalization of the DE side (counts per million)."""
EPSILON = 1e-9
"""Pseudocount of the log2 fold change of mean CPM."""
MIN_CONTROL_CPM = 5.0
"""A gene is tested only where the control pool's mean CPM exceeds this (the reference alone decides)."""
ALPHA = 0.05
"""A gene is significant where its BH-adjusted p-value is below this."""
REACH_PURITY_FLOOR = 0.9
"""Direction reach counts the deepest prefix of the predicted ranking whose sign purity reaches this."""
MIN_GATE_SIZE = 10
"""Fold-change NMAE omits a target with fewer real-significant genes than this."""
DE_BACKENDS = {"scanpy": False, "pdex": True}
"""cell-eval2's CPU DE engines and whether their rank-sum p-values carry the continuity correction."""


@dataclass(frozen=True)
class DETable:
    """One side's DE results, targets x genes; `kept` marks the tested genes (p-values NaN elsewhere)."""

    labels: tuple[str, ...]
    kept: np.ndarray
    lfc: np.ndarray
    pvalue: np.ndarray
    padj: np.ndarray

    def row(self, label: str) -> int:
        """The row of target `label`."""
        return self.labels.index(label)


def cpm(x) -> np.ndarray:
    """Counts per million of each cell (rows), dense float64; a cell without counts stays zero."""
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    x = np.asarray(x, dtype=np.float64)
    lib = x.sum(axis=1)
    scale = np.divide(DE_TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0)
    return x * scale[:, None]


def wilcoxon_pvalues(x: np.ndarray, control: ControlRanks, continuity: bool = False) -> np.ndarray:
    """Two-sided rank-sum p-values of x against the control, normal approximation with tie correction, without
    continuity correction (scanpy's convention) or with it (pdex's); a gene constant over both samples gets 1."""
    u1, ties, varying = _sample_stats(
        _cells_by_genes(x), control.sorted, control.zero_lo, control.zero_hi, control.ties
    )
    m, k = float(x.shape[0]), float(control.c.shape[0])
    if continuity:
        p = np.ones(x.shape[1])
        if varying.any():
            p[varying] = mwu_pvalues(u1[varying], m, k, ties[varying])
        return p
    n = m + k
    var = m * k / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    p = np.ones(x.shape[1])
    ok = varying & (var > 0)
    z = np.abs(u1[ok] - m * k / 2.0) / np.sqrt(var[ok])
    p[ok] = 2.0 * ndtr(-z)
    return p


def de_table(groups: Mapping[str, object], control, backend: str = "scanpy") -> DETable:
    """The DE table of each group's counts (cells x genes) against the control pool's counts, with the p-value
    convention of cell-eval2's CPU `backend` ("scanpy" or "pdex")."""
    if backend not in DE_BACKENDS:
        raise ValueError(f"unknown DE backend {backend!r}; known: {', '.join(DE_BACKENDS)}")
    ctrl = cpm(control)
    ctrl_mean = ctrl.mean(axis=0)
    kept = ctrl_mean > MIN_CONTROL_CPM
    ranks = ControlRanks(np.log1p(ctrl))
    labels = tuple(groups)
    shape = (len(labels), ctrl.shape[1])
    lfc, pvalue, padj = np.zeros(shape), np.full(shape, np.nan), np.full(shape, np.nan)
    for i, label in enumerate(labels):
        x = cpm(groups[label])
        lfc[i] = np.log2((x.mean(axis=0) + EPSILON) / (ctrl_mean + EPSILON))
        p = wilcoxon_pvalues(np.log1p(x), ranks, DE_BACKENDS[backend])
        pvalue[i, kept] = p[kept]
        if kept.any():
            padj[i, kept] = bh_qvalues(p[kept])
    return DETable(labels, kept, lfc, pvalue, padj)


def _significant(table: DETable, i: int) -> np.ndarray:
    return table.kept & (np.nan_to_num(table.padj[i], nan=1.0) < ALPHA)


def _without(mask: np.ndarray, own: int | None) -> np.ndarray:
    if own is None:
        return mask
    out = mask.copy()
    out[own] = False
    return out


def sig_jaccard(real: DETable, pred: DETable, label: str, own: int | None) -> float:
    """|R ∩ P| / |R ∪ P| of the two sides' significant genes, the target's own gene left out (1 when empty)."""
    r = _without(_significant(real, real.row(label)), own)
    p = _without(_significant(pred, pred.row(label)), own)
    union = int((r | p).sum())
    return 1.0 if union == 0 else int((r & p).sum()) / union


def lfc_nmae(real: DETable, pred: DETable, label: str, own: int | None) -> float:
    """mean |lfc_pred - lfc_real| / mean |lfc_real| over the real-significant genes (own gene left out); a
    gene the prediction did not test counts as lfc 0; NaN (omitted) below MIN_GATE_SIZE genes."""
    i, j = real.row(label), pred.row(label)
    gate = _without(_significant(real, i) & np.isfinite(real.lfc[i]), own)
    if gate.sum() < MIN_GATE_SIZE:
        return float("nan")
    lr = real.lfc[i, gate]
    lp = np.where(pred.kept & np.isfinite(pred.lfc[j]), pred.lfc[j], 0.0)[gate]
    den = float(np.abs(lr).mean())
    if not np.isfinite(den) or den == 0.0:
        return float("nan")
    return float(np.abs(lp - lr).mean()) / den


def _direction_parts(real: DETable, pred: DETable, label: str, own: int | None):
    i, j = real.row(label), pred.row(label)
    common = _without(real.kept & pred.kept, own)
    lr, lp = real.lfc[i], pred.lfc[j]
    in_denom = ~np.isnan(lr) & (lr != 0)  # an infinite fold change still has a sign
    committed = ~np.isnan(lp) & (lp != 0)
    match = in_denom & committed & (np.sign(lp) == np.sign(lr))
    n_conf = int(_without(_significant(real, i), own).sum())
    return i, j, common, in_denom, match, n_conf


def direction_fidelity_yield_raw(real: DETable, pred: DETable, label: str, own: int | None) -> float:
    """k / max(n_pred, N_conf): correct-sign calls among the predicted-significant genes the reference can
    adjudicate, over the larger of that set and the reference's significant set (own gene left out)."""
    i, j, common, in_denom, match, n_conf = _direction_parts(real, pred, label, own)
    scored = common & _significant(pred, j) & in_denom
    n_pred, k = int(scored.sum()), int((scored & match).sum())
    den = max(n_pred, n_conf)
    return float("nan") if den == 0 else k / den


def direction_reach_raw(
    real: DETable, pred: DETable, label: str, own: int | None, genes: np.ndarray
) -> float:
    """k* / N_conf: the deepest prefix of the prediction's ranking of the real-significant genes (significant
    first, then p_adj, p-value, |lfc| descending, gene name) whose sign purity is at least REACH_PURITY_FLOOR."""
    i, j, common, in_denom, match, n_conf = _direction_parts(real, pred, label, own)
    if n_conf == 0:
        return float("nan")
    pool = np.flatnonzero(common & _significant(real, i))
    if pool.size == 0:
        return 0.0
    padj = np.nan_to_num(pred.padj[j, pool], nan=np.inf)
    pval = np.nan_to_num(pred.pvalue[j, pool], nan=np.inf)
    abs_lfc = np.where(np.isnan(pred.lfc[j, pool]), -np.inf, np.abs(pred.lfc[j, pool]))
    sig = padj < ALPHA
    name_rank = np.argsort(np.argsort(genes[pool].astype(str), kind="stable"), kind="stable")
    order = pool[np.lexsort((name_rank, -abs_lfc, pval, padj, ~sig))]
    n_denom = np.cumsum(in_denom[order])
    n_match = np.cumsum(match[order])
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (n_denom > 0) & (n_match / np.maximum(n_denom, 1) >= REACH_PURITY_FLOOR)
    k_star = int(n_denom[hit].max()) if hit.any() else 0
    return k_star / n_conf


def de_members(
    real: DETable, pred: DETable, labels: list[str], own: Mapping[str, int | None], genes: np.ndarray
) -> dict[str, dict[str, float]]:
    """Each DE member's value per target label (cell-eval2's names)."""
    return {
        "de_wilcoxon_direction_fidelity_yield_raw": {
            t: direction_fidelity_yield_raw(real, pred, t, own[t]) for t in labels
        },
        "de_wilcoxon_direction_reach_raw": {
            t: direction_reach_raw(real, pred, t, own[t], genes) for t in labels
        },
        "de_wilcoxon_sig_jaccard": {t: sig_jaccard(real, pred, t, own[t]) for t in labels},
        "de_wilcoxon_lfc_nmae": {t: lfc_nmae(real, pred, t, own[t]) for t in labels},
    }


def half_nmae(full: DETable, half_a: DETable, half_b: DETable, label: str, own: int | None) -> float:
    """The replicate anchor's fold-change NMAE of one target: mean |lfc_a - lfc_b| / mean |lfc_full| over the
    genes significant in the whole real data (own gene left out; a gene a half did not test counts as 0)."""
    i = full.row(label)
    gate = _without(_significant(full, i) & np.isfinite(full.lfc[i]), own)
    if gate.sum() < MIN_GATE_SIZE:
        return float("nan")
    den = float(np.abs(full.lfc[i, gate]).mean())
    if not np.isfinite(den) or den == 0.0:
        return float("nan")
    a, b = (
        np.where(h.kept & np.isfinite(h.lfc[h.row(label)]), h.lfc[h.row(label)], 0.0)[gate]
        for h in (half_a, half_b)
    )
    return float(np.abs(a - b).mean()) / den
