"""Anchoring the CVAE's cells to a baseline mean and the perturbed spread, both chosen inside `fit`.

A predicted group is split into its mean shift and its cells' deviations from their own mean. The shift is
`w * baseline + (1 - w) * cvae`, the baseline being the project's ridge predictor (predictors.linear, its penalty
chosen by its own CV; mean_shift is its limit) fitted on the same training cells. The deviations are the CVAE's
("model"), or the same deviations rescaled per gene to the perturbed spread ("perturbed"): the training
perturbed cells' standard-deviation ratio to their context's controls where the label was seen in training,
else the spread of cells sampled from the CVAE's likelihood under the perturbation.

"auto" choices come from an inner validation on training cells only (`inner_folds`): held-out (context,
perturbation) groups as the splits hold out test groups (leave-one-training-context-out, else
leave-one-training-combination-out, else a random fifth of every perturbed group), a CVAE and the baseline fitted
on the rest. w maximizes the mean over held-out groups of Pearson r of Δ (ties to the larger w, the simpler
baseline); the spread minimizes the mean of the var_ratio score (benchmark.scoring.metrics's definition: median
over varying genes of |log(var_pred / var_real)|; ties to "model").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from benchmark.core.errors import NotApplicable
from benchmark.core.pseudobulk import group_sums
from benchmark.core.task import Task, dense, take
from predictors.linear import Linear

MEAN_RESPONSES = ("auto", "cvae", "baseline")
SPREADS = ("auto", "model", "perturbed")
MEAN_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Candidate weights of the baseline's shift; "cvae" is 0, "baseline" is 1."""
SCALE_BOUNDS = (0.1, 10.0)
"""Per-gene spread rescaling is clipped to this range: a safety bound against genes (nearly) constant in the
controls, not a tuned value."""
VAR_EPS = 1e-6
"""As benchmark.scoring.metrics.VAR_EPS: variances below it count as constant."""
_LOG_SD_EPS = 1e-4
"""Added to variances before the log standard-deviation ratio of training groups."""
_SPREAD_Z = 2.0
"""A training spread ratio counts beyond this many standard errors (a fixed significance level, not tuned)."""
_MIN_CELLS = 5
"""A held-out group needs this many cells (and its context this many controls) to be scored."""
_RANDOM_FRACTION = 0.2


@dataclass
class Fold:
    """One inner validation fold: the training rows held out and the (context, label) groups scored on them."""

    name: str
    held_out: np.ndarray
    groups: list[tuple[str, str]]


def inner_folds(train: AnnData, task: Task, n_folds: int, seed: int) -> list[Fold]:
    """Up to n_folds folds shaped like the splits: leave-one-training-context-out with several contexts, else
    leave-one-training-combination-out, else one fold of a random fifth of every perturbed group. O(cells)."""
    perts = task.perturbations(train)
    contexts = task.contexts(train).astype(str)
    rng = np.random.default_rng(seed)
    rows = pd.Series(np.arange(train.n_obs)).groupby([contexts, perts]).indices  # (t, p) -> rows
    with_controls = {t for (t, p), r in rows.items() if p == task.control_label and len(r) >= _MIN_CELLS}
    groups = sorted(g for g in rows if g[1] != task.control_label)
    scorable = [g for g in groups if g[0] in with_controls and len(rows[g]) >= _MIN_CELLS]
    contexts_of: dict[str, set[str]] = {}
    for t, p in groups:
        contexts_of.setdefault(p, set()).add(t)
    candidates: list[tuple[str, list[tuple[str, str]]]] = []
    if len(with_controls) >= 2:
        by_context: dict[str, list[tuple[str, str]]] = {}
        for t, p in scorable:
            if len(contexts_of[p]) > 1:
                by_context.setdefault(t, []).append((t, p))
        candidates = [(f"context {t}", mine) for t, mine in sorted(by_context.items())]
    if not candidates:
        labels = sorted(contexts_of)
        genes_elsewhere: dict[str, int] = {}
        for label in labels:
            for g in set(task.genes_of(label)):
                genes_elsewhere[g] = genes_elsewhere.get(g, 0) + 1
        for label in labels:
            genes = set(task.genes_of(label))
            mine = [g for g in scorable if g[1] == label]
            if len(genes) > 1 and all(genes_elsewhere[g] > 1 for g in genes) and mine:
                candidates.append((f"combination {label}", mine))
    if len(candidates) > n_folds:
        keep = np.sort(rng.choice(len(candidates), size=n_folds, replace=False))
        candidates = [candidates[i] for i in keep]
    folds = []
    for name, mine in candidates:
        if name.startswith("combination"):  # every context's cells of the label
            label = mine[0][1]
            held = np.concatenate([rows[(t, label)] for t in sorted(contexts_of[label])])
        else:
            held = np.concatenate([rows[g] for g in mine])
        folds.append(Fold(name, np.sort(held), mine))
    if not folds and scorable:
        held = [
            rng.choice(rows[g], size=max(2, int(round(_RANDOM_FRACTION * len(rows[g])))), replace=False)
            for g in scorable
        ]
        folds.append(Fold("random fifth", np.sort(np.concatenate(held)), scorable))
    return folds


def log_spread_ratios(train: AnnData, task: Task) -> dict[str, np.ndarray]:
    """Per perturbation label seen with controls: log(sd of its cells / sd of its context's controls) per gene
    (log-normalized), averaged over the training contexts where it was seen, then soft-thresholded at
    _SPREAD_Z standard errors (normal theory: var(log sd) ~ 1 / (2 (n - 1)) per group), so a gene whose spread
    did not measurably change keeps the network's spread (0: not rescaled)."""
    x = task.lognorm(train)
    sq = x.multiply(x) if hasattr(x, "multiply") else np.square(np.asarray(x, dtype=np.float64))
    contexts, perts = task.contexts(train).astype(str), task.perturbations(train)
    groups, sums, sizes = group_sums(x, contexts, perts)
    sq_sums = group_sums(sq, contexts, perts)[1]
    var = np.maximum(sq_sums / sizes[:, None] - (sums / sizes[:, None]) ** 2, 0.0)
    log_sd = 0.5 * np.log(var + _LOG_SD_EPS)
    control = {t: i for i, (t, p) in enumerate(groups) if p == task.control_label}
    ratios: dict[str, list[tuple[np.ndarray, float]]] = {}
    for i, (t, p) in enumerate(groups):
        if p != task.control_label and t in control and sizes[i] > 1 and sizes[control[t]] > 1:
            noise = 1.0 / (2.0 * (sizes[i] - 1)) + 1.0 / (2.0 * (sizes[control[t]] - 1))
            ratios.setdefault(p, []).append((log_sd[i] - log_sd[control[t]], noise))
    out = {}
    for p, pairs in ratios.items():
        mean = np.mean([r for r, _ in pairs], axis=0)
        se = np.sqrt(np.mean([v for _, v in pairs]) / len(pairs))
        out[p] = np.sign(mean) * np.maximum(np.abs(mean) - _SPREAD_Z * se, 0.0)
    return out


def rescale(dev: np.ndarray, target_sd: np.ndarray, genes: np.ndarray | None = None) -> np.ndarray:
    """Deviations (zero-mean columns) rescaled per gene to target_sd, the factor clipped to SCALE_BOUNDS; only
    `genes` (a mask; default all) and genes with spread are rescaled."""
    sd = dev.std(axis=0)
    factor = np.ones_like(sd)
    moving = sd > np.sqrt(VAR_EPS)
    if genes is not None:
        moving &= genes
    factor[moving] = np.clip(target_sd[moving] / sd[moving], *SCALE_BOUNDS)
    return dev * factor


def var_ratio_error(pred: np.ndarray, real: np.ndarray) -> float:
    """Median over genes varying in either sample of |log(var_pred / var_real)| (the var_ratio score)."""
    pv, rv = pred.var(axis=0, ddof=1), real.var(axis=0, ddof=1)
    varying = (pv > VAR_EPS) | (rv > VAR_EPS)
    if not varying.any():
        return 0.0
    return float(np.median(np.abs(np.log((pv[varying] + VAR_EPS) / (rv[varying] + VAR_EPS)))))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r, 0 when either side is constant."""
    xc, yc = x - x.mean(), y - y.mean()
    den = float(np.sqrt((xc @ xc) * (yc @ yc)))
    return float(xc @ yc / den) if den > 0 else 0.0


def choose_weight(r: np.ndarray) -> float:
    """The weight with the largest mean r over groups (r: groups x MEAN_WEIGHTS); ties to the larger weight."""
    means = r.mean(axis=0)
    best = len(MEAN_WEIGHTS) - 1
    for i in range(len(MEAN_WEIGHTS) - 2, -1, -1):
        if means[i] > means[best] + 1e-12:
            best = i
    return MEAN_WEIGHTS[best]


@dataclass
class Anchor:
    """The fitted anchoring: the baseline, per generation mode the baseline's weight and the spread rule (one fit
    serves both modes, so each is chosen for each), and the training spreads."""

    baseline: Linear | None
    weights: dict[str, float]
    spreads: dict[str, str]
    log_spread: dict[str, np.ndarray] = field(default_factory=dict)

    def compose(
        self,
        cells: np.ndarray,
        control: AnnData,
        task: Task,
        perturbation: str,
        context: str | None,
        sample: Callable[[], np.ndarray],
        mode: str,
    ) -> np.ndarray:
        """The group's cells: controls' mean + blended shift + (rescaled) CVAE deviations, in float64."""
        weight, spread = self.weights[mode], self.spreads[mode]
        ctrl = dense(task.lognorm(control))
        ctrl_mean = ctrl.mean(axis=0)
        cells = np.asarray(cells, dtype=np.float64)
        cvae_shift = cells.mean(axis=0) - ctrl_mean
        dev = cells - cells.mean(axis=0)
        shift = cvae_shift
        if weight > 0 and self.baseline is not None:
            try:
                base = dense(self.baseline.predict(control, perturbation, context).X).mean(axis=0) - ctrl_mean
                shift = weight * base + (1.0 - weight) * cvae_shift
            except NotApplicable:  # the baseline cannot predict it (a gene seen only in combinations): CVAE's
                pass
        if spread == "perturbed":
            dev = rescale(dev, *self.target_sd(ctrl, perturbation, sample))
        return ctrl_mean + shift + dev

    def target_sd(
        self, ctrl: np.ndarray, perturbation: str, sample: Callable[[], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene spread to match and the genes to rescale: the training ratio times the given controls'
        spread where it measurably changed, else (a label not seen in training) the likelihood's, every gene."""
        ratio = self.log_spread.get(perturbation)
        if ratio is not None:
            return ctrl.std(axis=0) * np.exp(ratio), ratio != 0
        target = np.asarray(sample(), dtype=np.float64).std(axis=0)
        return target, np.ones(len(target), dtype=bool)


def evaluate_fold(
    cvae, baseline: Linear, inner: AnnData, held: AnnData, task: Task, fold: Fold, mode: str
) -> tuple[list[list[float]], list[dict[str, float]]]:
    """Per scored group, cells generated in `mode`: r of Δ for each MEAN_WEIGHTS, and the var_ratio error of
    each spread rule."""
    log_spread = log_spread_ratios(inner, task)
    r_rows, spread_rows = [], []
    inner_ctx, inner_pert = task.contexts(inner).astype(str), task.perturbations(inner)
    held_ctx, held_pert = task.contexts(held).astype(str), task.perturbations(held)
    for t, p in fold.groups:
        ctrl_rows = np.flatnonzero((inner_ctx == t) & (inner_pert == task.control_label))
        real_rows = np.flatnonzero((held_ctx == t) & (held_pert == p))
        if len(ctrl_rows) < _MIN_CELLS or len(real_rows) < _MIN_CELLS:
            continue
        control = inner[ctrl_rows]
        try:
            cells = cvae.generate_cells(control, p, t, mode=mode)
            base = dense(baseline.predict(control, p, t).X)
        except NotApplicable:
            continue
        ctrl = dense(task.lognorm(control))
        real = dense(task.lognorm(held[real_rows]))
        ctrl_mean = ctrl.mean(axis=0)
        truth = real.mean(axis=0) - ctrl_mean
        cvae_shift, base_shift = cells.mean(axis=0) - ctrl_mean, base.mean(axis=0) - ctrl_mean
        r_rows.append([pearson(truth, w * base_shift + (1 - w) * cvae_shift) for w in MEAN_WEIGHTS])
        dev = cells - cells.mean(axis=0)
        rule = Anchor(None, 0.0, "perturbed", log_spread)

        def sample(control: AnnData = control, p: str = p, t: str = t) -> np.ndarray:
            return cvae.generate_cells(control, p, t, "sample", mode)

        scaled = rescale(dev, *rule.target_sd(ctrl, p, sample))
        spread_rows.append({"model": var_ratio_error(dev, real), "perturbed": var_ratio_error(scaled, real)})
    return r_rows, spread_rows


def summarize(r_rows: list[list[float]], spread_rows: list[dict[str, float]], folds: list[str]) -> dict:
    """The inner table (JSON-serializable): mean r per weight, mean var_ratio error per spread, the folds."""
    r = np.array(r_rows, dtype=np.float64).reshape(-1, len(MEAN_WEIGHTS))
    return {
        "protocol": "inner validation on training cells: " + ", ".join(folds),
        "groups": len(r_rows),
        "r_by_weight": {f"{w:g}": float(m) for w, m in zip(MEAN_WEIGHTS, r.mean(axis=0), strict=True)}
        if len(r)
        else {},
        "var_ratio_by_spread": {
            k: float(np.mean([row[k] for row in spread_rows])) for k in ("model", "perturbed")
        }
        if spread_rows
        else {},
    }


def choose(mean_response: str, spread: str, r_rows: list[list[float]], spread_rows: list[dict]) -> tuple:
    """(weight, spread rule) from the fixed settings or, for "auto", the inner table; without scored groups
    "auto" falls back to the baseline's mean (w = 1) and the model's spread."""
    fixed_w = {"cvae": 0.0, "baseline": 1.0}
    if mean_response in fixed_w:
        weight = fixed_w[mean_response]
    else:
        weight = choose_weight(np.array(r_rows).reshape(-1, len(MEAN_WEIGHTS))) if r_rows else 1.0
    if spread != "auto":
        return weight, spread
    if not spread_rows:
        return weight, "model"
    model = np.mean([row["model"] for row in spread_rows])
    perturbed = np.mean([row["perturbed"] for row in spread_rows])
    return weight, "perturbed" if perturbed < model - 1e-12 else "model"


def split_fold(train: AnnData, fold: Fold) -> tuple[AnnData, AnnData]:
    """The fold's training cells and its held-out cells, in memory."""
    keep = np.setdiff1d(np.arange(train.n_obs), fold.held_out)
    return take(train, keep), take(train, fold.held_out)


def fit(
    fit_inner: Callable[[AnnData], Any],
    train: AnnData,
    task: Task,
    modes: tuple[str, ...],
    mean_response: str,
    spread: str,
    n_folds: int,
    seed: int,
) -> tuple[Anchor, dict[str, Any]]:
    """The anchoring of a CVAE fitted on `train` and its inner table (per mode, plus "seconds"): an "auto" choice
    fits, per inner fold, a network-only CVAE (fit_inner) and the baseline on the fold's training cells."""
    started = time.perf_counter()
    r_rows: dict[str, list] = {m: [] for m in modes}
    spread_rows: dict[str, list] = {m: [] for m in modes}
    folds = []
    if "auto" in (mean_response, spread):
        for fold in inner_folds(train, task, n_folds, seed):
            inner, held = split_fold(train, fold)
            cvae = fit_inner(inner)
            baseline = Linear().fit(inner, task)
            for mode in modes:
                rows, spreads = evaluate_fold(cvae, baseline, inner, held, task, fold, mode)
                r_rows[mode] += rows
                spread_rows[mode] += spreads
            folds.append(fold.name)
    choices = {m: choose(mean_response, spread, r_rows[m], spread_rows[m]) for m in modes}
    weights = {m: w for m, (w, _) in choices.items()}
    spreads = {m: s for m, (_, s) in choices.items()}
    baseline = Linear().fit(train, task) if max(weights.values()) > 0 else None
    ratios = log_spread_ratios(train, task) if "perturbed" in spreads.values() else {}
    anchor = Anchor(baseline, weights, spreads, ratios)
    seconds = time.perf_counter() - started
    scores: dict[str, Any] = {m: summarize(r_rows[m], spread_rows[m], folds) for m in modes}
    scores["seconds"] = seconds
    return anchor, scores
