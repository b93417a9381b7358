"""Speed of the harness's own per-split work on kang2018 (CD4T held out): PCA space, scoring, noise ceiling."""

from __future__ import annotations

from benchmark.core.task import dense
from benchmark.scoring.ceiling import noise_ceiling
from benchmark.scoring.embedding import fit_embedding
from benchmark.scoring.metrics import EvalData, score


def _cells(kang, ids):
    return dense(kang.task.lognorm(kang.adata[list(ids)]))


def test_bench_pca_embedding(benchmark, kang_cd4t):
    kang, _, train = kang_cd4t
    embed = benchmark.pedantic(fit_embedding, args=(kang.task.lognorm(train),), rounds=3, iterations=1)
    assert embed.components.shape == (50, kang.adata.n_vars)


def test_bench_score_all_metrics(benchmark, kang_cd4t):
    kang, split, train = kang_cd4t
    target = split.targets[0]
    control, real = _cells(kang, target.control_cells), _cells(kang, target.test_cells)
    embed = fit_embedding(kang.task.lognorm(train))
    scores = benchmark(lambda: score(EvalData(control=control, real=real, pred=control, embed=embed)))
    assert scores["energy_distance"] > 0


def test_bench_noise_ceiling(benchmark, kang_cd4t):
    kang, split, train = kang_cd4t
    target = split.targets[0]
    control, real = _cells(kang, target.control_cells), _cells(kang, target.test_cells)
    embed = fit_embedding(kang.task.lognorm(train))
    ceiling = benchmark.pedantic(noise_ceiling, args=(control, real, embed), rounds=3, iterations=1)
    assert 0 < ceiling["r"] <= 1
