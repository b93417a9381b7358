"""Pseudobulk profiles: per-(context, perturbation) group sums and means, and shifts from the context's control.

Shared by the harness (reference baselines, the real Δ of other groups) and by predictors that learn from
pseudobulks, so the harness never imports its reference computations from `predictors/`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.task import Task, dense, lognorm_batches

Group = tuple[str, str]  # (context, perturbation)


def group_sums(
    x, contexts: np.ndarray, perturbations: np.ndarray
) -> tuple[list[Group], np.ndarray, np.ndarray]:
    """Every (context, perturbation) group, its per-gene sums over its cells and its size (float64), via one
    sparse indicator product (x dense or sparse; never densified)."""
    codes = pd.MultiIndex.from_arrays([np.asarray(contexts), np.asarray(perturbations)])
    group_of_cell, groups = pd.factorize(codes)
    sizes = np.bincount(group_of_cell, minlength=len(groups)).astype(np.float64)
    indicator = sp.csr_matrix(
        (np.ones(len(group_of_cell)), (group_of_cell, np.arange(len(group_of_cell)))),
        shape=(len(groups), len(group_of_cell)),
    )
    sums = dense(indicator @ x)
    return [(str(t), str(p)) for t, p in groups], sums, sizes


def group_means(train: AnnData, task: Task) -> dict[Group, np.ndarray]:
    """Mean log-normalized profile of every (context, perturbation) group."""
    groups, sums, sizes = lognorm_group_sums(train, task)
    means = sums / sizes[:, None]
    return {group: means[i] for i, group in enumerate(groups)}


def lognorm_group_sums(adata: AnnData, task: Task) -> tuple[list[Group], np.ndarray, np.ndarray]:
    """`group_sums` of the log-normalized cells of `adata`, read batch by batch (`lognorm_batches`): memory holds
    one batch, never a second full matrix. One batch (the committed datasets) is exactly `group_sums` on all."""
    contexts, perturbations = task.contexts(adata), task.perturbations(adata)
    codes = pd.MultiIndex.from_arrays([np.asarray(contexts), np.asarray(perturbations)])
    group_of_cell, labels = pd.factorize(codes)
    total: np.ndarray | None = None
    for rows, x in lognorm_batches(adata, task):
        if rows == slice(0, adata.n_obs):
            return group_sums(x, contexts, perturbations)
        part = group_of_cell[rows]
        indicator = sp.csr_matrix(
            (np.ones(len(part)), (part, np.arange(len(part)))), shape=(len(labels), len(part))
        )
        batch = dense(indicator @ x)
        total = batch if total is None else total + batch
    sizes = np.bincount(group_of_cell, minlength=len(labels)).astype(np.float64)
    return [(str(t), str(p)) for t, p in labels], total, sizes


def split_controls(
    means: dict[Group, np.ndarray], task: Task
) -> tuple[dict[str, np.ndarray], dict[Group, np.ndarray]]:
    """Control profile per context, and the shift of every perturbed group whose context has controls."""
    controls = {t: m for (t, p), m in means.items() if p == task.control_label}
    shifts = {
        (t, p): m - controls[t] for (t, p), m in means.items() if p != task.control_label and t in controls
    }
    return controls, shifts


def group_profiles(adata: AnnData, task: Task) -> tuple[dict[Group, np.ndarray], dict[Group, int]]:
    """Mean log-normalized profile and cell count of every (context, perturbation) group of `adata`."""
    groups, sums, sizes = lognorm_group_sums(adata, task)
    means = sums / sizes[:, None]
    return (
        {group: means[i] for i, group in enumerate(groups)},
        {group: int(sizes[i]) for i, group in enumerate(groups)},
    )
