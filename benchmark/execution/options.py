"""What a `bench run` asks for (RunOptions) and what it returns (RunResult), shared by the runner, the per-target
scorer and `bench score`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.core import progress as bars
from benchmark.scoring.evaluate import (
    TargetResult,
)


@dataclass
class RunOptions:
    """What `bench run` asked for beyond predictor, dataset and split kind."""

    seeds: tuple[int, ...] = (0,)
    params: dict[str, Any] = field(default_factory=dict)
    perturbations: tuple[str, ...] | None = None
    save_predictions: bool = False
    figures: bool = True
    embedding: str = "umap"
    cache_dir: Path | None = None
    max_splits: int | None = None
    config: dict[str, Any] | None = None
    """A `bench tune` config (benchmark.selection.tuning): each split's parameters come from it, `params` on top."""
    config_source: str = ""
    score_threads: int | None = None
    """Targets the engine scores at once (None: `score_threads`' default); results do not depend on it."""


@dataclass
class RunResult:
    """Everything a run produced: per-target results, the parent MLflow run, where the summary figure is."""

    predictor: str
    dataset: str
    split_kind: str
    parent_run_id: str
    results: list[TargetResult]
    skipped: tuple[str, ...] = ()

    def table(self) -> pd.DataFrame:
        """One row per scored (or not applicable) target and seed."""
        rows = []
        for r in self.results:
            rows.append(
                {"split": r.label, "seed": r.seed, "status": r.status, **r.metrics, "reason": r.reason}
            )
        return pd.DataFrame(rows)


Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    bars.write(message)
