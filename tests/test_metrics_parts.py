"""The split scoring modules behave as the one `benchmark.scoring.metrics` namespace they were."""

from __future__ import annotations

import subprocess
import sys

import benchmark.scoring.metrics as metrics_module


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
