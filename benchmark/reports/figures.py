"""Figures: a per-prediction composite (Δ scatter, top genes, top-K overlap, cell embedding) and a per-run summary heat map.

Figures are built as `matplotlib.figure.Figure` objects rendered by the Agg canvas, never through pyplot, so no
global figure state accumulates in loops; the `_build_*` functions return the figure for inspection.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.scoring.metrics import METRICS, EvalData, pearson, top_k_genes

DPI = 96
JACCARD_KS = (25, 50, 100)
UMAP_MIN_CELLS = 30
"""Below this many cells in total the cell panel uses PCA instead of UMAP."""
MAX_CELLS_PER_GROUP = 500
"""Each group (control, real, predicted) is subsampled to this many cells for the embedding panel."""
LABELLED_GENES = 10
"""Top true genes named on the Δ scatter (all top-K are named in the heat map beside it)."""
GROUP_COLORS = {"control": "#9e9e9e", "real perturbed": "#1f77b4", "predicted": "#ff7f0e"}


def composite_figure(
    data: EvalData,
    scores: dict,
    reference_scores: dict | None,
    title: str,
    path,
    embedding: str = "umap",
    seed: int = 0,
    top_k: int = 25,
    genes: Sequence[str] | None = None,
) -> Path:
    """Write the composite PNG for one prediction and return its path (`genes`: names for the top genes)."""
    fig = _build_composite(
        data, scores, reference_scores, title, embedding=embedding, seed=seed, top_k=top_k, genes=genes
    )
    return save_png(fig, path)


def summary_figure(
    table: pd.DataFrame,
    title: str,
    path,
    directions: dict[str, bool | None] | None = None,
    references: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """Write the split x metric heat map PNG and return its path (`references`: see `_build_summary`)."""
    return save_png(_build_summary(table, title, directions, references), path)


def save_png(fig: Figure, path, dpi: int = DPI) -> Path:
    """Render a figure to PNG (creating parent directories) and drop it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    fig.clear()
    return path


# ---------------------------------------------------------------------------------------------- composite


def _build_composite(
    data: EvalData,
    scores: dict,
    reference_scores: dict | None,
    title: str,
    embedding: str = "umap",
    seed: int = 0,
    top_k: int = 25,
    genes: Sequence[str] | None = None,
) -> Figure:
    """The composite figure: Δ scatter (top genes named), a heat map of the top genes' Δ true against predicted,
    J(K) bars against the reference, and the cell embedding."""
    fig = Figure(figsize=(19, 5.2), layout="constrained")
    ax_delta, ax_genes, ax_jacc, ax_cells = fig.subplots(1, 4, width_ratios=[1, 0.45, 1, 1])
    names = (
        [str(g) for g in genes] if genes is not None else [f"gene {i}" for i in range(data.delta_true.size)]
    )
    _delta_panel(ax_delta, data, scores, top_k, names)
    _top_genes_panel(ax_genes, data, top_k, names)
    _jaccard_panel(ax_jacc, scores, reference_scores)
    _cells_panel(ax_cells, data, embedding, seed)
    fig.suptitle(title)
    return fig


def _delta_panel(ax: Axes, data: EvalData, scores: dict, top_k: int, names: Sequence[str]) -> None:
    """Scatter Δ_pred against Δ_true over all genes, top-K true genes highlighted (the first LABELLED_GENES
    named), with the y = x line."""
    dt, dp = data.delta_true, data.delta_pred
    r = scores.get("r", pearson(dt, dp))
    ax.scatter(dt, dp, s=4, c="#b0b0b0", alpha=0.6, linewidths=0, label="all genes", rasterized=True)
    top = top_k_genes(dt, min(top_k, dt.size))
    if top is not None:
        ax.scatter(dt[top], dp[top], s=14, c="#d62728", linewidths=0, label=f"top {len(top)} true genes")
        for g in top[:LABELLED_GENES]:
            ax.annotate(names[g], (dt[g], dp[g]), xytext=(3, 3), textcoords="offset points", fontsize=7)
    lo, hi = _span(np.concatenate([dt, dp]))
    ax.plot([lo, hi], [lo, hi], ls="--", c="k", lw=0.8, label="y = x")
    ax.set_xlabel("Δ true (real − control mean)")
    ax.set_ylabel("Δ predicted (pred − control mean)")
    ax.set_title(f"Mean shift per gene: r = {_fmt(r)}")
    ax.legend(loc="upper left", fontsize=8, frameon=False)


def _top_genes_panel(ax: Axes, data: EvalData, top_k: int, names: Sequence[str]) -> None:
    """Heat map of the top-K true genes' Δ (rows, by |Δ true|), true beside predicted, on one symmetric diverging
    scale (PuOr, colour-blind safe)."""
    top = top_k_genes(data.delta_true, min(top_k, data.delta_true.size))
    if top is None:
        ax.set_axis_off()
        ax.set_title("Top genes: Δ true is flat")
        return
    values = np.column_stack([data.delta_true[top], data.delta_pred[top]])
    bound = float(np.max(np.abs(values))) or 1.0
    image = ax.imshow(values, cmap="PuOr_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks([0, 1], ["true", "predicted"])
    ax.set_yticks(range(len(top)), [names[g] for g in top], fontsize=7)
    ax.set_title(f"Top {len(top)} genes: Δ")
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.08)
    bar.set_label("Δ (vs control mean)")


def _span(values: np.ndarray) -> tuple[float, float]:
    """Range of the values, padded, for the y = x line (a unit span when they are all equal)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def _jaccard_panel(ax: Axes, scores: dict, reference_scores: dict | None) -> None:
    """Bars of J(K) for K = 25, 50, 100, with the reference (mean_shift) bars beside them."""
    x = np.arange(len(JACCARD_KS))
    series = [("predictor", scores, "#ff7f0e")]
    if reference_scores is not None:
        series.append(("mean_shift (reference)", reference_scores, "#7f7f7f"))
    width = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        heights = [float(values.get(f"jaccard_{k}", np.nan)) for k in JACCARD_KS]
        pos = x + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(pos, np.nan_to_num(heights, nan=0.0), width, label=label, color=color)
        ax.bar_label(bars, labels=[_fmt(h) for h in heights], fontsize=8, padding=2)
    ax.set_xticks(x, [f"K = {k}" for k in JACCARD_KS])
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("top-K genes by |Δ|")
    ax.set_ylabel("Jaccard overlap J(K), true vs predicted")
    ax.set_title("Top-K gene overlap")
    ax.legend(loc="upper center", ncols=2, fontsize=8, frameon=False)


def _cells_panel(ax: Axes, data: EvalData, embedding: str, seed: int) -> None:
    """Control, real perturbed and predicted cells embedded together (UMAP, or PCA for few cells)."""
    groups = _subsample_groups(data, seed)
    stacked = np.vstack(list(groups.values()))
    if data.embed is not None:
        stacked = np.asarray(data.embed(stacked), dtype=np.float64)
    use_umap = embedding == "umap" and stacked.shape[0] >= UMAP_MIN_CELLS
    coords = _umap_2d(stacked, seed) if use_umap else _pca_2d(stacked)
    start = 0
    for name, cells in groups.items():
        part = coords[start : start + cells.shape[0]]
        start += cells.shape[0]
        ax.scatter(part[:, 0], part[:, 1], s=6, alpha=0.6, c=GROUP_COLORS[name], linewidths=0, label=name)
    method = "UMAP" if use_umap else "PCA"
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Cells ({method}, fitted on all shown)")
    ax.legend(loc="best", fontsize=8, markerscale=2, frameon=False)


def _subsample_groups(data: EvalData, seed: int) -> dict[str, np.ndarray]:
    """The three cell groups, each subsampled (without replacement, seeded) to MAX_CELLS_PER_GROUP."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, cells in (("control", data.control), ("real perturbed", data.real), ("predicted", data.pred)):
        if cells.shape[0] > MAX_CELLS_PER_GROUP:
            cells = cells[np.sort(rng.choice(cells.shape[0], MAX_CELLS_PER_GROUP, replace=False))]
        out[name] = cells
    return out


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components of the rows (zeros pad when there are fewer)."""
    centered = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centered, full_matrices=False)
    coords = u[:, :2] * s[:2]
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def _umap_2d(x: np.ndarray, seed: int) -> np.ndarray:
    """UMAP to 2-D (n_neighbors 15, seeded, low memory), after PCA to 50 dims for raw-gene input."""
    if x.shape[1] > 50:
        x = _pca_project(x, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap  # slow (numba) import, only when a UMAP is drawn; warns about tensorflow

        reducer = umap.UMAP(n_neighbors=min(15, x.shape[0] - 1), random_state=seed, low_memory=True)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _pca_project(x: np.ndarray, k: int) -> np.ndarray:
    """Rows projected on their top-k principal components."""
    centered = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centered, full_matrices=False)
    return u[:, :k] * s[:k]


# ---------------------------------------------------------------------------------------------- summary


def _build_summary(
    table: pd.DataFrame,
    title: str,
    directions: dict[str, bool | None] | None = None,
    references: dict[str, pd.DataFrame] | None = None,
) -> Figure:
    """Heat map of metric values (rows = splits, columns = metrics).

    With `references` (the same splits' scores of the reference baseline and the noise ceiling, as
    {"reference": frame, "ceiling": frame[, "oracle": frame]}), rows for their means are added under a mean row
    and every cell is coloured by its normalized score: 0 = the reference's mean, 1 = the ceiling's, clipped to
    [-1, 1]. Without, colours are scaled per column so better = yellow."""
    dirs = [_direction(col, directions) for col in table.columns]
    if references and {"reference", "ceiling"} <= set(references):
        return _build_normalized_summary(table, title, dirs, references)
    values = table.to_numpy(dtype=np.float64)
    colours = np.column_stack([_goodness_scaled(values[:, j], d) for j, d in enumerate(dirs)])
    return _heat_map(table, values, colours, dirs, title, "per-column scale", (0.0, 1.0), ("worst", "best"))


SUMMARY_ROWS = {
    "reference": "reference (mean)",
    "oracle": "mean oracle (mean)",
    "ceiling": "noise ceiling (mean)",
}
"""The rows `_build_summary` adds under the splits, in order, with their labels."""


def _build_normalized_summary(
    table: pd.DataFrame, title: str, dirs: list[bool | None], references: dict[str, pd.DataFrame]
) -> Figure:
    """The summary with mean, reference, oracle and ceiling rows, coloured by normalized score."""
    from benchmark.scoring.ceiling import clip_for_display, normalized_score

    def means(frame: pd.DataFrame) -> pd.Series:
        return frame.reindex(columns=table.columns).mean(axis=0, skipna=True)

    ref, ceil = means(references["reference"]), means(references["ceiling"])
    rows = [table, pd.DataFrame([table.mean(axis=0, skipna=True)], index=["mean of splits"])]
    rows += [
        pd.DataFrame([means(references[k])], index=[label])
        for k, label in SUMMARY_ROWS.items()
        if k in references
    ]
    shown = pd.concat(rows)
    values = shown.to_numpy(dtype=np.float64)
    colours = np.array(
        [
            [
                clip_for_display(normalized_score(v, ref.iloc[j], ceil.iloc[j], dirs[j]))
                for j, v in enumerate(row)
            ]
            for row in values
        ],
        dtype=np.float64,
    )
    return _heat_map(
        shown,
        values,
        (colours + 1.0) / 2.0,
        dirs,
        title,
        "normalized score",
        (0.0, 1.0),
        ("-1", "0 = reference", "1 = ceiling"),
        ticks=(0.0, 0.5, 1.0),
        separator=len(table) - 0.5,
    )


def _heat_map(
    shown: pd.DataFrame,
    values: np.ndarray,
    colours: np.ndarray,
    dirs: list[bool | None],
    title: str,
    scale_label: str,
    limits: tuple[float, float],
    tick_labels: tuple[str, ...],
    ticks: tuple[float, ...] = (0.0, 1.0),
    separator: float | None = None,
) -> Figure:
    """The annotated heat map shared by both summary styles (colours in [0, 1])."""
    table = shown
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(max(4.0, 1.25 * n_cols + 2.5), max(2.5, 0.45 * n_rows + 1.8)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        np.ma.masked_invalid(colours), cmap=_cmap(), vmin=limits[0], vmax=limits[1], aspect="auto"
    )
    if separator is not None:  # the splits above, their mean and the reference rows below
        ax.axhline(separator, color="w", lw=2)
    for i in range(n_rows):
        for j in range(n_cols):
            shade = colours[i, j]
            dark = bool(shade < 0.6)  # NaN compares False: dark text on the grey NaN cells
            ax.text(
                j, i, _fmt(values[i, j]), ha="center", va="center", fontsize=8, color="w" if dark else "k"
            )
    ax.set_xticks(
        range(n_cols),
        [f"{c} {_arrow(d)}" for c, d in zip(table.columns, dirs, strict=True)],
        rotation=30,
        ha="right",
    )
    ax.set_yticks(range(n_rows), [str(i) for i in table.index])
    ax.set_xlabel("metric (↑ higher better, ↓ lower better, →0 best at 0)")
    ax.set_ylabel(str(table.index.name or "split"))
    bar = fig.colorbar(image, ax=ax, fraction=0.04, ticks=list(ticks))
    bar.ax.set_yticklabels(list(tick_labels))
    bar.set_label(scale_label)
    fig.suptitle(title)
    return fig


def _cmap():
    """Viridis with NaN cells in light grey."""
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#d9d9d9")


def _direction(name: str, directions: dict[str, bool | None] | None) -> bool | None:
    """A column's direction: the given mapping, else the registered metric's, else higher is better."""
    if directions is not None and name in directions:
        return directions[name]
    return METRICS[name].higher_is_better if name in METRICS else True


def _goodness_scaled(column: np.ndarray, higher_is_better: bool | None) -> np.ndarray:
    """Column min-max scaled to [0, 1] with 1 = best (|x| for best-at-0); constant columns map to 0.5."""
    good = -np.abs(column) if higher_is_better is None else (column if higher_is_better else -column)
    finite = good[np.isfinite(good)]
    if finite.size == 0:
        return np.full(column.shape, np.nan)
    lo, hi = finite.min(), finite.max()
    if hi == lo:
        return np.where(np.isfinite(good), 0.5, np.nan)
    return np.where(np.isfinite(good), (good - lo) / (hi - lo), np.nan)


def _arrow(higher_is_better: bool | None) -> str:
    """The direction marker used in column labels."""
    return "→0" if higher_is_better is None else ("↑" if higher_is_better else "↓")


def _fmt(x) -> str:
    """Three significant digits, or 'NaN'."""
    x = float(x)
    return "NaN" if np.isnan(x) else f"{x:.3g}"
