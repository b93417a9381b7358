"""One comparison figure per dataset: predictors x headline metrics as normalized scores, and a forest plot of
each predictor's paired difference from the reference baseline.

Heat map cells: the leaderboard's normalized score (`leaderboard.normalized`: ratio of means over the
predictor's splits, 0 = reference baseline, 1 = noise ceiling) ± the 95% paired interval of (score − reference)
over splits divided by the mean headroom |ceiling − reference| (the denominator held fixed). Rows are ordered by
the declared aggregate ROW_AGGREGATE: the mean over the shown metrics of the normalized score clipped to
[-1, 1], so one metric with almost no headroom cannot decide the order. The forest panels show, in the metric's
own units, mean(score − reference) per predictor with its 95% paired t-interval; the reference is the baseline
the engine scored on the same splits and cells (`Board.references`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from benchmark.reports.board_data import Board
from benchmark.reports.board_stats import mean_ci, normalized
from benchmark.reports.figures import save_png
from benchmark.scoring.ceiling import clip_for_display
from benchmark.scoring.metrics import METRICS
from benchmark.tracking import schema

DPI = 110
FOREST_METRICS = ("r", "energy_distance_shape")
"""The forest panels: one mean score and one shape score."""
ROW_AGGREGATE = "mean normalized score (clipped to [-1, 1]) over the shown metrics"
CMAP = "cividis"
"""Colour-blind-safe, monotone in lightness (also readable in grey)."""


def paired_difference(board: Board, predictor: str, metric: str) -> tuple[float, float, int]:
    """Mean, 95% t half-width and n of (score − reference) over the predictor's splits with both defined."""
    scores = board.scores[predictor]
    refs = board.references.get(predictor, pd.DataFrame())
    if metric not in scores or metric not in refs:
        return float("nan"), float("nan"), 0
    paired = pd.concat([scores[metric], refs[metric]], axis=1, join="inner").dropna()
    return mean_ci(paired.iloc[:, 0] - paired.iloc[:, 1])


def _headroom(board: Board, predictor: str, metric: str) -> float:
    """|mean ceiling − mean reference| over the predictor's splits where both are defined (NaN if none)."""
    refs = board.references.get(predictor, pd.DataFrame())
    if metric not in refs or metric not in board.ceiling:
        return float("nan")
    paired = pd.concat([refs[metric], board.ceiling[metric]], axis=1, join="inner").dropna()
    paired = paired.loc[paired.index.intersection(board.scores[predictor].index)]
    if paired.empty:
        return float("nan")
    return float(abs(paired.iloc[:, 1].mean() - paired.iloc[:, 0].mean()))


def normalized_frame(board: Board, metrics: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(normalized scores, their half-widths): predictors x metrics, in the board's row order."""
    values = pd.DataFrame(index=list(board.scores), columns=list(metrics), dtype=float)
    halves = values.copy()
    for p in board.scores:
        for m in metrics:
            values.loc[p, m] = normalized(board, p, m)
            room = _headroom(board, p, m)
            half = paired_difference(board, p, m)[1]
            halves.loc[p, m] = half / room if np.isfinite(room) and room > 0 else np.nan
    return values, halves


def row_order(values: pd.DataFrame) -> list[str]:
    """Predictors by ROW_AGGREGATE, best first (ties and all-NaN rows keep the board's order, NaN rows last)."""
    agg = pd.DataFrame(clip_for_display(values.to_numpy(dtype=float)), index=values.index).mean(axis=1)
    keyed = [(-(a if np.isfinite(a) else -np.inf), i) for i, a in enumerate(agg)]
    return [values.index[i] for _, i in sorted(keyed)]


def _arrow(metric: str) -> str:
    higher = METRICS[metric].higher_is_better if metric in METRICS else True
    return "↑" if higher else "↓" if higher is False else "→0"


def _heatmap(ax: Axes, values: pd.DataFrame, halves: pd.DataFrame, fig: Figure) -> None:
    shown = clip_for_display(values.to_numpy(dtype=float))
    cmap = colormaps[CMAP].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v, h = float(values.iat[i, j]), float(halves.iat[i, j])
            text = "NaN" if not np.isfinite(v) else f"{v:.2f}" + (f"\n±{h:.2f}" if np.isfinite(h) else "")
            dark = bool(np.isfinite(shown[i, j]) and shown[i, j] < -0.4)  # cividis is dark below about -0.4
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="w" if dark else "k")
    ax.set_xticks(
        range(values.shape[1]), [f"{m} {_arrow(m)}" for m in values.columns], rotation=30, ha="right"
    )
    ax.set_yticks(range(values.shape[0]), list(values.index))
    ax.set_xlabel("metric (↑ higher better, ↓ lower better, →0 best at 0)")
    ax.set_title("normalized score ± 95% paired interval", fontsize=10)
    bar = fig.colorbar(image, ax=ax, location="right", fraction=0.04, pad=0.02, ticks=[-1, 0, 1])
    bar.ax.set_yticklabels(["≤ −1", "0 = ref.", "1 = ceiling"], fontsize=8)


def _forest(ax: Axes, board: Board, order: list[str], metric: str) -> None:
    colour = "#3b4cc0"
    for i, p in enumerate(order):
        mean, half, n = paired_difference(board, p, metric)
        if not np.isfinite(mean):
            ax.text(0, i, "n/a", ha="center", va="center", fontsize=8, color="0.4")
            continue
        err = half if np.isfinite(half) else 0.0
        ax.errorbar(mean, i, xerr=err, fmt="o", color=colour, ecolor=colour, capsize=3, ms=5)
    ax.axvline(0, color="0.3", lw=1, ls="--")
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_yticks(range(len(order)), [""] * len(order))
    higher = METRICS[metric].higher_is_better if metric in METRICS else True
    better = "right" if higher else "left" if higher is False else "toward 0 |score|"
    unit = "embedding units" if metric in METRICS and METRICS[metric].kind == "distribution" else "unitless"
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlabel(f"{metric} − reference\n({unit}; {_arrow(metric)} better: {better})", fontsize=9)
    ax.set_title(f"paired Δ {metric}, 95% CI", fontsize=10)


def build_comparison(
    board: Board,
    metrics: Sequence[str] | None = None,
    forest_metrics: Sequence[str] = FOREST_METRICS,
    title: str | None = None,
) -> tuple[Figure, list[str]]:
    """The comparison figure of one board and the row order it used (best first)."""
    metrics = [m for m in (metrics or schema.headline_metrics())]
    values, halves = normalized_frame(board, metrics)
    order = row_order(values)
    values, halves = values.loc[order], halves.loc[order]
    forest_metrics = list(forest_metrics)
    n = len(order)
    width = 1.15 * len(metrics) + 3.2 * len(forest_metrics) + 3.5
    fig = Figure(figsize=(width, max(3.6, 0.55 * n + 2.8)), layout="constrained")
    grid = fig.add_gridspec(
        1, 1 + len(forest_metrics), width_ratios=[max(2, len(metrics)), *[2] * len(forest_metrics)]
    )
    _heatmap(fig.add_subplot(grid[0, 0]), values, halves, fig)
    for k, metric in enumerate(forest_metrics, start=1):
        _forest(fig.add_subplot(grid[0, k]), board, order, metric)
    fig.suptitle(title or f"{board.dataset} · {board.split_kind}: rows by {ROW_AGGREGATE}", fontsize=11)
    return fig, order


def comparison_figure(
    board: Board,
    path: Path | str,
    metrics: Sequence[str] | None = None,
    forest_metrics: Sequence[str] = FOREST_METRICS,
    title: str | None = None,
) -> Path:
    """Write the comparison figure of one board as a PNG and return its path."""
    fig, _ = build_comparison(board, metrics, forest_metrics, title)
    return save_png(fig, path, dpi=DPI)
