"""Cell matrices to tensors: the one place training and generation densify rows (sparse stays sparse until then)."""

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
