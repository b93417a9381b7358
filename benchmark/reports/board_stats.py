"""The leaderboard's statistics: per-split means with Student-t intervals, the best row of a column and whether
its lead is within noise (paired intervals), and scores normalized between the reference baseline and the
noise ceiling.

Scores are first averaged over seeds within each split; each metric is then the mean over splits ± the
half-width of a 95% Student-t interval across splits; the best mean per column is marked unless the top values
tie, and flagged when its lead over the runner-up is within noise (the 95% t-interval of their paired
per-split differences contains 0). Splits share training data, so the intervals are a guide, not an exact test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.reports.board_data import Board
from benchmark.scoring.ceiling import normalized_score
from benchmark.scoring.metrics import METRICS


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean and 95% Student-t half-width over the finite values (half-width NaN for fewer than 2)."""
    x = values.to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    if len(x) < 2:
        return float(x.mean()), float("nan"), 1
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half), len(x)


def lead_within_noise(best: pd.Series, runner_up: pd.Series) -> bool:
    """True when the paired differences' 95% t-interval over shared (split, seed) units contains 0."""
    paired = pd.concat([best, runner_up], axis=1, join="inner").dropna()
    if len(paired) < 2:
        return True
    diff = paired.iloc[:, 0] - paired.iloc[:, 1]
    mean, half, _ = mean_ci(diff)
    return not np.isfinite(half) or abs(mean) <= half


def _goodness(values: pd.Series, higher: bool | None) -> float:
    """The mean mapped so that larger is better (NaN when undefined)."""
    mean = mean_ci(values)[0]
    if not np.isfinite(mean):
        return np.nan
    return -abs(mean) if higher is None else (mean if higher else -mean)


TIE_TOLERANCE = 1e-6
"""Top values closer than this (relative to max(1, |value|)) are a tie: no row is bold. Predictions are float32,
so "control cells + a constant shift" reproduces the controls' spread only to float32 rounding (~1e-7): such
rows must tie on var_ratio, whatever the shift."""


def _ranked(frames: dict[str, pd.DataFrame], metric: str) -> list[tuple[str, float]]:
    """(row, goodness on the splits all rows scored), best first; rows without a defined score left out."""
    scored = {p: f[metric].dropna() for p, f in frames.items() if metric in f and f[metric].notna().any()}
    if not scored:
        return []
    common = set.intersection(*(set(v.index) for v in scored.values()))
    higher = METRICS[metric].higher_is_better
    key = {p: _goodness(v.loc[sorted(common)] if common else v, higher) for p, v in scored.items()}
    return sorted(key.items(), key=lambda item: -item[1])


def rank_predictors(frames: dict[str, pd.DataFrame], metric: str) -> list[str]:
    """Predictors with a defined score, best first, compared on the splits they all scored.

    Means over different split sets are not comparable (a predictor that declines the hard splits would win),
    so ranking uses the common splits; the table still shows each predictor's mean over its own splits.
    """
    return [p for p, _ in _ranked(frames, metric)]


def best_row(frames: dict[str, pd.DataFrame], metric: str) -> tuple[str, bool] | None:
    """The row to bold for `metric` and whether its lead is within noise; None when the top values tie."""
    order = _ranked(frames, metric)
    if not order:
        return None
    if len(order) > 1:
        (first, g1), (second, g2) = order[0], order[1]
        if abs(g1 - g2) <= TIE_TOLERANCE * max(1.0, abs(g1)):
            return None
        return first, lead_within_noise(frames[first][metric], frames[second][metric])
    return order[0][0], False


def _normalized_of(scores: pd.Series, refs: pd.Series, ceil: pd.Series, metric: str) -> float:
    """Ratio of means over the splits where score, reference and ceiling are all defined."""
    scores = scores.dropna()
    refs, ceil = refs.reindex(scores.index), ceil.reindex(scores.index)
    keep = refs.notna() & ceil.notna()
    if not keep.any():
        return float("nan")
    return normalized_score(
        scores[keep].mean(), refs[keep].mean(), ceil[keep].mean(), METRICS[metric].higher_is_better
    )


def normalized(board: Board, predictor: str, metric: str) -> float:
    """(mean score − mean reference) / (mean ceiling − mean reference) over the predictor's scored splits.

    A ratio of means across splits: per-split ratios explode where a split's ceiling is barely above its
    baseline. 0 = the reference baseline, 1 = the noise ceiling; unclipped (the per-split values are in MLflow).
    """
    ceil = board.ceiling[metric] if metric in board.ceiling else pd.Series(dtype=float)
    return _normalized_of(board.scores[predictor][metric], board.references[predictor][metric], ceil, metric)


def normalized_oracle(board: Board, metric: str) -> float:
    """The mean oracle's normalized score, against the reference baseline of the same splits."""
    if board.oracle.empty or metric not in board.oracle or metric not in board.ceiling:
        return float("nan")
    refs = [f[metric] for f in board.references.values() if metric in f]
    if not refs:
        return float("nan")
    ref = pd.concat(refs).groupby(level=0).first()
    return _normalized_of(board.oracle[metric], ref, board.ceiling[metric], metric)
