"""Synthetic count data with known ground truth: deterministic by seed, for tests, count likelihoods and scale.

Generative model (contexts c, perturbations p, genes g, cells i):

* Baseline: a shared log-abundance profile a_g ~ N(0, 1) plus a context offset o_cg ~ N(0, 0.5²), turned into
  log-proportions b_cg = log softmax_g(a_g + o_cg) (each context has its own expression profile).
* Perturbation effects on the mean, a shared plus a context-specific component (so that context transfer is a
  real test):
  - each perturbation p affects a random set S_p of round(frac_affected * n_genes) genes with a shared
    log-fold change s_pg = ±effect_size * U(0.5, 1.5);
  - each context responds with its own strength k_cp ~ U(0.25, 1.5);
  - each (c, p) also moves round(frac_context_specific * n_genes) context-specific genes outside S_p by
    d_cpg = ±effect_size * U(0.5, 1.5);
  - lfc_cpg = k_cp * s_pg + d_cpg.
* Perturbation effects on the spread (so a mean shift is not the whole response): each p changes the
  dispersion of round(frac_variance * n_genes) genes V_p that no context moves in mean (fewer if there are not
  that many) by a shared log factor v_pg = ±variance_effect * U(0.5, 1.5), scaled by the same context strength:
  dispersion_lfc_cpg = k_cp * v_pg. Optional combinations "Pa+Pb" (the first `n_combos` pairs) add both kinds of single effects.
* Cells: library size L_i = library_size * exp(N(0, library_sd²)) (log-normal around `library_size`); mean
  mu_ig = L_i * exp(b_cg + lfc_cpg) for the cell's context and perturbation (both effects 0 for control);
  counts x_ig ~ NegativeBinomial(mean mu_ig, dispersion phi_g * exp(dispersion_lfc_cpg)), Var = mu + phi mu²,
  with per-gene phi_g log-uniform on [0.05, 0.5], drawn as a Gamma-Poisson mixture.

The true log-fold change is on the expected-count scale at a fixed library size. After size normalization
(dividing by the total count) every gene of a perturbed group also shifts by -log(sum_g p_cg exp(lfc_cpg)), the
change in library composition, stored as `composition_shift` = log(sum_g exp(b_cg + lfc_cpg)) (contexts x
perturbations): the expected log-ratio of normalized expression is about lfc_cpg - composition_shift_cp.

Ground truth is stored h5ad-writably in `uns["ground_truth"]`: `lfc` and `dispersion_lfc` (contexts x
perturbations x genes, without control) with the ordered labels `contexts` and `perturbations`, `dispersion`
(genes), `baseline` (contexts x genes, log-proportions), `shared_lfc` (single perturbations x genes),
`context_scale` (contexts x single perturbations) and `params`.

Scale: cells are drawn block by block (BLOCK_CELLS cells, each block from its own seeded stream), so no dense
cells x genes array is ever built and the counts do not depend on how blocks are grouped into chunks.
`make_synthetic` returns an in-memory CSR AnnData; `write_synthetic` streams the same data to an .h5ad file
chunk by chunk (anndata's on-disk CSR layout), holding one chunk at a time. Mean effects, spread effects, cell
layout and cell counts come from separate streams, so changing `cells_per_group` keeps the ground truth.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.io import write_elem

CONTROL = "control"
PERTURBATION_KEY = "condition"
CONTEXT_KEY = "cell_type"

DISPERSION_RANGE = (0.05, 0.5)
CONTEXT_SCALE_RANGE = (0.25, 1.5)
EFFECT_RANGE = (0.5, 1.5)

BLOCK_CELLS = 512
"""Cells drawn densely at once, each block from its own stream: bounds memory to BLOCK_CELLS x genes floats."""
CHUNK_CELLS = 10_000
"""Default cells per CSR chunk (rounded to whole blocks) appended to the output at a time."""
_NOT_PARAMS = ("chunk_cells",)  # make_synthetic arguments that do not change the data


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
    n_controls: int | None = None,
    frac_variance: float = 0.05,
    variance_effect: float = 1.0,
    chunk_cells: int = CHUNK_CELLS,
) -> AnnData:
    """Negative Binomial counts (CSR float32) for every (context, condition) group, with the truth in uns;
    `n_controls` control cells per context (default cells_per_group). `chunk_cells` only bounds memory: the
    data are the same for every value."""
    params = _check_params({k: v for k, v in locals().items() if k not in _NOT_PARAMS})
    truth, ctx, cond, blocks = _plan(params)
    chunks = list(_chunks(blocks, truth, params, ctx, cond, chunk_cells))
    x = sp.vstack(chunks, format="csr") if chunks else sp.csr_matrix((0, params["n_genes"]), dtype=np.float32)
    return AnnData(X=x, obs=_obs(ctx, cond, truth), var=_var(params["n_genes"]), uns=_uns(truth, params))


def write_synthetic(path: Path | str, *, chunk_cells: int = CHUNK_CELLS, **kwargs: Any) -> Path:
    """Stream make_synthetic(**kwargs)'s data to an .h5ad file, one CSR chunk in memory at a time."""
    params = _check_params({**_defaults(), **kwargs})
    truth, ctx, cond, blocks = _plan(params)
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        _write_csr(f, _chunks(blocks, truth, params, ctx, cond, chunk_cells), (ctx.size, params["n_genes"]))
        write_elem(f, "obs", _obs(ctx, cond, truth))
        write_elem(f, "var", _var(params["n_genes"]))
        write_elem(f, "uns", _uns(truth, params))
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(f, key, {})
    return path


def sample_cells(adata: AnnData, context: str, perturbation: str, n_cells: int, seed: int) -> sp.csr_matrix:
    """Fresh counts of `n_cells` cells from the true law of (context, perturbation or control) of a synthetic
    dataset: what a predictor that knew the generator exactly would return."""
    if n_cells < 1:
        raise ValueError(f"n_cells must be at least 1, got {n_cells}")
    gt = adata.uns["ground_truth"]
    truth = {
        k: np.asarray(gt[k], dtype=np.float64) for k in ("baseline", "lfc", "dispersion_lfc", "dispersion")
    }
    c = list(map(str, gt["contexts"])).index(context)
    labels = [CONTROL, *map(str, gt["perturbations"])]
    p = labels.index(perturbation)
    rng = np.random.default_rng(seed)
    blocks = [
        _draw_counts(rng, truth, gt["params"], np.full(n, c), np.full(n, p))
        for n in np.diff(np.r_[np.arange(0, n_cells, BLOCK_CELLS), n_cells])
    ]
    return sp.vstack(blocks, format="csr")


def true_lfc(adata: AnnData, context: str, perturbation: str) -> np.ndarray:
    """The true log-fold change vector of `perturbation` in `context` from a synthetic dataset's ground truth."""
    gt = adata.uns["ground_truth"]
    c = list(map(str, gt["contexts"])).index(context)
    p = list(map(str, gt["perturbations"])).index(perturbation)
    return np.asarray(gt["lfc"][c, p], dtype=np.float64)


def describe(**params: Any) -> str:
    """A stable one-line description of a synthetic dataset's parameters (its 'checksum')."""
    full = {**_defaults(), **params}
    return "synthetic:" + ":".join(f"{k}={full[k]}" for k in sorted(full) if k not in _NOT_PARAMS)


def _defaults() -> dict[str, Any]:
    """make_synthetic's default data parameters."""
    sig = inspect.signature(make_synthetic)
    return {name: p.default for name, p in sig.parameters.items() if name not in _NOT_PARAMS}


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Reject sizes and fractions that cannot make a dataset; fill in n_controls."""
    unknown = set(params) - set(_defaults())
    if unknown:
        raise ValueError(f"unknown synthetic parameter(s) {sorted(unknown)}")
    for name in ("n_genes", "n_contexts", "n_perturbations", "cells_per_group"):
        if int(params[name]) < 1:
            raise ValueError(f"{name} must be at least 1, got {params[name]}")
    if params["n_controls"] is not None and int(params["n_controls"]) < 1:
        raise ValueError(f"n_controls must be at least 1, got {params['n_controls']}")
    max_combos = len(list(combinations(range(params["n_perturbations"]), 2)))
    if not 0 <= params["n_combos"] <= max_combos:
        raise ValueError(
            f"n_combos must be in [0, {max_combos}] for {params['n_perturbations']} perturbations"
        )
    affected, specific = params["frac_affected"], params["frac_context_specific"]
    if not (0 < affected and 0 <= specific and affected + specific <= 1):
        raise ValueError("need 0 < frac_affected, 0 <= frac_context_specific and their sum <= 1")
    if not (0 <= params["frac_variance"] and affected + params["frac_variance"] <= 1):
        raise ValueError("need 0 <= frac_variance and frac_affected + frac_variance <= 1")
    return dict(params)


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent seed streams: mean effects, cell counts (one child per block), layout, spread effects."""
    return np.random.SeedSequence(seed).spawn(4)


def _plan(
    params: dict[str, Any],
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.random.SeedSequence]:
    """The ground truth, every cell's (context, condition) codes in shuffled order, and the cells' stream."""
    truth_seq, cell_seq, layout_seq, spread_seq = _streams(params["seed"])
    truth = _draw_truth(np.random.default_rng(truth_seq), np.random.default_rng(spread_seq), params)
    ctx, cond = _layout(np.random.default_rng(layout_seq), truth, params)
    return truth, ctx, cond, cell_seq


def _signed_effects(rng: np.random.Generator, n: int, effect_size: float) -> np.ndarray:
    """n log-fold changes of random sign and magnitude effect_size * U(EFFECT_RANGE)."""
    return rng.choice([-1.0, 1.0], size=n) * effect_size * rng.uniform(*EFFECT_RANGE, size=n)


def _draw_truth(
    rng: np.random.Generator, spread_rng: np.random.Generator, params: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Baseline profiles, dispersions and per-(context, perturbation) mean and dispersion log-fold changes."""
    n_genes, n_ctx, n_pert = params["n_genes"], params["n_contexts"], params["n_perturbations"]
    log_abundance = rng.normal(0.0, 1.0, n_genes) + rng.normal(0.0, 0.5, (n_ctx, n_genes))
    baseline = log_abundance - np.logaddexp.reduce(log_abundance, axis=1, keepdims=True)
    dispersion = np.exp(rng.uniform(*np.log(DISPERSION_RANGE), n_genes))
    n_shared = max(1, round(params["frac_affected"] * n_genes))
    n_specific = min(round(params["frac_context_specific"] * n_genes), n_genes - n_shared)
    n_spread = round(params["frac_variance"] * n_genes)
    shared = np.zeros((n_pert, n_genes))
    spread = np.zeros((n_pert, n_genes))
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
        unmoved = np.flatnonzero((lfc[:, p] == 0).all(axis=0))  # spread-only genes: no mean effect anywhere
        varied = spread_rng.choice(unmoved, min(n_spread, unmoved.size), replace=False)
        spread[p, varied] = _signed_effects(spread_rng, varied.size, params["variance_effect"])
    dispersion_lfc = scale[:, :, None] * spread[None, :, :]
    labels = [f"P{p}" for p in range(n_pert)]
    pairs = list(combinations(range(n_pert), 2))[: params["n_combos"]]
    if pairs:
        lfc = np.concatenate([lfc, np.stack([lfc[:, a] + lfc[:, b] for a, b in pairs], axis=1)], axis=1)
        dispersion_lfc = np.concatenate(
            [dispersion_lfc, np.stack([dispersion_lfc[:, a] + dispersion_lfc[:, b] for a, b in pairs], 1)],
            axis=1,
        )
        labels += [f"P{a}+P{b}" for a, b in pairs]
    composition_shift = np.logaddexp.reduce(baseline[:, None, :] + lfc, axis=2)
    return {
        "lfc": lfc,
        "dispersion_lfc": dispersion_lfc,
        "composition_shift": composition_shift,
        "contexts": np.array([f"C{c}" for c in range(n_ctx)]),
        "perturbations": np.array(labels),
        "dispersion": dispersion,
        "baseline": baseline,
        "shared_lfc": shared,
        "context_scale": scale,
    }


def _layout(
    rng: np.random.Generator, truth: dict[str, np.ndarray], params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Context and condition codes (0 = control) of every cell, shuffled: n_controls control cells and
    cells_per_group cells of every perturbation in every context."""
    n_ctx, n_cond = truth["lfc"].shape[0], truth["lfc"].shape[1] + 1
    n_controls = params["n_controls"] or params["cells_per_group"]
    sizes = np.r_[n_controls, np.full(n_cond - 1, params["cells_per_group"])]
    cond = np.tile(np.repeat(np.arange(n_cond, dtype=np.int32), sizes), n_ctx)
    ctx = np.repeat(np.arange(n_ctx, dtype=np.int32), sizes.sum())
    order = rng.permutation(ctx.size)
    return ctx[order], cond[order]


def _draw_counts(
    rng: np.random.Generator,
    truth: dict[str, np.ndarray],
    params: dict[str, Any],
    ctx: np.ndarray,
    cond: np.ndarray,
) -> sp.csr_matrix:
    """Gamma-Poisson counts of a few cells (dense only for these rows) as CSR float32."""
    log_lib = np.log(params["library_size"]) + rng.normal(0.0, params["library_sd"], ctx.size)
    log_mu = truth["baseline"][ctx] + log_lib[:, None]
    log_phi = np.broadcast_to(np.log(truth["dispersion"]), log_mu.shape).copy()
    perturbed = cond > 0
    log_mu[perturbed] += truth["lfc"][ctx[perturbed], cond[perturbed] - 1]
    log_phi[perturbed] += truth["dispersion_lfc"][ctx[perturbed], cond[perturbed] - 1]
    scale = np.exp(np.add(log_mu, log_phi, out=log_mu), out=log_mu)  # mu * phi, in place: few block arrays
    theta = np.exp(np.negative(log_phi, out=log_phi), out=log_phi)
    rates = rng.gamma(shape=theta, scale=scale)
    del scale, theta, log_mu, log_phi
    counts = rng.poisson(rates)
    del rates
    rows, cols = np.nonzero(counts)
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=ctx.size))]
    return sp.csr_matrix(
        (counts[rows, cols].astype(np.float32), cols.astype(np.int32), indptr), shape=counts.shape
    )


def _chunks(
    cell_seq: np.random.SeedSequence,
    truth: dict[str, np.ndarray],
    params: dict[str, Any],
    ctx: np.ndarray,
    cond: np.ndarray,
    chunk_cells: int,
) -> Iterator[sp.csr_matrix]:
    """CSR chunks of whole blocks in cell order; block b is drawn from its own stream, whatever the chunking."""
    n_blocks = -(-ctx.size // BLOCK_CELLS)
    per_chunk = max(1, int(chunk_cells) // BLOCK_CELLS)
    seqs = cell_seq.spawn(n_blocks)
    for first in range(0, n_blocks, per_chunk):
        parts = []
        for b in range(first, min(first + per_chunk, n_blocks)):
            rows = slice(b * BLOCK_CELLS, min((b + 1) * BLOCK_CELLS, ctx.size))
            parts.append(_draw_counts(np.random.default_rng(seqs[b]), truth, params, ctx[rows], cond[rows]))
        yield sp.vstack(parts, format="csr")


def _write_csr(f: h5py.File, chunks: Iterator[sp.csr_matrix], shape: tuple[int, int]) -> None:
    """Append CSR chunks to X in anndata's on-disk CSR layout (resizable data/indices, preallocated indptr)."""
    group = f.create_group("X")
    group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": shape})
    growable = {"shape": (0,), "maxshape": (None,), "chunks": (1 << 16,)}
    data = group.create_dataset("data", dtype=np.float32, **growable)
    indices = group.create_dataset("indices", dtype=np.int32, **growable)
    indptr = group.create_dataset("indptr", shape=(shape[0] + 1,), dtype=np.int64)
    indptr[0] = 0
    row = nnz = 0
    for chunk in chunks:
        n = chunk.nnz
        for dataset, values in ((data, chunk.data), (indices, chunk.indices)):
            dataset.resize((nnz + n,))
            dataset[nnz : nnz + n] = values
        indptr[row + 1 : row + 1 + chunk.shape[0]] = chunk.indptr[1:] + nnz
        row, nnz = row + chunk.shape[0], nnz + n
    if row != shape[0]:
        raise RuntimeError(f"wrote {row} rows, expected {shape[0]}")


def _obs(ctx: np.ndarray, cond: np.ndarray, truth: dict[str, np.ndarray]) -> pd.DataFrame:
    """Cell labels: condition and context as categoricals, zero-padded cell ids."""
    conditions = [CONTROL, *map(str, truth["perturbations"])]
    contexts = list(map(str, truth["contexts"]))
    n_cells = ctx.size
    width = len(str(max(n_cells - 1, 0)))
    return pd.DataFrame(
        {
            PERTURBATION_KEY: pd.Categorical.from_codes(cond, categories=conditions),
            CONTEXT_KEY: pd.Categorical.from_codes(ctx, categories=contexts),
        },
        index=pd.Index([f"cell{i:0{width}d}" for i in range(n_cells)]),
    )


def _var(n_genes: int) -> pd.DataFrame:
    """Gene ids G0000, G0001, ..."""
    return pd.DataFrame(index=[f"G{g:0{max(4, len(str(n_genes - 1)))}d}" for g in range(n_genes)])


def _uns(truth: dict[str, np.ndarray], params: dict[str, Any]) -> dict[str, Any]:
    """The ground truth, h5ad-writable (float32 arrays, n_controls filled in)."""
    ground_truth = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in truth.items()}
    stored = {**params, "n_controls": params["n_controls"] or params["cells_per_group"]}
    ground_truth["params"] = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in stored.items()}
    return {"ground_truth": ground_truth}
