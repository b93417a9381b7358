"""Metrics against hand computations, scipy references and brute-force double loops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import energy_distance as scipy_energy_distance
from scipy.stats import pearsonr

from benchmark.errors import PertbenchError
from benchmark.metrics import METRICS, EvalData, fit_embedding, score, top_k_genes


def _one_cell(row) -> np.ndarray:
    """A single-cell group whose mean is `row`."""
    return np.asarray(row, dtype=np.float64)[None, :]


def _brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    """2E|X−Y| − E|X−X'| − E|Y−Y'| as a V-statistic, by explicit loops."""

    def mean_dist(a, b):
        return sum(np.sqrt(np.sum((ai - bj) ** 2)) for ai in a for bj in b) / (len(a) * len(b))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def _brute_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Biased squared MMD with exp(−d²/h), h = median squared distance of distinct pairs of y, by loops."""
    pairs = [np.sum((y[i] - y[j]) ** 2) for i in range(len(y)) for j in range(i + 1, len(y))]
    h = float(np.median(pairs))

    def mean_k(a, b):
        return sum(np.exp(-np.sum((ai - bj) ** 2) / h) for ai in a for bj in b) / (len(a) * len(b))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_registry_has_every_metric_with_direction_and_kind():
    expected = {
        "r": True,
        "jaccard_25": True,
        "jaccard_50": True,
        "jaccard_100": True,
        "r_deg100": True,
        "r2_mean_deg100": True,
        "mse_mean": False,
        "energy_distance": False,
        "mmd_rbf": False,
        "var_ratio": None,
    }
    assert {name: m.higher_is_better for name, m in METRICS.items()} == expected
    assert {m.kind for m in METRICS.values()} == {"mean", "distribution"}
    assert METRICS["energy_distance"].kind == "distribution" and METRICS["r"].kind == "mean"


def test_score_subset_and_unknown_name():
    rng = np.random.default_rng(0)
    data = EvalData(rng.normal(size=(5, 30)), rng.normal(size=(6, 30)), rng.normal(size=(4, 30)))
    assert list(score(data, ["mse_mean", "r"])) == ["mse_mean", "r"]
    with pytest.raises(PertbenchError, match="nope"):
        score(data, ["nope"])


def test_mismatched_gene_counts_are_rejected():
    with pytest.raises(ValueError, match="gene counts"):
        EvalData(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((3, 5)))


def test_r_matches_scipy_pearson_of_mean_shifts():
    rng = np.random.default_rng(1)
    control, real, pred = rng.normal(size=(8, 40)), rng.normal(size=(9, 40)), rng.normal(size=(5, 40))
    expected = pearsonr(real.mean(0) - control.mean(0), pred.mean(0) - control.mean(0))[0]
    assert score(EvalData(control, real, pred), ["r"])["r"] == pytest.approx(expected, abs=1e-12)


def test_predicting_the_control_gives_nan_without_warnings():
    rng = np.random.default_rng(2)
    control = rng.normal(size=(20, 150)).astype(np.float32)
    real = control[:10] + rng.normal(size=150).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = score(EvalData(control, real, control.copy()))
    assert np.isnan(scores["r"]) and np.isnan(scores["r_deg100"])
    assert np.isnan(scores["jaccard_25"]) and np.isnan(scores["jaccard_100"])
    assert np.isfinite(scores["mse_mean"]) and np.isfinite(scores["energy_distance"])


def test_jaccard_counts_overlap_of_top_genes_by_absolute_shift():
    n = 200
    true = np.zeros(n)
    true[:25] = np.linspace(3, 2, 25) * np.where(np.arange(25) % 2, -1, 1)  # signs must not matter
    pred = np.zeros(n)
    pred[5:30] = -np.linspace(3, 2, 25)  # overlaps genes 5..24: 20 of 25
    data = EvalData(_one_cell(np.zeros(n)), _one_cell(true), _one_cell(pred))
    assert score(data, ["jaccard_25"])["jaccard_25"] == pytest.approx(20 / 30)


def test_top_k_ties_go_to_the_lower_gene_index():
    delta = np.full(100, 0.5)
    delta[[3, 70]] = -1.0
    assert sorted(top_k_genes(delta, 5).tolist()) == [0, 1, 2, 3, 70]
    assert top_k_genes(np.full(100, 0.5), 5) is None  # all tied: undefined


def test_jaccard_nan_when_there_are_not_more_genes_than_k():
    rng = np.random.default_rng(3)
    data = EvalData(rng.normal(size=(4, 50)), rng.normal(size=(4, 50)), rng.normal(size=(4, 50)))
    scores = score(data, ["jaccard_25", "jaccard_50", "jaccard_100"])
    assert np.isfinite(scores["jaccard_25"])
    assert np.isnan(scores["jaccard_50"]) and np.isnan(scores["jaccard_100"])


def _deg_example(seed: int = 4):
    """500 genes whose first 100 carry large true shifts, with a varying control baseline."""
    rng = np.random.default_rng(seed)
    n = 500
    base = rng.uniform(0, 5, n)
    delta = np.concatenate([rng.uniform(2, 3, 100) * rng.choice([-1, 1], 100), rng.uniform(-0.1, 0.1, 400)])
    control = base + rng.normal(0, 0.01, (30, n))
    real = base + delta + rng.normal(0, 0.01, (30, n))
    pred = base + delta + rng.normal(0, 1.0, (10, n))
    return control, real, pred


def test_r_deg100_uses_the_top_100_true_genes():
    control, real, pred = _deg_example()
    dt, dp = real.mean(0) - control.mean(0), pred.mean(0) - control.mean(0)
    got = score(EvalData(control, real, pred), ["r_deg100"])["r_deg100"]
    assert got == pytest.approx(pearsonr(dt[:100], dp[:100])[0], abs=1e-12)
    assert got != pytest.approx(pearsonr(dt, dp)[0], abs=1e-3)


def test_r2_mean_deg100_is_squared_pearson_of_means_not_shifts():
    control, real, pred = _deg_example()
    got = score(EvalData(control, real, pred), ["r2_mean_deg100"])["r2_mean_deg100"]
    assert got == pytest.approx(pearsonr(real.mean(0)[:100], pred.mean(0)[:100])[0] ** 2, abs=1e-12)
    dt, dp = real.mean(0) - control.mean(0), pred.mean(0) - control.mean(0)
    assert got != pytest.approx(pearsonr(dt[:100], dp[:100])[0] ** 2, abs=1e-4)


def test_mse_mean_by_hand():
    real = np.array([[1.0, 2.0], [3.0, 4.0]])  # mean [2, 3]
    pred = np.array([[2.0, 5.0]])
    assert score(EvalData(np.zeros((1, 2)), real, pred), ["mse_mean"])["mse_mean"] == pytest.approx(2.0)


def test_energy_distance_matches_brute_force_and_scipy_in_1d():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(5, 3))
    got = score(EvalData(np.zeros((1, 3)), real=y, pred=x), ["energy_distance"])["energy_distance"]
    assert got == pytest.approx(_brute_energy(x, y), rel=1e-12)
    u, v = rng.normal(size=(11, 1)), rng.exponential(size=(8, 1))
    one_d = score(EvalData(np.zeros((1, 1)), real=v, pred=u), ["energy_distance"])["energy_distance"]
    # scipy's energy distance is sqrt(2 ∫ (F − G)²), which equals the square root of our V-statistic.
    assert one_d == pytest.approx(scipy_energy_distance(u.ravel(), v.ravel()) ** 2, rel=1e-10)


def test_distribution_metrics_use_the_embedding():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(7, 4))
    w = rng.normal(size=(4, 2))
    data = EvalData(np.zeros((1, 4)), real=y, pred=x, embed=lambda cells: cells @ w)
    got = score(data, ["energy_distance", "mmd_rbf"])
    assert got["energy_distance"] == pytest.approx(_brute_energy(x @ w, y @ w), rel=1e-12)
    assert got["mmd_rbf"] == pytest.approx(_brute_mmd(x @ w, y @ w), rel=1e-10)


def test_mmd_matches_brute_force_with_real_median_bandwidth():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(6, 3)), rng.normal(1.0, 2.0, size=(8, 3))
    got = score(EvalData(np.zeros((1, 3)), real=y, pred=x), ["mmd_rbf"])["mmd_rbf"]
    assert got == pytest.approx(_brute_mmd(x, y), rel=1e-10)


def test_distribution_distances_are_zero_for_identical_samples_and_grow_with_shift():
    rng = np.random.default_rng(8)
    real = rng.normal(size=(60, 5))
    noise = rng.normal(size=(60, 5))
    control = np.zeros((1, 5))
    same = score(EvalData(control, real, real.copy()), ["energy_distance", "mmd_rbf"])
    assert same == {"energy_distance": 0.0, "mmd_rbf": 0.0}
    curves = {"energy_distance": [], "mmd_rbf": []}
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
        got = score(EvalData(control, real, noise + shift), list(curves))
        for name, value in got.items():
            curves[name].append(value)
    for name, values in curves.items():
        assert np.all(np.diff(values) > 0), (name, values)


def test_var_ratio_by_hand():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(40, 11)) * rng.uniform(0.5, 2.0, 11)
    center = real.mean(0)
    doubled = center + 2.0 * (real - center)  # every gene's variance x4
    assert score(EvalData(real, real, doubled), ["var_ratio"])["var_ratio"] == pytest.approx(
        np.log(4), abs=1e-4
    )
    collapsed = np.tile(center, (40, 1))
    expected = np.median(np.log(1e-6 / (real.var(0, ddof=1) + 1e-6)))
    assert score(EvalData(real, real, collapsed), ["var_ratio"])["var_ratio"] == pytest.approx(expected)
    assert expected < -10


def test_var_ratio_is_zero_for_genes_constant_in_both():
    real = np.ones((5, 3))
    assert score(EvalData(real, real, np.ones((2, 3))), ["var_ratio"])["var_ratio"] == 0.0


def test_var_ratio_ignores_genes_that_never_vary():
    rng = np.random.default_rng(4)
    real = np.hstack([rng.normal(size=(30, 5)), np.zeros((30, 50))])  # 50 never-expressed genes
    doubled = real.mean(0) + 2.0 * (real - real.mean(0))
    assert score(EvalData(real, real, doubled), ["var_ratio"])["var_ratio"] == pytest.approx(
        np.log(4), abs=1e-4
    )


def test_collapsed_mean_prediction_is_caught_by_distribution_metrics():
    """Predicting the true mean profile for every cell wins on r but loses on energy distance and var_ratio."""
    rng = np.random.default_rng(10)
    n_genes = 300
    base, scale = rng.uniform(0, 3, n_genes), rng.uniform(0.3, 1.0, n_genes)
    delta = rng.normal(0, 0.8, n_genes)

    def cells(n, shift):
        return base + shift + scale * rng.normal(size=(n, n_genes))

    train = np.vstack([cells(300, 0.0), cells(300, 0.5 * delta)])
    embed = fit_embedding(sp.csr_matrix(train), n_components=20, seed=0)
    control, real = cells(200, 0.0), cells(200, delta)
    collapsed = np.tile(base + delta, (200, 1))
    sampler = cells(200, delta)
    names = ["r", "energy_distance", "mmd_rbf", "var_ratio"]
    bad = score(EvalData(control, real, collapsed, embed), names)
    good = score(EvalData(control, real, sampler, embed), names)
    assert bad["r"] > 0.95 and bad["r"] >= good["r"] - 0.02
    assert bad["energy_distance"] > 5 * good["energy_distance"]
    assert bad["mmd_rbf"] > 5 * good["mmd_rbf"]
    assert bad["var_ratio"] < -5 and abs(good["var_ratio"]) < 0.1


def _low_rank(seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(300, 4)) @ rng.normal(size=(4, 120)) * 3 + rng.normal(size=(300, 120)) + 2.0


def test_fit_embedding_is_deterministic_and_sparse_matches_dense():
    x = _low_rank()
    x[x < 2.0] = 0.0
    a = fit_embedding(sp.csr_matrix(x), n_components=10, seed=3)
    b = fit_embedding(sp.csr_matrix(x), n_components=10, seed=3)
    dense = fit_embedding(x, n_components=10, seed=3)
    z = a(x[:20])
    assert z.shape == (20, 10)
    np.testing.assert_array_equal(z, b(x[:20]))
    np.testing.assert_allclose(z, dense(x[:20]), atol=1e-9)
    np.testing.assert_allclose(a(sp.csr_matrix(x[:20])), z, atol=1e-9)


def test_fit_embedding_recovers_the_leading_principal_components():
    from sklearn.decomposition import PCA

    x = _low_rank()
    embed = fit_embedding(x, n_components=10, seed=0)
    ref = PCA(n_components=4, svd_solver="full").fit(x)
    cosines = np.abs(np.sum(embed.components[:4] * ref.components_, axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(embed(x)[:, :4]), np.abs(ref.transform(x)), atol=1e-6)


def test_fit_embedding_caps_components_for_tiny_data():
    x = np.random.default_rng(12).normal(size=(8, 30))
    assert fit_embedding(x, n_components=50)(x).shape == (8, 7)
