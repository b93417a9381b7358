"""`pb.compare`: paired differences from a reference, the verdict line and the comparison figure of several
results on one dataset and split kind, with the leaderboard's statistics (`mean_ci`, `lead_within_noise`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.errors import PertbenchError
from benchmark.reports.compare_figure import build_comparison, comparison_figure
from benchmark.reports.leaderboard import Board, lead_within_noise, mean_ci
from benchmark.reports.verdict import AHEAD, TIED, verdict_lines
from benchmark.scoring.metrics import METRICS
from benchmark.tracking import schema
from pertbench.api import Result

ENGINE_REFERENCE = "reference baseline"
"""The unit-by-unit reference when no result is named `reference`: the baseline the engine scores beside every
prediction (mean_shift; additive for combinations)."""
COMPARISON_COLUMNS = [
    "predictor",
    "metric",
    "direction",
    "n",
    "mean",
    "reference_mean",
    "difference",
    "low",
    "high",
    "relation",
]


@dataclass
class Comparison:
    """Several results on one dataset and split kind, compared unit by unit (split x target, seeds averaged)."""

    board: Board
    reference: str
    metrics: tuple[str, ...]
    reference_frame: pd.DataFrame | None
    """The reference result's per-unit scores (None: each result's own engine reference rows are used)."""

    def _reference_of(self, predictor: str) -> pd.DataFrame:
        if self.reference_frame is not None:
            return self.reference_frame
        return self.board.references[predictor]

    @property
    def table(self) -> pd.DataFrame:
        """Per predictor and metric: mean(predictor − reference) over shared units with its 95% t-interval; the
        relation is '>' (better than the reference), '<' (worse) or '≈' (the interval contains 0)."""
        rows = []
        for p, frame in self.board.scores.items():
            if self.reference_frame is not None and p == self.reference:
                continue
            ref = self._reference_of(p)
            for m in self.metrics:
                if m not in frame or m not in ref:
                    continue
                paired = pd.concat([frame[m], ref[m]], axis=1, join="inner").dropna()
                mean, half, n = mean_ci(paired.iloc[:, 0] - paired.iloc[:, 1])
                higher = METRICS[m].higher_is_better
                relation = TIED
                if not lead_within_noise(paired.iloc[:, 0], paired.iloc[:, 1]):
                    if higher is None:
                        better = paired.iloc[:, 0].abs().mean() < paired.iloc[:, 1].abs().mean()
                    else:
                        better = (mean > 0) == higher
                    relation = AHEAD if better else "<"
                rows.append(
                    (
                        p,
                        m,
                        {True: "higher", False: "lower", None: "zero"}[higher],
                        n,
                        float(paired.iloc[:, 0].mean()) if n else np.nan,
                        float(paired.iloc[:, 1].mean()) if n else np.nan,
                        mean,
                        mean - half,
                        mean + half,
                        relation,
                    )
                )
        return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)

    def frames(self) -> dict[str, pd.DataFrame]:
        """Predictor -> per-unit scores, with the reference as a row of its own when it is not a result."""
        frames = dict(self.board.scores)
        if self.reference_frame is None and self.reference not in frames:
            refs = [f for f in self.board.references.values() if not f.empty]
            if refs:
                frames[self.reference] = pd.concat(refs).groupby(level=0).first()
        return frames

    def verdict(self) -> str:
        """One line per metric, e.g. `r: linear ≈ cvae_modeB > mean_shift (95% paired)`."""
        return "\n".join(verdict_lines(self.frames(), self.metrics))

    def figure(
        self, path: Path | str | None = None, forest_metrics: Sequence[str] = ("r", "energy_distance_shape")
    ):
        """The comparison figure: written as a PNG when `path` is given (returns the path), else returned as a
        matplotlib Figure (displayable in a notebook)."""
        if path is not None:
            return comparison_figure(self.board, path, self.metrics, forest_metrics)
        return build_comparison(self.board, self.metrics, forest_metrics)[0]


def board_of(results: Sequence[Result]) -> Board:
    """A leaderboard Board of results on one dataset and split kind (rows named after their predictors)."""
    if not results:
        raise PertbenchError("compare needs at least one result")
    datasets = {(r.dataset, r.split_kind) for r in results}
    if len(datasets) > 1:
        shown = ", ".join(f"{d} · {k}" for d, k in sorted(datasets))
        raise PertbenchError(f"compare needs results on one dataset and split kind, got {shown}")
    ((dataset, kind),) = datasets
    board = Board(dataset, kind, {}, pd.DataFrame(), {}, {}, {}, {})
    ceilings, oracles = [], []
    for result in results:
        label, k = result.predictor, 2
        while label in board.scores:
            label, k = f"{result.predictor} #{k}", k + 1
        board.scores[label] = result.frame("predictor")
        board.references[label] = result.frame("reference")
        board.parents[label] = result.parent_run_id
        board.not_applicable[label] = len(result.declined)
        ceilings.append(result.frame("ceiling"))
        oracles.append(result.frame("oracle"))
    board.ceiling = pd.concat(ceilings).groupby(level=0).first()
    board.oracle = pd.concat(oracles).groupby(level=0).first()
    return board


def compare(
    *results: Result,
    reference: str = "mean_shift",
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Compare results on one dataset: each against the result named `reference` when there is one, else against
    the engine's reference baseline scored beside it; `metrics` default to the headline metrics."""
    metrics = tuple(metrics or schema.headline_metrics())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise PertbenchError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    board = board_of(results)
    frame = board.scores.get(reference)
    if frame is None:
        engine = {t.reference_name for r in results for t in r.run.results if t.reference_name}
        if reference not in engine:
            raise PertbenchError(
                f"no result is named {reference!r} and the engine's reference baseline is "
                f"{', '.join(sorted(engine)) or 'missing'}; pass that result, or reference= one of these"
            )
        if engine != {reference}:  # mean_shift, and additive for combinations
            reference = f"{ENGINE_REFERENCE} ({', '.join(sorted(engine))})"
    return Comparison(board, reference, metrics, frame)
