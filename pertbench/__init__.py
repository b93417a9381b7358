"""pertbench's Python API for notebooks: `import pertbench as pb`.

    res_a = pb.run("mean_shift", dataset="kang2018", max_splits=1)
    res_b = pb.run("linear", dataset="kang2018", max_splits=1)
    cmp = pb.compare(res_a, res_b)
    print(cmp.verdict())
    cmp.figure("compare.png")

A thin face over the harness that `bench` drives: the same runner, scoring engine and MLflow records. See
docs/python-api.md.
"""

from __future__ import annotations

from pertbench.api import Result, list_metrics, list_predictors, load_dataset, run, score
from pertbench.compare import Comparison, compare

__all__ = [
    "Comparison",
    "Result",
    "compare",
    "list_metrics",
    "list_predictors",
    "load_dataset",
    "run",
    "score",
]
