"""Noise ceiling against its analytic value and brute force, on a weak perturbation and on kang2018."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import benchmark.scoring.evaldata as evaldata
import benchmark.scoring.metrics as metrics_module
from benchmark.scoring.ceiling import (
    _CellCeiling,
    _DeCeiling,
    clip_for_display,
    noise_ceiling,
    normalized_score,
    oracle_ceiling,
)
from benchmark.scoring.metrics import METRICS, EvalData, score


def _population(n_genes: int = 2000, seed: int = 0):
    """A per-gene baseline and a known shift Δ; cells are baseline (+ Δ) + Gaussian noise σ."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 3, n_genes), rng.normal(0, 0.3, n_genes)


def _cells(rng, n: int, mean: np.ndarray, sigma: float) -> np.ndarray:
    return mean + sigma * rng.normal(size=(n, mean.size))


def test_mean_ceilings_are_the_expected_scores_of_the_population_mean():
    """The ceiling of r and mse_mean is what predicting the true perturbed mean scores, on average."""
    base, delta = _population()
    n, n_c, sigma = 30, 50, 2.0
    ceilings, oracle = {"r": [], "mse_mean": []}, {"r": [], "mse_mean": []}
    rng = np.random.default_rng(1)
    for _ in range(30):
        control, real = _cells(rng, n_c, base, sigma), _cells(rng, n, base + delta, sigma)
        pred = control - control.mean(0) + base + delta  # cells whose mean is the population's
        for name, value in score(EvalData(control, real, pred), list(oracle)).items():
            oracle[name].append(value)
        for name, value in noise_ceiling(control, real, None, n_repeats=1, names=list(ceilings)).items():
            ceilings[name].append(value)
    assert np.mean(ceilings["r"]) == pytest.approx(np.mean(oracle["r"]), abs=0.01)
    assert np.mean(ceilings["mse_mean"]) == pytest.approx(np.mean(oracle["mse_mean"]), rel=0.03)
    assert np.mean(oracle["r"]) < 0.8  # noisy enough for the test to mean something


def test_ceiling_r_drops_with_noise():
    base, delta = _population(seed=2)
    rng = np.random.default_rng(2)
    low = noise_ceiling(_cells(rng, 100, base, 0.5), _cells(rng, 100, base + delta, 0.5), None, names=["r"])
    high = noise_ceiling(_cells(rng, 100, base, 6.0), _cells(rng, 100, base + delta, 6.0), None, names=["r"])
    assert low["r"] > high["r"] + 0.2


def test_oracle_ceiling_is_nan_without_spread():
    flat = np.ones((5, 4))
    got = oracle_ceiling(EvalData(flat, flat, flat))
    assert math.isnan(got["r"]) and got["mse_mean"] == 0.0


def _brute_half(z: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, h: float) -> dict[str, float]:
    """Half A vs half B with copies of one cell never paired, by loops over draws."""

    def mean_over(pairs_a, pairs_b, f):
        vals = [f(i, j) for i in pairs_a for j in pairs_b if i != j]
        return sum(vals) / len(vals)

    dist = lambda i, j: float(np.linalg.norm(z[i] - z[j]))  # noqa: E731
    kern = lambda i, j: float(np.exp(-np.sum((z[i] - z[j]) ** 2) / h))  # noqa: E731
    energy = 2 * mean_over(a, b, dist) - mean_over(a, a, dist) - mean_over(b, b, dist)
    mmd = mean_over(a, a, kern) + mean_over(b, b, kern) - 2 * mean_over(a, b, kern)
    crps = []
    for g in range(y.shape[1]):
        cross = mean_over(a, b, lambda i, j, g=g: abs(y[i, g] - y[j, g]))
        crps.append(cross - 0.5 * mean_over(a, a, lambda i, j, g=g: abs(y[i, g] - y[j, g])))
    return {"energy_distance": energy, "mmd_rbf": mmd, "crps_deg100": float(np.mean(crps))}


def test_cell_ceiling_leaves_out_pairs_of_copies_exactly():
    rng = np.random.default_rng(3)
    control, real = rng.normal(size=(12, 6)), rng.normal(size=(9, 6)) + 1.0
    full = EvalData(control, real, real[:2])
    names = ["energy_distance", "mmd_rbf", "crps_deg100"]
    cells = _CellCeiling(full, names)
    a, b = rng.integers(0, 9, 9), rng.integers(0, 9, 9)
    got = cells.score(a, b)
    want = _brute_half(full.real_z, real[:, full.deg_index], a, b, full.bandwidth)
    for name in names:
        assert got[name] == pytest.approx(want[name], rel=1e-10), name


def test_distance_ceilings_are_near_zero_and_crps_at_half_the_spread():
    base, delta = _population(n_genes=40, seed=4)
    rng = np.random.default_rng(4)
    names = ["energy_distance", "energy_distance_shape", "mmd_rbf", "crps_deg100"]
    runs = {name: [] for name in names}
    spread = []
    for seed in range(15):
        control, real = _cells(rng, 30, base, 1.0), _cells(rng, 25, base + delta, 1.0)
        for name, value in noise_ceiling(control, real, None, n_repeats=10, seed=seed, names=names).items():
            runs[name].append(value)
        y = real[:, np.argsort(-np.abs(real.mean(0) - control.mean(0)), kind="stable")[:40]]
        spread.append(np.mean(np.abs(y[:, None, :] - y[None, :, :]).sum(axis=(0, 1)) / (25 * 24)))
    for name in ("energy_distance", "energy_distance_shape", "mmd_rbf"):
        mean, se = np.mean(runs[name]), np.std(runs[name]) / np.sqrt(len(runs[name]))
        assert abs(mean) < 3 * se + 0.01, (name, mean, se)
    assert np.mean(runs["crps_deg100"]) == pytest.approx(0.5 * np.mean(spread), rel=0.02)


def test_de_ceiling_fast_path_equals_scoring_the_halves():
    rng = np.random.default_rng(5)
    control = np.floor(rng.exponential(1.0, size=(40, 300)))
    real = np.floor(rng.exponential(1.0, size=(35, 300)) * np.where(np.arange(300) < 40, 3.0, 1.0))
    full = EvalData(control, real, real[:2])
    de = _DeCeiling(full, ["de_overlap_100", "de_direction"])
    for _ in range(3):
        a, b = rng.integers(0, 35, 35), rng.integers(0, 35, 35)
        slow = score(EvalData(control, real[b], real[a]), ["de_overlap_100", "de_direction"])
        assert de.score(a, b) == pytest.approx(slow, rel=1e-12)


def test_ceiling_is_deterministic_per_seed_and_covers_all_metrics():
    base, delta = _population(seed=6)
    rng = np.random.default_rng(6)
    control, real = _cells(rng, 30, base, 1.0), _cells(rng, 40, base + delta, 1.0)
    others = _cells(rng, 3, delta, 0.1)
    embed = lambda x: x[:, :10]  # noqa: E731 - any projection will do
    a = noise_ceiling(control, real, embed, n_repeats=3, seed=1, others=others)
    b = noise_ceiling(control, real, embed, n_repeats=3, seed=1, others=others)
    c = noise_ceiling(control, real, embed, n_repeats=3, seed=2, others=others)
    assert list(a) == list(METRICS) and a == b and a != c
    assert a["discrimination"] > 0.5


def test_ceiling_undefined_with_one_real_cell():
    base, delta = _population(seed=7)
    rng = np.random.default_rng(7)
    got = noise_ceiling(
        _cells(rng, 10, base, 1.0), _cells(rng, 1, base + delta, 1.0), None, names=["r", "mse_mean"]
    )
    assert set(got) == {"r", "mse_mean"} and all(math.isnan(v) for v in got.values())


def test_weak_perturbation_keeps_normalized_scores_defined_and_bounded():
    """Δ = ±0.15σ on 50 of 500 genes, 40 real cells: the old half-split ceiling gave normalized scores of ±10."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        base, delta = rng.uniform(0.5, 3, 500), np.zeros(500)
        delta[:50] = rng.choice([-1, 1], 50) * 0.15
        control, real = _cells(rng, 60, base, 1.0), _cells(rng, 40, base + delta, 1.0)
        estimate = _cells(rng, 300, base + delta, 1.0).mean(0) - _cells(rng, 300, base, 1.0).mean(0)
        reference = control + estimate  # a mean-shift baseline fitted on other cells
        sampler = _cells(rng, 60, base + delta, 1.0)  # samples the true perturbed distribution
        embed = lambda x: x[:, :30]  # noqa: E731
        ceiling = noise_ceiling(control, real, embed, n_repeats=20, seed=0)
        ref = score(EvalData(control, real, reference, embed))
        good = score(EvalData(control, real, sampler, embed))
        norm = {
            m: normalized_score(good[m], ref[m], ceiling[m], METRICS[m].higher_is_better) for m in METRICS
        }
        for name in ("r", "r_deg100", "r2_mean_deg100", "crps_deg100"):
            assert np.isfinite(norm[name]), (seed, name, ref[name], ceiling[name])
        finite = np.array([v for v in norm.values() if np.isfinite(v)])
        assert np.all((finite > -1.5) & (finite < 1.5)), (seed, norm)
        assert good["r"] < ceiling["r"]


def test_normalized_score_higher_is_better():
    assert normalized_score(0.3, 0.3, 0.9, True) == 0.0
    assert normalized_score(0.9, 0.3, 0.9, True) == 1.0
    assert normalized_score(0.6, 0.3, 0.9, True) == pytest.approx(0.5)
    assert normalized_score(1.2, 0.3, 0.9, True) == pytest.approx(1.5)  # never clipped
    assert normalized_score(0.0, 0.3, 0.9, True) == pytest.approx(-0.5)


def test_normalized_score_lower_is_better():
    assert normalized_score(4.0, 4.0, 1.0, False) == 0.0
    assert normalized_score(1.0, 4.0, 1.0, False) == 1.0
    assert normalized_score(2.5, 4.0, 1.0, False) == pytest.approx(0.5)
    assert normalized_score(7.0, 4.0, 1.0, False) == pytest.approx(-1.0)


def test_normalized_score_best_at_zero_uses_absolute_values():
    assert normalized_score(-2.0, -2.0, 0.1, None) == 0.0
    assert normalized_score(0.1, -2.0, 0.1, None) == 1.0
    assert normalized_score(-0.1, -2.0, 0.1, None) == 1.0
    assert normalized_score(1.05, -2.0, 0.1, None) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "value, baseline, ceiling, direction",
    [
        (float("nan"), 0.1, 0.9, True),
        (0.5, float("nan"), 0.9, True),
        (0.5, 0.1, float("nan"), True),
        (0.5, 0.4, 0.4, True),  # ceiling on the baseline: no headroom
        (0.5, 0.9, 0.1, True),  # ceiling below the baseline: no headroom
        (0.5, 0.1, 0.9, False),
        (0.01, 0.02, 0.03, False),  # a distance whose reference already sits below the ceiling's noise
        (0.5, 0.2, -0.2, None),  # |ceiling| == |baseline|
    ],
)
def test_normalized_score_nan_when_there_is_no_headroom(value, baseline, ceiling, direction):
    assert math.isnan(normalized_score(value, baseline, ceiling, direction))


def test_clip_for_display():
    assert clip_for_display(3.0) == 1.0 and clip_for_display(-7.0) == -1.0 and clip_for_display(0.2) == 0.2
    assert clip_for_display(5.0, lo=0, hi=2) == 2.0
    assert math.isnan(clip_for_display(float("nan")))
    np.testing.assert_array_equal(clip_for_display(np.array([-2.0, 0.5, np.nan])), [-1.0, 0.5, np.nan])


# ---------------------------------------------------------------------------------------------- kang2018


@pytest.fixture(scope="module")
def kang_cd8t(shared_data_dir):
    """kang2018 holdout_context CD8T split: embedding, controls, real cells, linear and mean_shift predictions."""
    from benchmark.core.task import dense
    from benchmark.data.datasets import load_dataset
    from benchmark.data.splits import make_splits
    from benchmark.scoring.embedding import fit_embedding
    from predictors.registry import make_predictor

    dataset = load_dataset("kang2018", data_dir=shared_data_dir)
    adata, task = dataset.adata, dataset.task
    splits = make_splits(adata, task, "holdout_context", seed=0)
    split = next(s for s in splits if s.targets[0].context == "CD8T")
    pos = adata.obs_names.get_indexer

    def lognorm(cells) -> np.ndarray:
        return dense(task.lognorm(adata[pos(list(cells))]))

    target = split.targets[0]
    train = adata[pos(list(split.train_cells))].copy()
    control = adata[pos(list(target.control_cells))].copy()
    others = [
        lognorm(s.targets[0].test_cells).mean(0) - lognorm(s.targets[0].control_cells).mean(0) for s in splits
    ]
    out = {
        "embed": fit_embedding(task.lognorm(train)),
        "control": dense(task.lognorm(control)),
        "real": lognorm(target.test_cells),
        "others": np.array([o for o, s in zip(others, splits, strict=True) if s is not split]),
    }
    for name in ("linear", "mean_shift"):
        fitted = make_predictor(name)[1].fit(train, task)
        out[name] = dense(fitted.predict(control, target.perturbation, target.context).X)
    # Another context's cells, for a larger group than CD8T's 53: CD4T, predicted by the same mean shift.
    cd4 = next(s for s in splits if s.targets[0].context == "CD4T").targets[0]
    cd4_control = adata[pos(list(cd4.control_cells))].copy()
    out["cd4"] = (
        dense(task.lognorm(cd4_control)),
        lognorm(cd4.test_cells),
        dense(
            make_predictor("mean_shift")[1]
            .fit(train, task)
            .predict(cd4_control, cd4.perturbation, cd4.context)
            .X
        ),
    )
    return out


def test_kang_cd8t_linear_stays_below_the_r_ceiling_and_energy_ceiling_is_zero(kang_cd8t):
    k = kang_cd8t
    ceiling = noise_ceiling(k["control"], k["real"], k["embed"], n_repeats=20, seed=0, others=k["others"])
    linear = score(EvalData(k["control"], k["real"], k["linear"], k["embed"], others=k["others"]))
    shift = score(EvalData(k["control"], k["real"], k["mean_shift"], k["embed"], others=k["others"]))
    assert linear["r"] < ceiling["r"] and shift["r"] < ceiling["r"]
    assert linear["mse_mean"] > ceiling["mse_mean"] and linear["r_deg100"] < ceiling["r_deg100"]
    assert abs(ceiling["energy_distance"]) < 0.05 and abs(ceiling["mmd_rbf"]) < 0.01
    assert shift["energy_distance"] > 10 * linear["energy_distance"] > 0  # a context-blind shift is far off
    assert shift["discrimination"] < linear["discrimination"] <= ceiling["discrimination"]


def test_kang_subsampled_distances_stay_near_the_exact_values(kang_cd8t, monkeypatch):
    """CD4T (356 real, 278 predicted cells) scored exactly and on K = 200 cells a side.

    Stated tolerance: energy within 0.1 (mean_shift scores ≈ 2.0, measured off by 0.007), MMD within 0.02,
    CRPS within 0.01, the shape energy within 0.05. The default K = 2,000 is above every kang2018 group, so
    scores there are exact.
    """
    control, real, pred = kang_cd8t["cd4"]
    names = ["energy_distance", "energy_distance_shape", "mmd_rbf", "crps_deg100", "de_overlap_100"]
    exact = score(EvalData(control, real, pred, kang_cd8t["embed"]), names)
    monkeypatch.setattr(evaldata, "MAX_DISTANCE_CELLS", 200)
    sub = EvalData(control, real, pred, kang_cd8t["embed"])
    assert sub.real_z.shape[0] == 200 and sub.pred_z.shape[0] == 200
    approx = score(sub, names)
    tolerance = {"energy_distance": 0.1, "energy_distance_shape": 0.05, "mmd_rbf": 0.02, "crps_deg100": 0.01}
    for name, tol in tolerance.items():
        assert approx[name] == pytest.approx(exact[name], abs=tol), name
    assert exact["energy_distance"] > 1.0
    ceiling = noise_ceiling(control, real, kang_cd8t["embed"], n_repeats=5, names=["energy_distance"])
    assert abs(ceiling["energy_distance"]) < 0.05


def test_large_groups_bootstrap_halves_from_moments_match_copied_halves(monkeypatch):
    import benchmark.scoring.ceiling as ceiling_module

    rng = np.random.default_rng(3)
    control = np.log1p(rng.poisson(1.0, size=(60, 40)).astype(float))
    real = np.log1p(rng.poisson(1.3, size=(80, 40)).astype(float))
    others = rng.normal(0, 0.2, size=(4, 40))
    names = ["jaccard_25", "discrimination", "var_ratio"]
    copied = noise_ceiling(control, real, None, names=names, others=others)
    monkeypatch.setattr(ceiling_module, "MAX_DISTANCE_CELLS", 10)  # 80 real cells: the moments path
    moments = noise_ceiling(control, real, None, names=names, others=others)
    for name in names:
        assert moments[name] == pytest.approx(copied[name], abs=1e-9)


@pytest.fixture
def toy_metric():
    """A cell-level metric registered for one test (the gap between per-gene medians), removed after it."""
    name = "toy_median_gap"

    @metrics_module.register_metric(
        name, False, "distribution", "mean |median(pred) − median(real)| per gene"
    )
    def _toy(data: EvalData) -> float:
        return float(np.mean(np.abs(np.median(data.pred, axis=0) - np.median(data.real, axis=0))))

    yield name, _toy
    del METRICS[name]


def test_a_new_cell_level_metric_gets_its_ceiling_from_real_halves_on_a_large_group(toy_metric):
    """A metric that declares no rule is scored on copies of the bootstrap halves, also above
    MAX_DISTANCE_CELLS real cells (where the moment shortcut would leave it placeholder matrices)."""
    name, fn = toy_metric
    assert METRICS[name].ceiling == metrics_module.CEILING_HALVES
    rng = np.random.default_rng(3)
    n = metrics_module.MAX_DISTANCE_CELLS + 100
    control = rng.poisson(1.0, size=(300, 12)).astype(float)
    real = rng.poisson(1.5, size=(n, 12)).astype(float) * rng.uniform(0.5, 2.0, size=(n, 1))
    got = noise_ceiling(control, real, None, n_repeats=4, seed=7, names=[name])[name]
    draws = np.random.default_rng(7)
    expected = []
    for _ in range(4):  # brute force: the same draws, each half a real copy of its cells
        idx = draws.integers(0, n, size=2 * n)
        expected.append(fn(EvalData(control=control, real=real[idx[n:]], pred=real[idx[:n]])))
    assert got == pytest.approx(float(np.mean(expected)), rel=0, abs=1e-12)
    assert got > 0  # a half compared with itself (the placeholder) would give exactly 0


def test_a_metric_declaring_a_formula_rule_without_a_formula_is_refused(toy_metric):
    name, _ = toy_metric
    METRICS[name] = dataclasses.replace(METRICS[name], ceiling=metrics_module.CEILING_CELL_PAIRS)
    with pytest.raises(ValueError, match="toy_median_gap.*cell_pairs.*halves"):
        noise_ceiling(np.ones((5, 3)), np.ones((5, 3)), None, n_repeats=1, names=[name])
    with pytest.raises(ValueError, match="ceiling rule must be one of"):
        metrics_module.register_metric("toy_other", True, "mean", "x", ceiling="guess")
