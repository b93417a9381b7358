"""The growth curve is drawn from pytest-benchmark JSON of the scale benchmarks, and the README table with it."""

from __future__ import annotations

import json

import pytest

from benchmark.core.errors import PertbenchError
from benchmark.reports.scale_report import SCALE_END, SCALE_START, main, scale_records


def _results(seconds: float = 30.0, when: str = "2026-12-06T12:00:00") -> dict:
    def record(cells: int, predictor: str) -> dict:
        info = {"case": "grid", "cells": cells, "predictor": predictor, "seconds": seconds * cells / 1e5}
        info.update(
            {"peak_gb": 0.5 + cells / 1e6, "genes": 2000, "split": "holdout_context", "load_before": 1.0}
        )
        return {"name": f"test_bench_scale[grid-{cells}-{predictor}]", "extra_info": info}

    benches = [record(n, p) for n in (50_000, 100_000) for p in ("mean_shift", "linear")]
    benches.append({"name": "test_bench_pca_embedding", "extra_info": {}})  # not a scale record: ignored
    return {"datetime": when, "machine_info": {"node": "box"}, "benchmarks": benches}


def test_records_are_read_sorted_and_the_newest_run_wins():
    records = scale_records([_results(30.0), _results(60.0)])
    assert [(r["cells"], r["predictor"]) for r in records] == [
        (50_000, "linear"),
        (50_000, "mean_shift"),
        (100_000, "linear"),
        (100_000, "mean_shift"),
    ]
    assert records[-1]["seconds"] == pytest.approx(60.0)
    older, newer = _results(90.0, "2026-12-01T09:00:00"), _results(45.0, "2026-12-07T09:00:00")
    for order in ([older, newer], [newer, older]):  # the newer run wins whatever the file order
        assert scale_records(order)[-1]["seconds"] == pytest.approx(45.0)
    with pytest.raises(PertbenchError, match="no scale benchmark records"):
        scale_records([{"benchmarks": [{"name": "x", "extra_info": {}}]}])


def test_command_draws_the_png_and_rewrites_the_readme_block(tmp_path):
    results = tmp_path / "latest.json"
    results.write_text(json.dumps(_results()))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{SCALE_START}\nstale table\n{SCALE_END}\nrest\n")
    png = tmp_path / "docs" / "scale.png"
    assert main([str(results), "--png", str(png), "--readme", str(readme)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    assert "stale table" not in text and "![growth curve](docs/scale.png)" in text and text.endswith("rest\n")
    assert "| grid | 100,000 | 2000 | holdout_context | mean_shift |" in text
    assert main([str(tmp_path / "missing.json"), "--png", str(png)]) == 1
