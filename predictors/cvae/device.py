"""Where the CVAE computes: the `device` hyperparameter's check and torch's CPU thread count for a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_device(name: str, value: object) -> None:
    """'auto', 'cpu', or (when torch sees a CUDA device) 'cuda' / 'cuda:<index>' of an existing device."""
    allowed = ["auto", "cpu"]
    if torch.cuda.is_available():
        allowed += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if isinstance(value, str) and value in allowed:
        return
    if torch.cuda.is_available():
        why = f"{torch.cuda.device_count()} CUDA device(s) visible"
    else:
        why = (
            "no CUDA device is visible" if torch.backends.cuda.is_built() else "this torch build has no CUDA"
        )
    raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))} ({why}), got {value!r}")
