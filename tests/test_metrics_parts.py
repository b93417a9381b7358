"""The split scoring modules behave as the one `benchmark.scoring.metrics` namespace they were."""

from __future__ import annotations

import subprocess
import sys

import benchmark.scoring.evaldata as evaldata
import benchmark.scoring.mean_scores as mean_scores
import benchmark.scoring.metrics as metrics_module


def test_a_setting_patched_on_metrics_reaches_the_part_that_reads_it(monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_DISTANCE_CELLS", 7)
    monkeypatch.setattr(metrics_module, "L1_CHUNK_VALUES", 3)
    assert evaldata.MAX_DISTANCE_CELLS == 7 and mean_scores.L1_CHUNK_VALUES == 3
    assert len(metrics_module.subsample_index(100)) == 7
    monkeypatch.undo()
    assert evaldata.MAX_DISTANCE_CELLS == metrics_module.MAX_DISTANCE_CELLS == 2000
    assert len(evaldata.subsample_index(2500)) == 2000


def test_the_registry_keeps_the_board_order_whichever_part_is_imported_first():
    code = (
        "import benchmark.scoring.distribution_scores\n"
        "from benchmark.scoring.registry import METRICS\n"
        "print(','.join(METRICS))"
    )
    first = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert first.split(",") == list(metrics_module.METRICS)
    assert list(metrics_module.METRICS)[:2] == ["r", "jaccard_25"]
    assert list(metrics_module.METRICS)[-1] == "var_ratio"
