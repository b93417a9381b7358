"""Speed of the engine on one whole screen-like target: the prediction, the mean oracle and the noise ceiling.

The target is the rank-sum benchmark's (8,000 genes, 500 control cells, 30 real and 500 predicted cells of
log-normalized counts, about 90% zeros), scored by `evaluate_target` as the runner does (every registered metric,
20 ceiling halves, a 50-component PCA embedding of the control cells, 40 other groups for discrimination), with no
reference predictor. The two-thread case scores two such targets at once, as the runner's scoring threads do; the
one-thread case scores the same two in turn. The load average when it ran goes in `extra_info`: record it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_bench_ranksum import GENES, screen_target

from benchmark.scoring.embedding import fit_embedding
from benchmark.scoring.evaluate import evaluate_target


@pytest.fixture(scope="module")
def targets():
    out = []
    for seed in (1, 2):
        control, real, pred, _oracle = screen_target(seed)
        embed = fit_embedding(control)
        others = np.random.default_rng(seed).normal(0, 0.1, size=(40, GENES))
        out.append((control, real, pred, embed, others))
    return out


def score_target(control, real, pred, embed, others):
    """Prediction, mean oracle and ceiling of one target, as the runner scores it."""
    return evaluate_target(control, real, pred, embed, {}, others=others, seed=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_whole_target(benchmark, targets, threads):
    score_target(*targets[0])  # warm-up: compiled kernels load on first use

    def run():
        if threads == 1:
            return [score_target(*t) for t in targets]
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda t: score_target(*t), targets))

    results = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(
        {"targets": len(targets), "threads": threads, "load_average_1min": os.getloadavg()[0]}
    )
    assert all(np.isfinite(r.metrics["r"]) for r in results)
