"""The comparison figure: a PNG whose rows follow the declared aggregate (mean clipped normalized score)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.reports.compare_figure import build_comparison, comparison_figure, normalized_frame
from benchmark.reports.leaderboard import Board

METRICS = ["r", "energy_distance_shape"]


def _board() -> Board:
    rng = np.random.default_rng(0)
    idx = pd.Index([f"s{i}" for i in range(5)], name="split")
    ref = pd.DataFrame(
        {"r": rng.uniform(0.2, 0.4, 5), "energy_distance_shape": rng.uniform(0.5, 0.7, 5)}, index=idx
    )
    ceil = ref + pd.Series({"r": 0.5, "energy_distance_shape": -0.4})
    fractions = {
        "weak": 0.1,
        "strong": 0.8,
        "reference": 0.0,
        "middling": 0.4,
    }  # dict order is not the ranking
    scores = {name: ref + (ceil - ref) * f + rng.normal(0, 0.005, ref.shape) for name, f in fractions.items()}
    return Board("toy", "holdout_context", scores, ceil, {k: ref for k in scores}, {}, {}, {})


def test_writes_a_png(tmp_path):
    path = comparison_figure(_board(), tmp_path / "fig" / "compare.png", METRICS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_follow_the_mean_normalized_score():
    board = _board()
    _, order = build_comparison(board, METRICS)
    assert order == ["strong", "middling", "weak", "reference"]
    values, halves = normalized_frame(board, METRICS)
    assert values.loc["strong", "r"] > 0.7 and abs(values.loc["reference", "r"]) < 0.05
    assert (halves.loc["strong"] < 0.1).all()
