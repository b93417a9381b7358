"""The verdict line: neighbours ordered by mean, `>` only where the paired interval excludes 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.reports.verdict import chain, verdict_line, verdict_lines

SPLITS = [f"s{i}" for i in range(8)]


def _frame(**columns: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(columns, index=pd.Index(SPLITS, name="split"))


def test_a_clear_lead_reads_ahead_and_noise_reads_tied():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.1, len(SPLITS))
    frames = {
        "mean_shift": _frame(r=base),
        "linear": _frame(r=base + 0.2 + rng.normal(0, 0.01, len(SPLITS))),  # ahead on every split
        "cvae": _frame(r=base + 0.2 + rng.normal(0, 0.05, len(SPLITS))),  # same mean as linear, noisier
    }
    line = verdict_line(frames, "r")
    assert line.endswith("(95% paired)")
    names = line.removeprefix("r: ").removesuffix(" (95% paired)").split(" ")
    assert names[-2:] == [">", "mean_shift"]
    assert set(names[:3:2]) == {"linear", "cvae"} and names[1] == "≈"


def test_equal_scores_are_tied_whatever_the_order():
    same = np.linspace(0.1, 0.9, len(SPLITS))
    frames = {"a": _frame(r=same), "b": _frame(r=same.copy())}
    assert [rel for _, rel in chain(frames, "r")] == ["≈", ""]


def test_lower_is_better_puts_the_smaller_distance_first():
    rng = np.random.default_rng(1)
    far = rng.normal(1.0, 0.1, len(SPLITS))
    frames = {"far": _frame(energy_distance=far), "near": _frame(energy_distance=far - 0.5)}
    assert verdict_line(frames, "energy_distance") == "energy_distance: near > far (95% paired)"


def test_a_predictor_without_scores_is_named_and_unknown_metrics_fail():
    frames = {"a": _frame(r=np.linspace(0, 1, 8)), "b": _frame(r=np.full(8, np.nan))}
    assert verdict_line(frames, "r") == "r: a (95% paired; no score: b)"
    assert verdict_lines(frames, ["r", "jaccard_100"]) == ["r: a (95% paired; no score: b)"]
    with pytest.raises(ValueError, match="unknown metric"):
        chain(frames, "pearson_delta")
