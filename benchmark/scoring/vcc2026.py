"""The Virtual Cell Challenge 2026 score: cell-eval2's `vcc2026` profile, computed from counts.

Six members over a panel of held-out targets (one control pool, each target's real and predicted cells), each
rescaled to 0 at a baseline and 1 at a replicate anchor and averaged. docs/vcc2026.md says what each member
computes and where pertbench's numbers match cell-eval2's; `vcc2026_de` holds the DE table and DE members.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from benchmark.scoring import vcc2026_de as de

BULK_TARGET_SUM = 5e4
"""The expression comparator's per-group target sum: log1p(5e4 * group count sum / its total)."""
PRED_TRACE_CAP = 1.0
"""The prediction's sampling correction is capped at this multiple of the real group's."""
ANCHOR_SPLITS = 5
"""The replicate anchor averages this many split-half replicates of the real cells."""
ANCHOR_BASE_SEED = 0
"""The split seeds derive from this one (numpy SeedSequence), as cell-eval2 derives them."""
PENALTY_EXPONENT, PENALTY_CAP = 2.0, 6.0
"""The Box-Cox tail below the baseline of the expression member (inert there: that member is clipped to [0, 1])."""

PDS = "pds_cosine"
EXPR = "expr_mse_unbiased_capped_norm"
FIDELITY = "de_wilcoxon_direction_fidelity_yield_raw"
REACH = "de_wilcoxon_direction_reach_raw"
JACCARD = "de_wilcoxon_sig_jaccard"
NMAE = "de_wilcoxon_lfc_nmae"
MEMBERS = (PDS, EXPR, FIDELITY, REACH, JACCARD, NMAE)
"""The six scored members, in cell-eval2's names."""
HIGHER_IS_BETTER = {PDS: True, EXPR: False, FIDELITY: True, REACH: True, JACCARD: True, NMAE: False}
CLAMPS = {EXPR: (0.0, 1.0), NMAE: (-6.0, math.inf)}
"""Rescaled-value clamps (low, high); the other members are unclamped."""


@dataclass(frozen=True)
class Panel:
    """Counts (cells x genes) of one control pool and of each target's cells; `own[label]` is the column of the
    gene the target perturbs (None: it perturbs no measured gene)."""

    control: object
    groups: Mapping[str, object]
    genes: np.ndarray
    own: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The target labels, sorted (cell-eval2's order)."""
        return sorted(self.groups)


def own_genes(labels, genes: np.ndarray, target_genes: Mapping[str, str | None] | None = None) -> dict:
    """Each label's own gene column: the gene named by `target_genes[label]`, else the gene named like the label."""
    index = {str(g): i for i, g in enumerate(genes)}
    mapping = target_genes or {}
    return {t: index.get(str(mapping.get(t, t))) if mapping.get(t, t) is not None else None for t in labels}


@dataclass(frozen=True)
class Vcc2026Score:
    """Each member's value (mean over targets, or the ratio of sums for the expression member), its baseline
    and anchor, its rescaled value and the average of the rescaled values; `per_target` holds the raw rows."""

    members: dict[str, float]
    baseline: dict[str, float]
    anchor: dict[str, float]
    rescaled: dict[str, float]
    score: float
    per_target: dict[str, dict[str, float]]


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _sums(x, axis: int) -> np.ndarray:
    return np.asarray(x.sum(axis=axis), dtype=np.float64).ravel()


def bulk(x) -> np.ndarray:
    """log1p(BULK_TARGET_SUM * P / sum(P)) of the group's count sums P (zeros for an empty group)."""
    p = _sums(sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, dtype=np.float64), 0)
    total = p.sum()
    return np.log1p(p * (BULK_TARGET_SUM / total)) if total > 0 else np.zeros_like(p)


def jackknife(x, chunk: int = 512) -> float:
    """The jackknife estimate of the bulk's sampling variance, summed over genes: (n-1)/n Σ_g Σ_i (V_ig - V̄_g)²
    over leave-one-cell-out bulks V_i (0 for a group of fewer than 2 cells); `chunk` cells densified at a time."""
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    p = _sums(x, 0)
    total = float(p.sum())
    if n < 2 or total <= 0:
        return 0.0
    full = np.log1p(BULK_TARGET_SUM * p / total)
    s1, s2 = np.zeros_like(p), np.zeros_like(p)
    for start in range(0, n, chunk):
        block = _dense(x[start : start + chunk])
        rest = total - block.sum(axis=1)
        safe = np.where(rest > 0, rest, 1.0)[:, None]
        v = np.where((rest > 0)[:, None], np.log1p(BULK_TARGET_SUM * (p[None, :] - block) / safe), 0.0) - full
        s1 += v.sum(axis=0)
        s2 += np.einsum("ij,ij->j", v, v)
    return max((n - 1) / n * float((s2 - s1**2 / n).sum()), 0.0)


def _pds(pred_eff: np.ndarray, real_eff: np.ndarray, own: list[int | None]) -> np.ndarray:
    """Per target, 1 - midrank / (n - 1) of its real effect among all real effects by cosine distance to its
    predicted effect, every panel target's own gene removed from the features."""
    keep = np.ones(real_eff.shape[1], dtype=bool)
    keep[[c for c in own if c is not None]] = False
    a, b = pred_eff[:, keep], real_eff[:, keep]
    norms = np.sqrt(np.einsum("ig,ig->i", a, a))[:, None] * np.sqrt(np.einsum("jg,jg->j", b, b))[None, :]
    sim = np.divide(a @ b.T, norms, out=np.zeros((a.shape[0], b.shape[0])), where=norms != 0)
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    n = real_eff.shape[0]
    out = np.empty(n)
    for i in range(n):
        row, match = dist[i], dist[i, i]
        rank = np.count_nonzero(row < match) + (np.count_nonzero(row == match) - 1) / 2.0
        out[i] = 1.0 if n <= 1 else 1.0 - rank / (n - 1)
    return out


def _budget(pred_means: np.ndarray, own: list[int | None], weights: np.ndarray) -> float:
    """The prediction's across-target spread: Σ_g the weighted sum of squares of its bulks about their mean."""
    dev = pred_means - pred_means.mean(axis=0)
    s1 = np.einsum("ij,i->j", dev, weights)
    s2 = np.einsum("ij,ij,i->j", dev, dev, weights)
    wsum = np.full(dev.shape[1], weights.sum())
    cnt = np.full(dev.shape[1], float(dev.shape[0]))
    for k, col in enumerate(own):
        if col is not None:
            v = dev[k, col]
            s1[col] -= weights[k] * v
            s2[col] -= weights[k] * v * v
            wsum[col] -= weights[k]
            cnt[col] -= 1.0
    ok = (cnt >= 2.0) & (wsum > 0.0)
    if not ok.any():
        return 0.0
    return float(np.maximum(s2[ok] - s1[ok] ** 2 / wsum[ok], 0.0).sum())


def expression_members(
    real: Panel, pred: Mapping[str, object], pred_control=None
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """pds_cosine per target, and the capped unbiased MSE and the unbiased distance (the two legs of
    expr_mse_unbiased_capped_norm) per target. Predicted effects are taken against the real control, or
    against `pred_control`'s counts when given (the replicate anchor's convention)."""
    labels = real.labels
    own = [real.own.get(t) for t in labels]
    real_ctrl = bulk(real.control)
    real_means = np.stack([bulk(real.groups[t]) for t in labels])
    pred_means = np.stack([bulk(pred[t]) for t in labels])
    real_jk = np.array([jackknife(real.groups[t]) for t in labels])
    pred_jk = np.array([jackknife(pred[t]) for t in labels])
    ctrl_jk = jackknife(real.control)
    pred_ctrl = real_ctrl if pred_control is None else bulk(pred_control)
    pds = _pds(pred_means - pred_ctrl, real_means - real_ctrl, own)
    g = real_means.shape[1]
    n_row = np.array([g - 1.0 if c is not None else float(g) for c in own])
    weights = np.divide(1.0, n_row, out=np.zeros_like(n_row), where=n_row > 0)
    term = np.minimum(pred_jk, PRED_TRACE_CAP * real_jk)
    claim = float((term * weights).sum())
    if claim > 0.0:
        ratio = _budget(pred_means, own, weights) / claim
        if ratio < 1.0:
            term = term * ratio
    capped = np.einsum("ij,ij->i", pred_means - real_means, pred_means - real_means) - term - real_jk
    dist = np.einsum("ij,ij->i", real_means - real_ctrl, real_means - real_ctrl) - real_jk - ctrl_jk
    for k, col in enumerate(own):
        if col is not None:
            capped[k] -= (pred_means[k, col] - real_means[k, col]) ** 2
            dist[k] -= (real_means[k, col] - real_ctrl[col]) ** 2
    capped, dist = capped / n_row, dist / n_row
    rows = {
        PDS: dict(zip(labels, pds.tolist(), strict=True)),
        "expr_mse_unbiased_capped": dict(zip(labels, capped.tolist(), strict=True)),
        "expr_distance_unbiased": dict(zip(labels, dist.tolist(), strict=True)),
    }
    return rows, {EXPR: float(capped.sum() / dist.sum())}


def member_values(
    real: Panel, pred: Mapping[str, object], pred_control=None, de_backend: str = "scanpy"
) -> tuple[dict, dict]:
    """(aggregate value of each member, per-target rows of each member) for predicted counts `pred` of every
    target of the panel; `pred_control`: the prediction's own control pool, when effects are taken against it;
    `de_backend`: whose rank-sum p-values the DE tables use (`vcc2026_de.DE_BACKENDS`)."""
    missing = sorted(set(real.groups) - set(pred))
    if missing:
        raise ValueError(f"the prediction has no cells for target(s) {', '.join(missing[:5])}")
    rows, agg = expression_members(real, pred, pred_control)
    real_de = de.de_table({t: real.groups[t] for t in real.labels}, real.control, de_backend)
    ref = real.control if pred_control is None else pred_control
    pred_de = de.de_table({t: pred[t] for t in real.labels}, ref, de_backend)
    own = {t: real.own.get(t) for t in real.labels}
    rows.update(de.de_members(real_de, pred_de, real.labels, own, real.genes))
    for name in MEMBERS:
        if name != EXPR:
            vals = np.array([v for v in rows[name].values() if not math.isnan(v)])
            agg[name] = float(vals.mean()) if vals.size else float("nan")
    return {m: agg[m] for m in MEMBERS}, rows


def rescale(name: str, value: float, baseline: float, anchor: float) -> float:
    """cell-eval2's from_replicate value of a member: 0 at the baseline, 1 at the anchor (NaN when either end
    is missing or they coincide)."""
    if not all(map(math.isfinite, (value, baseline, anchor))) or anchor == baseline:
        return float("nan")
    if HIGHER_IS_BETTER[name]:
        s = (value - baseline) / (anchor - baseline)
    else:
        r = (value - anchor) / (baseline - anchor)
        s = 1.0 - r
        if s < 0.0 and name == EXPR:
            s = max(-PENALTY_CAP, -(r**PENALTY_EXPONENT - 1.0) / PENALTY_EXPONENT)
    low, high = CLAMPS.get(name, (-math.inf, math.inf))
    return min(max(s, low), high)


_CONTROL = "non-targeting"
"""The control's label when halves are drawn: cell-eval2's, so the groups are permuted in its order."""


def split_halves(panel: Panel, seed: int) -> tuple[Panel, Panel]:
    """Two disjoint halves of every group's cells (control included), drawn as cell-eval2 draws them: groups
    in sorted label order, one permutation each from one generator; an odd group drops its last cell."""
    rng = np.random.default_rng(seed)
    named = {**{t: panel.groups[t] for t in panel.groups}, _CONTROL: panel.control}
    a, b = {}, {}
    for label in sorted(named):
        x = named[label]
        perm = rng.permutation(x.shape[0])
        h = perm.size // 2
        a[label], b[label] = x[np.sort(perm[:h])], x[np.sort(perm[h : 2 * h])]
    ctrl_a, ctrl_b = a.pop(_CONTROL), b.pop(_CONTROL)
    return Panel(ctrl_a, a, panel.genes, panel.own), Panel(ctrl_b, b, panel.genes, panel.own)


def anchor_seeds(n_splits: int = ANCHOR_SPLITS, base_seed: int = ANCHOR_BASE_SEED) -> list[int]:
    """The split seeds: numpy SeedSequence(base_seed).generate_state(n_splits), as cell-eval2 derives them."""
    return [int(s) for s in np.random.SeedSequence(base_seed).generate_state(n_splits)]


def replicate_anchor(
    panel: Panel, n_splits: int = ANCHOR_SPLITS, de_backend: str = "scanpy"
) -> dict[str, float]:
    """Each member's replicate value: the mean over split halves of the second half scored as a prediction of
    the first, against its own half of the control; fold-change NMAE instead averages, over the same halves,
    mean |lfc_a - lfc_b| / mean |lfc_full| over the genes significant in the whole real data."""
    full = de.de_table({t: panel.groups[t] for t in panel.labels}, panel.control, de_backend)
    values: dict[str, list[float]] = {m: [] for m in MEMBERS}
    for seed in anchor_seeds(n_splits):
        half_a, half_b = split_halves(panel, seed)
        agg, _ = member_values(half_a, half_b.groups, half_b.control, de_backend)
        for m in MEMBERS:
            if m != NMAE:
                values[m].append(agg[m])
        de_a = de.de_table(half_a.groups, half_a.control, de_backend)
        de_b = de.de_table(half_b.groups, half_b.control, de_backend)
        nmae = [de.half_nmae(full, de_a, de_b, t, panel.own.get(t)) for t in panel.labels]
        kept = [v for v in nmae if not math.isnan(v)]
        values[NMAE].append(float(np.mean(kept)) if kept else float("nan"))
    return {m: float(np.mean(v)) for m, v in values.items()}


def score(
    real: Panel,
    pred: Mapping[str, object],
    baseline: Mapping[str, object],
    anchor=None,
    de_backend: str = "scanpy",
) -> Vcc2026Score:
    """The vcc2026 score of predicted counts `pred` per target, with `baseline` (predicted counts per target of
    the comparator) as the 0 end and the replicate anchor of the real cells (or given `anchor` values) as 1;
    `de_backend`: whose rank-sum p-values the DE members use (`vcc2026_de.DE_BACKENDS`)."""
    members, per_target = member_values(real, pred, de_backend=de_backend)
    base, _ = member_values(real, baseline, de_backend=de_backend)
    anchor = dict(anchor) if anchor is not None else replicate_anchor(real, de_backend=de_backend)
    rescaled = {m: rescale(m, members[m], base[m], anchor[m]) for m in MEMBERS}
    vals = list(rescaled.values())
    total = float(np.mean(vals)) if all(map(math.isfinite, vals)) else float("nan")
    return Vcc2026Score(members, base, anchor, rescaled, total, per_target)
