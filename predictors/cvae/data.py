"""Cell matrices to tensors and the per-gene and per-group summaries training starts from: the one place training
and generation densify rows (sparse stays sparse until then)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch


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
