"""Synthetic count data with known ground truth: deterministic by seed, for tests and count likelihoods.

Generative model (contexts c, perturbations p, genes g, cells i):

* Baseline: a shared log-abundance profile a_g ~ N(0, 1) plus a context offset o_cg ~ N(0, 0.5²), turned into
  log-proportions b_cg = log softmax_g(a_g + o_cg) (each context has its own expression profile).
* Perturbation effects, a shared plus a context-specific component (so that context transfer is a real test):
  - each perturbation p affects a random set S_p of round(frac_affected * n_genes) genes with a shared
    log-fold change s_pg = ±effect_size * U(0.5, 1.5);
  - each context responds with its own strength k_cp ~ U(0.25, 1.5);
  - each (c, p) also moves round(frac_context_specific * n_genes) context-specific genes outside S_p by
    d_cpg = ±effect_size * U(0.5, 1.5);
  - lfc_cpg = k_cp * s_pg + d_cpg. Optional combinations "Pa+Pb" (the first `n_combos` pairs) add the two
    single effects: lfc_c(a+b)g = lfc_cag + lfc_cbg.
* Cells: library size L_i = library_size * exp(N(0, library_sd²)) (log-normal around `library_size`); mean
  mu_ig = L_i * exp(b_cg + lfc_cpg) for the cell's context and perturbation (lfc = 0 for control);
  counts x_ig ~ NegativeBinomial(mean mu_ig, dispersion phi_g), Var = mu + phi_g * mu², with per-gene
  phi_g log-uniform on [0.05, 0.5], drawn as a Gamma-Poisson mixture.

The true log-fold change is on the expected-count scale at a fixed library size. After size normalization
(dividing by the total count) every gene of a perturbed group also shifts by -log(sum_g p_cg exp(lfc_cpg)), the
change in library composition, stored as `composition_shift` = log(sum_g exp(b_cg + lfc_cpg)) (contexts x
perturbations): the expected log-ratio of normalized expression is about lfc_cpg - composition_shift_cp.

Ground truth is stored h5ad-writably in `uns["ground_truth"]`: `lfc` (contexts x perturbations x genes, without
control) with the ordered labels `contexts` and `perturbations`, `dispersion` (genes), `baseline` (contexts x
genes, log-proportions), `shared_lfc` (single perturbations x genes), `context_scale` (contexts x single
perturbations) and `params`. Parameters are drawn from one stream and cells from another, so changing
`cells_per_group` keeps the ground truth.
"""

from __future__ import annotations

import inspect
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

CONTROL = "control"
PERTURBATION_KEY = "condition"
CONTEXT_KEY = "cell_type"

DISPERSION_RANGE = (0.05, 0.5)
CONTEXT_SCALE_RANGE = (0.25, 1.5)
EFFECT_RANGE = (0.5, 1.5)


def make_synthetic(
    n_genes: int = 200,
    n_contexts: int = 4,
    n_perturbations: int = 3,
    cells_per_group: int = 100,
    seed: int = 0,
    *,
    n_combos: int = 0,
    frac_affected: float = 0.1,
    frac_context_specific: float = 0.05,
    effect_size: float = 1.0,
    library_size: float = 2000.0,
    library_sd: float = 0.3,
) -> AnnData:
    """Negative Binomial counts (CSR float32) for every (context, condition) group, with the truth in uns."""
    params = _check_params(locals())
    truth_rng, cell_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    truth = _draw_truth(truth_rng, params)
    x, contexts, conditions = _draw_cells(cell_rng, truth, params)
    return _assemble(x, contexts, conditions, truth, params)


def true_lfc(adata: AnnData, context: str, perturbation: str) -> np.ndarray:
    """The true log-fold change vector of `perturbation` in `context` from a synthetic dataset's ground truth."""
    gt = adata.uns["ground_truth"]
    c = list(map(str, gt["contexts"])).index(context)
    p = list(map(str, gt["perturbations"])).index(perturbation)
    return np.asarray(gt["lfc"][c, p], dtype=np.float64)


def describe(**params: Any) -> str:
    """A stable one-line description of a synthetic dataset's parameters (its 'checksum')."""
    full = {**_defaults(), **params}
    return "synthetic:" + ":".join(f"{k}={full[k]}" for k in sorted(full))


def _defaults() -> dict[str, Any]:
    """make_synthetic's default parameters."""
    sig = inspect.signature(make_synthetic)
    return {name: p.default for name, p in sig.parameters.items()}


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Reject sizes and fractions that cannot make a dataset."""
    for name in ("n_genes", "n_contexts", "n_perturbations", "cells_per_group"):
        if int(params[name]) < 1:
            raise ValueError(f"{name} must be at least 1, got {params[name]}")
    max_combos = len(list(combinations(range(params["n_perturbations"]), 2)))
    if not 0 <= params["n_combos"] <= max_combos:
        raise ValueError(
            f"n_combos must be in [0, {max_combos}] for {params['n_perturbations']} perturbations"
        )
    affected, specific = params["frac_affected"], params["frac_context_specific"]
    if not (0 < affected and 0 <= specific and affected + specific <= 1):
        raise ValueError("need 0 < frac_affected, 0 <= frac_context_specific and their sum <= 1")
    return dict(params)


def _signed_effects(rng: np.random.Generator, n: int, effect_size: float) -> np.ndarray:
    """n log-fold changes of random sign and magnitude effect_size * U(EFFECT_RANGE)."""
    return rng.choice([-1.0, 1.0], size=n) * effect_size * rng.uniform(*EFFECT_RANGE, size=n)


def _draw_truth(rng: np.random.Generator, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Baseline profiles, dispersions and per-(context, perturbation) log-fold changes."""
    n_genes, n_ctx, n_pert = params["n_genes"], params["n_contexts"], params["n_perturbations"]
    log_abundance = rng.normal(0.0, 1.0, n_genes) + rng.normal(0.0, 0.5, (n_ctx, n_genes))
    baseline = log_abundance - np.logaddexp.reduce(log_abundance, axis=1, keepdims=True)
    dispersion = np.exp(rng.uniform(*np.log(DISPERSION_RANGE), n_genes))
    n_shared = max(1, round(params["frac_affected"] * n_genes))
    n_specific = min(round(params["frac_context_specific"] * n_genes), n_genes - n_shared)
    shared = np.zeros((n_pert, n_genes))
    scale = rng.uniform(*CONTEXT_SCALE_RANGE, (n_ctx, n_pert))
    lfc = np.zeros((n_ctx, n_pert, n_genes))
    for p in range(n_pert):
        genes = rng.choice(n_genes, n_shared, replace=False)
        shared[p, genes] = _signed_effects(rng, n_shared, params["effect_size"])
        others = np.setdiff1d(np.arange(n_genes), genes)
        for c in range(n_ctx):
            lfc[c, p] = scale[c, p] * shared[p]
            specific = rng.choice(others, n_specific, replace=False)
            lfc[c, p, specific] = _signed_effects(rng, n_specific, params["effect_size"])
    labels = [f"P{p}" for p in range(n_pert)]
    pairs = list(combinations(range(n_pert), 2))[: params["n_combos"]]
    if pairs:
        lfc = np.concatenate([lfc, np.stack([lfc[:, a] + lfc[:, b] for a, b in pairs], axis=1)], axis=1)
        labels += [f"P{a}+P{b}" for a, b in pairs]
    composition_shift = np.logaddexp.reduce(baseline[:, None, :] + lfc, axis=2)
    return {
        "lfc": lfc,
        "composition_shift": composition_shift,
        "contexts": np.array([f"C{c}" for c in range(n_ctx)]),
        "perturbations": np.array(labels),
        "dispersion": dispersion,
        "baseline": baseline,
        "shared_lfc": shared,
        "context_scale": scale,
    }


def _draw_cells(
    rng: np.random.Generator, truth: dict[str, np.ndarray], params: dict[str, Any]
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Gamma-Poisson counts for cells_per_group cells of every (context, condition), in shuffled order."""
    n_ctx, n_cond = truth["lfc"].shape[0], truth["lfc"].shape[1] + 1
    per = params["cells_per_group"]
    ctx = np.repeat(np.arange(n_ctx), n_cond * per)
    cond = np.tile(np.repeat(np.arange(n_cond), per), n_ctx)
    order = rng.permutation(ctx.size)
    ctx, cond = ctx[order], cond[order]
    lfc = np.concatenate([np.zeros((n_ctx, 1, truth["lfc"].shape[2])), truth["lfc"]], axis=1)
    log_lib = np.log(params["library_size"]) + rng.normal(0.0, params["library_sd"], ctx.size)
    mu = np.exp(log_lib[:, None] + truth["baseline"][ctx] + lfc[ctx, cond])
    theta = 1.0 / truth["dispersion"]
    counts = rng.poisson(rng.gamma(shape=theta, scale=mu / theta))
    return sp.csr_matrix(counts.astype(np.float32)), ctx, cond


def _assemble(
    x: sp.csr_matrix, ctx: np.ndarray, cond: np.ndarray, truth: dict[str, np.ndarray], params: dict[str, Any]
) -> AnnData:
    """Wrap counts, labels and ground truth as an AnnData (h5ad-writable)."""
    conditions = [CONTROL, *map(str, truth["perturbations"])]
    contexts = list(map(str, truth["contexts"]))
    n_cells, n_genes = x.shape
    obs = pd.DataFrame(
        {
            PERTURBATION_KEY: pd.Categorical.from_codes(cond, categories=conditions),
            CONTEXT_KEY: pd.Categorical.from_codes(ctx, categories=contexts),
        },
        index=[f"cell{i:0{len(str(n_cells - 1))}d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"G{g:0{max(4, len(str(n_genes - 1)))}d}" for g in range(n_genes)])
    ground_truth = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in truth.items()}
    ground_truth["params"] = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in params.items()}
    return AnnData(X=x, obs=obs, var=var, uns={"ground_truth": ground_truth})
