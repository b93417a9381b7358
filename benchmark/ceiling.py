"""The noise ceiling (how well the real cells predict themselves) and scores normalized between baseline and ceiling.

The ceiling splits the real perturbed cells into two random halves, scores one half as a "prediction" of the
other against the same control cells, and averages over repeats. Each half has only half of the real cells,
so the ceiling is conservative (a little pessimistic) for sample-size-sensitive metrics: mean-based metrics
carry twice the sampling noise of a full-size comparison, and energy distance / MMD V-statistics are biased
upwards for small samples. A predictor can therefore legitimately beat the ceiling (normalized score > 1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import numpy as np

from benchmark.metrics import METRICS, EvalData, score
from benchmark.task import dense


def noise_ceiling(
    data_control: np.ndarray,
    real: np.ndarray,
    embed: Callable[[np.ndarray], np.ndarray] | None,
    n_repeats: int = 20,
    seed: int = 0,
    names: Iterable[str] | None = None,
    others: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean of each metric over `n_repeats` random half-splits of the real cells (one half predicts the other).

    With an odd number of cells the "real" half gets the extra cell. With fewer than 2 real cells the ceiling
    is undefined and every metric is NaN. Repeats where a metric is NaN are left out of its mean.
    """
    names = list(METRICS) if names is None else list(names)
    control, real = dense(data_control), dense(real)
    n = real.shape[0]
    if n < 2:
        return {name: float("nan") for name in names}
    rng = np.random.default_rng(seed)
    runs: dict[str, list[float]] = {name: [] for name in names}
    real_z = EvalData(control=control, real=real, pred=real[:1], embed=embed).real_z  # embed every cell once
    for _ in range(n_repeats):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2 :]
        half = EvalData(
            control=control, real=real[b], pred=real[a], embed=embed, others=others
        ).with_embedded(real_z[b], real_z[a])
        for name, value in score(half, names).items():
            runs[name].append(value)
    return {name: _nanmean(values) for name, values in runs.items()}


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values, NaN (without a warning) when there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values else float("nan")


def _goodness(x: float, higher_is_better: bool | None) -> float:
    """Map a metric value so that larger is better: x, −x, or −|x| for best-at-0 metrics."""
    if higher_is_better is None:
        return -abs(x)
    return x if higher_is_better else -x


def normalized_score(value: float, baseline: float, ceiling: float, higher_is_better: bool | None) -> float:
    """(value − baseline) / (ceiling − baseline) in the metric's direction: 0 at the baseline, 1 at the ceiling.

    Best-at-0 metrics (higher_is_better None) are compared by absolute value. NaN when any input is NaN, or
    when the ceiling is not strictly better than the baseline (the scale is then undefined or inverted).
    Never clipped: use `clip_for_display` for plots and tables.
    """
    if any(math.isnan(float(v)) for v in (value, baseline, ceiling)):
        return float("nan")
    g_value, g_base, g_ceil = (_goodness(float(v), higher_is_better) for v in (value, baseline, ceiling))
    if not g_ceil > g_base:
        return float("nan")
    return (g_value - g_base) / (g_ceil - g_base)


def clip_for_display(x, lo: float = -1.0, hi: float = 1.0):
    """Clip a normalized score (float or array) to [lo, hi] for display; NaN stays NaN."""
    clipped = np.clip(x, lo, hi)
    return float(clipped) if np.ndim(clipped) == 0 else clipped
