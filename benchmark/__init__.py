"""pertbench: an honest benchmarking harness for single-cell perturbation-response predictors."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("pertbench")  # one source: pyproject.toml's version
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_PUBLIC = {
    "NotApplicable": "benchmark.core.errors",
    "PertbenchError": "benchmark.core.errors",
    "Predictor": "benchmark.core.protocol",
    "Task": "benchmark.core.task",
    "check_predictor": "benchmark.conformance",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: `bench` starts (and answers Ctrl-C) before pandas loads."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
