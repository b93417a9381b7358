"""Foreign predictors: models in their own pinned environments, run in worker processes (see docs/peers.md).

Lazy: the CLI imports `benchmark.envs.command` at start-up, which must not pull in numpy or anndata."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Environment": "benchmark.envs.foreign",
    "ForeignPredictor": "benchmark.envs.foreign",
    "WorkerError": "benchmark.envs.foreign",
    "EnvSpec": "benchmark.envs.spec",
    "env_root": "benchmark.envs.spec",
    "load_spec": "benchmark.envs.spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'benchmark.envs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
