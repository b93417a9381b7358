"""Cell matrices to tensors and the per-gene and per-group summaries training starts from: the one place training
and generation densify rows (sparse stays sparse until then)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from benchmark.core.task import Task


def dense_rows(x: Any, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Dense float32 tensor of the given rows: sparse input is densified one mini-batch at a time."""
    block = x[idx]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)


def tensors(
    pert: np.ndarray, ctx: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Covariate rows (perturbation multi-hot, context one-hot or None) as tensors on device."""
    pert_t = torch.from_numpy(np.ascontiguousarray(pert)).to(device)
    return pert_t, None if ctx is None else torch.from_numpy(np.ascontiguousarray(ctx)).to(device)


def gene_moments(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (float32), computed without densifying sparse input."""
    mean = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
    sq = (
        x.multiply(x).mean(axis=0)
        if sp.issparse(x)
        else np.square(np.asarray(x, dtype=np.float64)).mean(axis=0)
    )
    var = np.maximum(np.asarray(sq, dtype=np.float64).ravel() - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def condition_ids(perts: np.ndarray, control_label: str) -> np.ndarray:
    """Integer code per perturbation label, 0 for control (the MMD's condition groups)."""
    labels = [control_label] + sorted(set(perts) - {control_label})
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[p] for p in perts], dtype=np.int64)


def covariate_rows(
    genes: list[str], context: str, n: int, perturbation_genes: list[str], contexts: list[str] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """n identical covariate rows: the perturbation multi-hot, and the context one-hot (None: contexts unused)."""
    pert = np.zeros((n, len(perturbation_genes)), dtype=np.float32)
    pert[:, [perturbation_genes.index(g) for g in genes]] = 1.0
    ctx = None
    if contexts is not None:
        ctx = np.zeros((n, len(contexts)), dtype=np.float32)
        ctx[:, contexts.index(context)] = 1.0
    return pert, ctx


def covariate_matrices(
    perts: np.ndarray,
    contexts: np.ndarray,
    task: Task,
    perturbation_genes: list[str],
    context_list: list[str] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Covariates of every training cell: multi-hot perturbations, one-hot contexts (None: contexts unused)."""
    pert_index = {g: i for i, g in enumerate(perturbation_genes)}
    pert = np.zeros((len(perts), len(perturbation_genes)), dtype=np.float32)
    for label in np.unique(perts):
        cols = [pert_index[g] for g in task.genes_of(label)]
        pert[np.ix_(np.flatnonzero(perts == label), cols)] = 1.0
    if context_list is None:
        return pert, None
    ctx_index = {c: i for i, c in enumerate(context_list)}
    ctx = np.zeros((len(perts), len(context_list)), dtype=np.float32)
    ctx[np.arange(len(perts)), [ctx_index[c] for c in contexts]] = 1.0
    return pert, ctx
