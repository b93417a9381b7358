"""The README speed paragraph is written from pytest-benchmark's JSON, between its markers, and nowhere else."""

from __future__ import annotations

import json

import pytest

from benchmark.core.errors import PertbenchError
from benchmark.reports.speed_report import (
    BENCHMARKS,
    SCALE_BENCHMARK,
    SCALE_END,
    SCALE_START,
    SPEED_END,
    SPEED_START,
    main,
    render_scale,
    render_speed,
)


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


def _scale() -> dict:
    info = {
        "cells": 50_000,
        "genes": 2000,
        "train_cells": 49_900,
        "control_cells": 2500,
        "fit_seconds": 101.4,
        "fit_cpu_seconds": 180.2,
        "predict_seconds": 6.2,
        "predict_cpu_seconds": 9.0,
        "train_seconds": 88.0,
        "epochs": 12,
        "steps": 2000,
        "step_budget": 2000,
        "stopped_early": False,
        "gflops": 55.0,
        "threads": 2,
        "cpus": 2,
        "load_before": 0.3,
        "load_after": 2.1,
    }
    return {"datetime": "2026-12-06T12:00:00", "benchmarks": [{"name": SCALE_BENCHMARK, "extra_info": info}]}


def test_scale_paragraph_quotes_the_fit_the_budget_and_the_load() -> None:
    text = render_scale(_scale())
    for expected in (
        "50,000-cell x 2,000-gene",
        "fitted in 101 s (180 s of CPU;",
        "2,000 of 2,000 optimizer steps",
        "the step budget",
    ):
        assert expected in text
    assert "load average 0.3 before and 2.1 after; other jobs were running" in text
    assert "2 torch thread(s) on 2 CPUs" in text
    idle = _scale()
    idle["benchmarks"][0]["extra_info"].update(load_before=0.1, load_after=0.4)
    assert "nothing else was running" in render_scale(idle)


def test_a_run_of_one_blocks_benchmarks_rewrites_that_block_only(tmp_path) -> None:
    readme, results = tmp_path / "README.md", tmp_path / "latest.json"
    readme.write_text(f"{SPEED_START}\nkang kept\n{SPEED_END}\n{SCALE_START}\nstale 999\n{SCALE_END}\n")
    results.write_text(json.dumps(_scale()))
    assert main([str(results), str(readme)]) == 0
    text = readme.read_text()
    assert "kang kept" in text and "fitted in 101 s" in text and "stale 999" not in text
    both = _results()
    both["benchmarks"] += _scale()["benchmarks"]
    results.write_text(json.dumps(both))
    assert main([str(results), str(readme)]) == 0
    assert "kang kept" not in readme.read_text() and "took 187 s" in readme.read_text()


def test_nothing_is_written_when_a_block_to_write_has_no_markers(tmp_path) -> None:
    readme, results = tmp_path / "README.md", tmp_path / "latest.json"
    original = f"{SPEED_START}\nkept\n{SPEED_END}\n"  # no scale block
    readme.write_text(original)
    both = _results()
    both["benchmarks"] += _scale()["benchmarks"]
    results.write_text(json.dumps(both))
    assert main([str(results), str(readme)]) == 1
    assert readme.read_text() == original
