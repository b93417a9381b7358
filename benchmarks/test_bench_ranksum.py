"""Speed of the per-target rank-sum DE tests on a screen-like target, on one scoring thread and on two.

One target: 8,000 genes, 500 control cells, 30 real cells and 500 predicted cells of log-normalized counts, about
90% zeros. Its three DE tests are those the engine runs per target (`EvalData.de_real`, `de_pred` of the
prediction, `de_pred` of the mean oracle sharing the real side), BH included; the cells are built beforehand.
The two-thread case scores two such targets at once, as the runner's scoring threads do; the one-thread case
scores the same two one after the other, so their ratio is the threads' scaling. The load average when it ran
goes in `extra_info`: record it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from benchmark.scoring.evaluate import as_scored, mean_oracle
from benchmark.scoring.metrics import EvalData

GENES, CONTROLS, REAL, PRED = 8_000, 500, 30, 500


def screen_target(seed: int) -> tuple[np.ndarray, ...]:
    """Control, real, predicted and mean-oracle cells of one sparse screen-like target (log1p of Poisson
    counts)."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.3, 0.35, size=GENES)  # most genes rarely expressed: ~90% zeros overall
    shift = np.where(rng.random(GENES) < 0.05, rng.uniform(0.3, 3.0, GENES), 1.0)
    control = np.log1p(rng.poisson(rate, size=(CONTROLS, GENES))).astype(np.float64)
    real = np.log1p(rng.poisson(rate * shift, size=(REAL, GENES))).astype(np.float64)
    pred = np.log1p(rng.poisson(rate * shift, size=(PRED, GENES))) + rng.normal(0, 0.05, (PRED, GENES))
    return control, real, as_scored(pred), as_scored(mean_oracle(control, real))


def de_tests(
    control: np.ndarray, real: np.ndarray, pred: np.ndarray, oracle: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The target's three BH-corrected DE tests as the engine runs them: real, prediction, mean oracle."""
    first = EvalData(control=control, real=real, pred=pred)
    de_real, de_pred = first.de_real, first.de_pred
    second = EvalData(control=control, real=real, pred=oracle)
    second.sharing_real(first)  # as the engine: the oracle reuses the sorted control and the real cells' test
    return de_real, de_pred, second.de_pred


@pytest.fixture(scope="module")
def targets():
    return [screen_target(seed) for seed in (1, 2)]


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_rank_sum_de_tests(benchmark, targets, threads):
    de_tests(*targets[0])  # warm-up (a compiled kernel's first call loads it)
    zeros = np.mean([np.mean(t[0] == 0) for t in targets])

    def run():
        if threads == 1:
            return [de_tests(*t) for t in targets]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda t: de_tests(*t), targets))

    out = benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.extra_info.update(
        threads=threads,
        targets=len(targets),
        shape={"genes": GENES, "controls": CONTROLS, "real": REAL, "pred": PRED},
        control_zero_fraction=round(float(zeros), 3),
        load_average=list(os.getloadavg()),
        cpu_count=os.cpu_count(),
    )
    assert len(out) == 2 and all(q.shape == (GENES,) for tests in out for q in tests)
    assert (out[0][0] < 0.05).sum() > 0  # the shifted genes are found in the real cells
