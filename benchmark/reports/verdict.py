"""The verdict line of a dataset: per headline metric, its predictors ordered by mean with the paired-interval
relation between neighbours, e.g. `r: cvae_modeB ≈ linear > mean_shift (95% paired)`.

`>` means the 95% Student-t interval of the paired per-split differences between the two neighbours excludes 0,
in the metric's better direction; `≈` means it contains 0 (or fewer than two shared splits). Each sign compares
only the two predictors beside it, so `a ≈ b ≈ c` does not say that a and c are tied. The statistics are the
leaderboard's (`rank_predictors`, `lead_within_noise`), so a verdict never disagrees with the board's ≈ marks.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from benchmark.reports.board_stats import lead_within_noise, rank_predictors
from benchmark.scoring.metrics import METRICS

AHEAD, TIED = ">", "≈"
CONFIDENCE = "95% paired"


def chain(frames: dict[str, pd.DataFrame], metric: str) -> list[tuple[str, str]]:
    """(predictor, relation to the next one) best first; the last relation is ''. Predictors without a defined
    score on `metric` are left out. Order: the leaderboard's ranking (mean on the splits all of them scored)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    order = rank_predictors(frames, metric)
    links = []
    for first, second in zip(order, order[1:], strict=False):
        tied = lead_within_noise(frames[first][metric], frames[second][metric])
        links.append((first, TIED if tied else AHEAD))
    if order:
        links.append((order[-1], ""))
    return links


def verdict_line(frames: dict[str, pd.DataFrame], metric: str) -> str:
    """One metric's verdict, e.g. `r: linear ≈ cvae_modeB > mean_shift (95% paired)`."""
    links = chain(frames, metric)
    if not links:
        return f"{metric}: no predictor has a defined score"
    text = " ".join(f"{name} {rel}" if rel else name for name, rel in links)
    missing = [p for p in frames if p not in {name for name, _ in links}]
    note = f"; no score: {', '.join(missing)}" if missing else ""
    return f"{metric}: {text} ({CONFIDENCE}{note})"


def verdict_lines(frames: dict[str, pd.DataFrame], metrics: Iterable[str]) -> list[str]:
    """A verdict line per metric, from per-split frames (predictor -> frame indexed by split, one column per
    metric; the shape of `leaderboard.per_split` and `Board.scores`). Metrics no frame holds are skipped."""
    return [
        verdict_line(frames, m)
        for m in metrics
        if any(m in f.columns and f[m].notna().any() for f in frames.values())
    ]
