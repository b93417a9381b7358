"""The README speed paragraph is written from pytest-benchmark's JSON, between its markers, and nowhere else."""

from __future__ import annotations

import json

import pytest

from benchmark.errors import PertbenchError
from benchmark.speed_report import BENCHMARKS, SPEED_END, SPEED_START, main, render_speed


def _results() -> dict:
    info = {
        "ceiling": {"gflops": 200.0, "threads": 2},
        "step": {"gflops": 130.0},
        "fit": {"epochs": 61, "best_epoch": 49, "gflops": 90.0},
        "full": {
            "mode_b_seconds": 187.4,
            "mode_a_seconds": 12.6,
            "fit_seconds_min": 17.04,
            "fit_seconds_mean": 22.5,
            "fit_seconds_max": 28.96,
        },
    }
    stats = {"ceiling": 0.08, "step": 0.04, "fit": 21.26, "full": 187.4}
    return {
        "datetime": "2026-11-24T09:00:00",
        "benchmarks": [
            {"name": BENCHMARKS[role], "extra_info": info[role], "stats": {"min": stats[role]}}
            for role in BENCHMARKS
        ],
    }


def test_paragraph_quotes_the_measured_numbers() -> None:
    text = render_speed(_results())
    for expected in (
        "took 187 s",
        "after it 13 s",
        "(61 epochs, best 49)",
        "in 21.3 s",
        "130 GFLOP/s",
        "17.0-29.0 s (mean 22.5 s)",
    ):
        assert expected in text
    assert "ceiling of 200 GFLOP/s (65%)" in text and "90 GFLOP/s (45%)" in text


def test_block_is_replaced_between_markers_only(tmp_path) -> None:
    readme, results = tmp_path / "README.md", tmp_path / "latest.json"
    readme.write_text(f"# t\n{SPEED_START}\nold 999 s\n{SPEED_END}\nafter\n")
    results.write_text(json.dumps(_results()))
    assert main([str(results), str(readme)]) == 0
    text = readme.read_text()
    assert "old 999" not in text and "took 187 s" in text
    assert text.startswith(f"# t\n{SPEED_START}\n") and text.endswith(f"{SPEED_END}\nafter\n")


def test_partial_results_are_refused_and_the_readme_is_untouched(tmp_path) -> None:
    partial = _results()
    partial["benchmarks"] = partial["benchmarks"][:2]
    with pytest.raises(PertbenchError, match="run the whole `make bench`"):
        render_speed(partial)
    readme, results = tmp_path / "README.md", tmp_path / "latest.json"
    original = f"{SPEED_START}\nkept\n{SPEED_END}\n"
    readme.write_text(original)
    results.write_text(json.dumps(partial))
    assert main([str(results), str(readme)]) == 1
    assert readme.read_text() == original
