"""Figures: expected panels, labels and legends, and PNG files written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.reports.figures import _build_composite, _build_summary, composite_figure, summary_figure
from benchmark.scoring.metrics import EvalData, score

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n_cells: int = 40, n_genes: int = 150, seed: int = 0) -> EvalData:
    rng = np.random.default_rng(seed)
    delta = rng.normal(0, 1, n_genes)
    control = rng.normal(size=(n_cells, n_genes))
    real = delta + rng.normal(size=(n_cells, n_genes))
    pred = 0.8 * delta + rng.normal(size=(n_cells // 2, n_genes))
    return EvalData(control, real, pred)


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_composite_has_four_labelled_panels():
    data = _data()
    scores = score(data, ["r", "jaccard_25", "jaccard_50", "jaccard_100"])
    reference = {"jaccard_25": 0.5, "jaccard_50": 0.6, "jaccard_100": float("nan")}
    genes = [f"G{i}" for i in range(150)]
    fig = _build_composite(
        data, scores, reference, "norman / split 0 / mlp / seed 1", embedding="pca", top_k=10, genes=genes
    )
    assert fig._suptitle.get_text() == "norman / split 0 / mlp / seed 1"
    delta, top, jacc, cells, _colorbar = fig.axes
    order = np.argsort(-np.abs(data.delta_true), kind="stable")[:10]
    assert [t.get_text() for t in top.get_yticklabels()] == [genes[g] for g in order]  # named, by |Δ true|
    np.testing.assert_allclose(top.images[0].get_array()[:, 1], data.delta_pred[order])
    assert {t.get_text() for t in delta.texts} == {
        genes[g] for g in order
    }  # the top genes named on the scatter
    assert f"r = {scores['r']:.3g}" in delta.get_title()
    assert "true" in delta.get_xlabel().lower() and "pred" in delta.get_ylabel().lower()
    assert _legend_texts(delta) == ["all genes", "top 10 true genes", "y = x"]
    assert [t.get_text() for t in jacc.get_xticklabels()] == ["K = 25", "K = 50", "K = 100"]
    assert len(jacc.patches) == 6 and len(_legend_texts(jacc)) == 2
    heights = [p.get_height() for p in jacc.patches]
    assert heights[:3] == pytest.approx([scores[f"jaccard_{k}"] for k in (25, 50, 100)])
    assert heights[3:5] == pytest.approx([0.5, 0.6])
    assert _legend_texts(cells) == ["control", "real perturbed", "predicted"]
    assert cells.get_xlabel() == "PCA 1"


def test_composite_without_reference_and_with_embedding():
    data = _data(n_cells=10)
    embedded = EvalData(data.control, data.real, data.pred, embed=lambda x: x[:, :5])
    fig = _build_composite(embedded, score(data), None, "t", embedding="umap")
    assert len(fig.axes[2].patches) == 3 and _legend_texts(fig.axes[2]) == ["predictor"]
    assert fig.axes[3].get_xlabel() == "PCA 1"  # 25 cells in total: too few for UMAP


def test_composite_figure_writes_png_in_new_directory(tmp_path):
    import matplotlib.pyplot as plt

    data = _data()
    for i in range(2):
        path = composite_figure(
            data, score(data), None, "t", tmp_path / "a" / "b" / f"c{i}.png", embedding="pca"
        )
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert plt.get_fignums() == []
    assert path.stat().st_size < 400_000


def test_composite_umap_panel(tmp_path):
    data = _data(n_cells=40, n_genes=60)
    fig = _build_composite(data, score(data), None, "t", embedding="umap", seed=0)
    assert fig.axes[3].get_xlabel() == "UMAP 1"
    offsets = [c.get_offsets() for c in fig.axes[3].collections]
    assert [len(o) for o in offsets] == [40, 40, 20] and all(np.isfinite(o).all() for o in offsets)


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "r": [0.9, 0.5, np.nan],
            "mse_mean": [0.01, 0.2, 0.05],
            "var_ratio": [-3.0, 0.1, 0.5],
            "custom": [1, 2, 3],
        },
        index=pd.Index(["split_a", "split_b", "split_c"], name="split"),
    )


def test_summary_colours_are_oriented_so_better_is_higher():
    fig = _build_summary(_table(), "summary", directions={"custom": False})
    heat = fig.axes[0]
    colours = heat.images[0].get_array()
    assert colours.shape == (3, 4)
    # r (higher better): split_a best; mse_mean (lower better): split_a best; var_ratio (best at 0): split_b
    assert colours[0, 0] == 1.0 and colours[1, 0] == 0.0 and np.ma.is_masked(colours[2, 0])
    assert colours[0, 1] == 1.0 and colours[1, 1] == 0.0
    assert colours[1, 2] == 1.0 and colours[0, 2] == 0.0
    assert colours[0, 3] == 1.0 and colours[2, 3] == 0.0  # direction given explicitly: lower better
    assert len(heat.texts) == 12 and "NaN" in [t.get_text() for t in heat.texts]
    labels = [t.get_text() for t in heat.get_xticklabels()]
    assert labels == ["r ↑", "mse_mean ↓", "var_ratio →0", "custom ↓"]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["split_a", "split_b", "split_c"]
    assert fig._suptitle.get_text() == "summary"


def test_summary_figure_writes_png(tmp_path):
    path = summary_figure(_table(), "summary", tmp_path / "new" / "summary.png")
    assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_summary_with_references_adds_their_rows_and_colours_by_normalized_score():
    """Reference rows under the splits; each cell coloured by (value − reference) / (ceiling − reference)."""
    table = pd.DataFrame({"r": [0.5, 0.7], "energy_distance": [2.0, 1.0]}, index=["s0", "s1"])
    refs = {
        "reference": pd.DataFrame({"r": [0.4, 0.4], "energy_distance": [3.0, 3.0]}, index=table.index),
        "ceiling": pd.DataFrame({"r": [0.9, 0.9], "energy_distance": [0.0, 0.0]}, index=table.index),
    }
    fig = _build_summary(table, "t", references=refs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["s0", "s1", "mean of splits", "reference (mean)", "noise ceiling (mean)"]
    shade = np.asarray(ax.images[0].get_array())  # (normalized + 1) / 2
    np.testing.assert_allclose(shade[:, 0], (np.array([0.2, 0.6, 0.4, 0.0, 1.0]) + 1) / 2)
    np.testing.assert_allclose(shade[:, 1], (np.array([1 / 3, 2 / 3, 0.5, 0.0, 1.0]) + 1) / 2)
