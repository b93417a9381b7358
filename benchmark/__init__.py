"""pertbench: an honest benchmarking harness for single-cell perturbation-response predictors."""

from __future__ import annotations

import importlib
from typing import Any

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
    if (
        name == "__version__"
    ):  # one source, pyproject.toml's version, read on first use (importlib.metadata is slow)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pertbench")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
