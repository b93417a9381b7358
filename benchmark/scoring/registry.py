"""The metric registry: each named metric with its direction, kind and noise-ceiling rule, and `score`, which runs
the requested ones on one `EvalData`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmark.core.errors import PertbenchError

if TYPE_CHECKING:
    from benchmark.scoring.evaldata import EvalData


@dataclass(frozen=True)
class Metric:
    """A named metric: its function, direction (None = best at 0), whether it compares means or cells
    (`kind`), and the rule its noise ceiling follows (`ceiling`, one of CEILING_RULES)."""

    name: str
    fn: Callable[[EvalData], float]
    higher_is_better: bool | None
    description: str
    kind: str
    ceiling: str = "halves"


CEILING_HALVES = "halves"
"""Size-matched bootstrap halves of the real cells, half A scored as a prediction of half B on copies of the cells:
right for any metric, and the rule of a metric that declares none."""
CEILING_MOMENTS = "moments"
"""Bootstrap halves, for a metric that reads only per-gene means and variances of the cells (top-K overlaps,
discrimination, var_ratio): on large groups the halves' moments come from draw counts, without copying cells."""
CEILING_EXPECTED_MEAN = "expected_mean"
"""The expected score of the true perturbed mean against the n observed cells (Spearman–Brown; `oracle_ceiling`
holds each such metric's formula)."""
CEILING_CELL_PAIRS = "cell_pairs"
"""A cell-level U-statistic over bootstrap halves that leaves out a cell paired with its own copy (the energy,
MMD and CRPS ceilings; `ceiling._CellCeiling` holds each formula)."""
CEILING_RANK_SUM = "rank_sum"
"""The DE scores of bootstrap halves from one sort of the real cells (`ceiling._DeCeiling`)."""
CEILING_RULES = (CEILING_HALVES, CEILING_MOMENTS, CEILING_EXPECTED_MEAN, CEILING_CELL_PAIRS, CEILING_RANK_SUM)


METRICS: dict[str, Metric] = {}
"""All registered metrics, by name, in registration order."""


def register_metric(
    name: str, higher_is_better: bool | None, kind: str, description: str, ceiling: str = CEILING_HALVES
) -> Callable[[Callable[[EvalData], float]], Callable[[EvalData], float]]:
    """Decorator adding a metric function to METRICS under `name`, with its direction, kind and ceiling rule."""
    if kind not in ("mean", "distribution"):
        raise ValueError(f"metric kind must be 'mean' or 'distribution', got {kind!r}")
    if ceiling not in CEILING_RULES:
        raise ValueError(f"metric ceiling rule must be one of {', '.join(CEILING_RULES)}, got {ceiling!r}")

    def decorate(fn: Callable[[EvalData], float]) -> Callable[[EvalData], float]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, higher_is_better, description, kind, ceiling)
        return fn

    return decorate


def score(data: EvalData, names: Iterable[str] | None = None) -> dict[str, float]:
    """Every requested metric (all by default) on `data`, as floats (NaN where undefined)."""
    names = list(METRICS) if names is None else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise PertbenchError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {n: float(METRICS[n].fn(data)) for n in names}
