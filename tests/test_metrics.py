"""Metrics against hand computations, scipy references and brute-force double loops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import energy_distance as scipy_energy_distance
from scipy.stats import false_discovery_control, mannwhitneyu, pearsonr

import benchmark.scoring.distribution_scores as distribution_scores
import benchmark.scoring.embedding as embedding_module
import benchmark.scoring.evaldata as evaldata
from benchmark.core.errors import PertbenchError
from benchmark.scoring.embedding import fit_embedding
from benchmark.scoring.metrics import METRICS, EvalData, score, subsample_index, top_k_genes
from benchmark.scoring.ranksum import rank_sum_pvalues


def _one_cell(row) -> np.ndarray:
    """A single-cell group whose mean is `row`."""
    return np.asarray(row, dtype=np.float64)[None, :]


def _mean_pair(a, b, f, distinct: bool) -> float:
    """Mean of f(a_i, b_j) over all pairs, or over pairs i ≠ j (a is b) when `distinct`, by explicit loops."""
    vals = [f(ai, bj) for i, ai in enumerate(a) for j, bj in enumerate(b) if not (distinct and i == j)]
    return sum(vals) / len(vals)


def _dist(u, v) -> float:
    return float(np.sqrt(np.sum((u - v) ** 2)))


def _brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    """2E|X−Y| − E|X−X'| − E|Y−Y'| as a U-statistic (pairs of distinct cells within a sample), by loops."""
    return 2 * _mean_pair(x, y, _dist, False) - _mean_pair(x, x, _dist, True) - _mean_pair(y, y, _dist, True)


def _brute_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with exp(−d²/h), h = median squared distance of distinct pairs of y, by loops."""
    pairs = [np.sum((y[i] - y[j]) ** 2) for i in range(len(y)) for j in range(i + 1, len(y))]
    h = float(np.median(pairs))

    def k(u, v):
        return float(np.exp(-np.sum((u - v) ** 2) / h))

    return _mean_pair(x, x, k, True) + _mean_pair(y, y, k, True) - 2 * _mean_pair(x, y, k, False)


def _brute_crps(pred: np.ndarray, real: np.ndarray) -> float:
    """Per gene mean_y [mean|x − y| − ½ mean_{i≠j}|x_i − x_j|], averaged over the genes, by loops."""
    out = []
    for g in range(pred.shape[1]):
        x, y = pred[:, g], real[:, g]
        cross = np.mean([abs(a - b) for a in x for b in y])
        spread = np.mean([abs(x[i] - x[j]) for i in range(len(x)) for j in range(len(x)) if i != j])
        out.append(cross - 0.5 * spread)
    return float(np.mean(out))


def test_registry_has_every_metric_with_direction_and_kind():
    expected = {
        "r": True,
        "jaccard_25": True,
        "jaccard_50": True,
        "jaccard_100": True,
        "r_deg100": True,
        "r2_mean_deg100": True,
        "mse_mean": False,
        "de_overlap_100": True,
        "de_direction": True,
        "discrimination": True,
        "energy_distance": False,
        "energy_distance_shape": False,
        "mmd_rbf": False,
        "crps_deg100": False,
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
    # scipy's energy distance is sqrt(2 ∫ (F − G)²), the square root of the V-statistic; the U-statistic differs
    # from it only in dividing the within-sample sums by m(m − 1) instead of m².
    sxx, syy = np.abs(u - u.T).sum(), np.abs(v - v.T).sum()
    v_stat = one_d + sxx / (11 * 10) - sxx / 11**2 + syy / (8 * 7) - syy / 8**2
    assert v_stat == pytest.approx(scipy_energy_distance(u.ravel(), v.ravel()) ** 2, rel=1e-10)


def test_distances_are_unbiased_for_two_samples_of_one_distribution():
    """Over many pairs of samples of one distribution the U-statistics average ≈ 0 (a V-statistic would not)."""
    rng = np.random.default_rng(13)
    names = ["energy_distance", "energy_distance_shape", "mmd_rbf"]
    runs = {n: [] for n in names}
    for _ in range(60):
        x, y = rng.normal(size=(12, 4)), rng.normal(size=(9, 4))
        for n, v in score(EvalData(np.zeros((1, 4)), real=y, pred=x), names).items():
            runs[n].append(v)
    for n, values in runs.items():
        mean, se = np.mean(values), np.std(values) / np.sqrt(len(values))
        assert abs(mean) < 3 * se + 1e-3, (n, mean, se)


def test_shape_energy_ignores_the_mean_and_sees_the_spread():
    rng = np.random.default_rng(14)
    real, pred = rng.normal(size=(80, 5)), rng.normal(size=(70, 5))
    control = np.zeros((1, 5))
    base = score(EvalData(control, real, pred), ["energy_distance_shape", "energy_distance"])
    moved = score(EvalData(control, real, pred + 3.0), ["energy_distance_shape", "energy_distance"])
    assert moved["energy_distance_shape"] == pytest.approx(base["energy_distance_shape"], abs=1e-12)
    assert moved["energy_distance"] > base["energy_distance"] + 1.0
    wide = score(EvalData(control, real, 2.0 * pred + 3.0), ["energy_distance_shape"])[
        "energy_distance_shape"
    ]
    assert wide > base["energy_distance_shape"] + 0.5
    m, n = pred.shape[0], real.shape[0]
    xc, yc = pred - pred.mean(0), real - real.mean(0)
    expected = (
        2 * _mean_pair(xc, yc, _dist, False) * np.sqrt(2 / (2 - 1 / m - 1 / n))
        - _mean_pair(pred, pred, _dist, True)
        - _mean_pair(real, real, _dist, True)
    )
    assert base["energy_distance_shape"] == pytest.approx(expected, rel=1e-10)


def test_crps_matches_brute_force_on_the_top_true_genes():
    rng = np.random.default_rng(15)
    n_genes = 120
    control = rng.normal(size=(10, n_genes))
    shift = np.zeros(n_genes)
    shift[::2] = rng.uniform(1, 2, n_genes // 2)  # 60 shifted genes, all among the top 100
    real = rng.normal(size=(9, n_genes)) + shift
    pred = rng.normal(size=(7, n_genes)) * 1.5 + shift
    pred[:, 0] = pred[0, 0]  # ties in a gene must not matter
    got = score(EvalData(control, real, pred), ["crps_deg100"])["crps_deg100"]
    idx = top_k_genes(real.mean(0) - control.mean(0), 100)
    assert got == pytest.approx(_brute_crps(pred[:, idx], real[:, idx]), rel=1e-10)


def test_crps_prefers_the_true_distribution_to_a_collapsed_or_inflated_one():
    rng = np.random.default_rng(16)
    n_genes = 150
    control = rng.normal(size=(200, n_genes))
    shift = rng.normal(0, 1.0, n_genes)
    real = rng.normal(size=(200, n_genes)) + shift
    sampler = rng.normal(size=(200, n_genes)) + shift
    collapsed = np.tile(shift, (200, 1))
    inflated = 2.0 * rng.normal(size=(200, n_genes)) + shift

    def crps(pred):
        return score(EvalData(control, real, pred), ["crps_deg100"])["crps_deg100"]

    # Gaussian values: 1/√π ≈ 0.564 for the truth, E|Z| ≈ 0.798 collapsed, ≈ 0.654 for twice the spread.
    assert crps(sampler) < crps(collapsed) - 0.2 and crps(sampler) < crps(inflated) - 0.05


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


def test_distribution_distances_are_near_zero_for_identical_samples_and_grow_with_shift():
    rng = np.random.default_rng(8)
    real = rng.normal(size=(60, 5))
    noise = rng.normal(size=(60, 5))
    control = np.zeros((1, 5))
    same = score(EvalData(control, real, real.copy()), ["energy_distance", "mmd_rbf"])
    # A sample against its own copy: the cross term keeps the zero self-pairs the within terms leave out.
    assert -0.2 < same["energy_distance"] < 0 and -0.05 < same["mmd_rbf"] < 0
    curves = {"energy_distance": [], "mmd_rbf": []}
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
        got = score(EvalData(control, real, noise + shift), list(curves))
        for name, value in got.items():
            curves[name].append(value)
    for name, values in curves.items():
        assert np.all(np.diff(values) > 0), (name, values)


def test_var_ratio_is_the_median_absolute_log_ratio():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(40, 12)) * rng.uniform(0.5, 2.0, 12)
    center = real.mean(0)
    doubled = center + 2.0 * (real - center)  # every gene's variance x4
    assert score(EvalData(real, real, doubled), ["var_ratio"])["var_ratio"] == pytest.approx(
        np.log(4), abs=1e-4
    )
    halved = center + 0.5 * (real - center)
    assert score(EvalData(real, real, halved), ["var_ratio"])["var_ratio"] == pytest.approx(
        np.log(4), abs=1e-4
    )
    # Half the genes too wide and half too narrow: a signed median would call this perfect (0).
    mixed = np.where(np.arange(12) % 2 == 0, doubled, halved)
    assert score(EvalData(real, real, mixed), ["var_ratio"])["var_ratio"] == pytest.approx(
        np.log(4), abs=1e-4
    )
    collapsed = np.tile(center, (40, 1))
    expected = np.median(np.abs(np.log(1e-6 / (real.var(0, ddof=1) + 1e-6))))
    assert score(EvalData(real, real, collapsed), ["var_ratio"])["var_ratio"] == pytest.approx(expected)
    assert expected > 10


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
    embed = fit_embedding(sp.csr_matrix(train), n_components=20)
    control, real = cells(200, 0.0), cells(200, delta)
    collapsed = np.tile(base + delta, (200, 1))
    sampler = cells(200, delta)
    names = ["r", "energy_distance", "mmd_rbf", "var_ratio"]
    bad = score(EvalData(control, real, collapsed, embed), names)
    good = score(EvalData(control, real, sampler, embed), names)
    assert bad["r"] > 0.95 and bad["r"] >= good["r"] - 0.02
    assert bad["energy_distance"] > 5 * good["energy_distance"]
    assert bad["mmd_rbf"] > 5 * good["mmd_rbf"]
    assert bad["var_ratio"] > 5 and good["var_ratio"] < 0.1


def _low_rank(seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(300, 4)) @ rng.normal(size=(4, 120)) * 3 + rng.normal(size=(300, 120)) + 2.0


def test_fit_embedding_is_deterministic_and_sparse_matches_dense():
    x = _low_rank()
    x[x < 2.0] = 0.0
    a = fit_embedding(sp.csr_matrix(x), n_components=10)
    b = fit_embedding(sp.csr_matrix(x), n_components=10)
    dense = fit_embedding(x, n_components=10)
    z = a(x[:20])
    assert z.shape == (20, 10)
    np.testing.assert_array_equal(z, b(x[:20]))
    np.testing.assert_allclose(z, dense(x[:20]), atol=1e-9)
    np.testing.assert_allclose(a(sp.csr_matrix(x[:20])), z, atol=1e-9)


def test_fit_embedding_recovers_the_leading_principal_components():
    from sklearn.decomposition import PCA

    x = _low_rank()
    embed = fit_embedding(x, n_components=10)
    ref = PCA(n_components=4, svd_solver="full").fit(x)
    cosines = np.abs(np.sum(embed.components[:4] * ref.components_, axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(embed(x)[:, :4]), np.abs(ref.transform(x)), atol=1e-6)


def test_fit_embedding_caps_components_for_tiny_data():
    x = np.random.default_rng(12).normal(size=(8, 30))
    assert fit_embedding(x, n_components=50)(x).shape == (8, 7)


def test_rank_sum_pvalues_match_scipy_with_ties_and_constant_genes():
    rng = np.random.default_rng(17)
    x = np.floor(rng.exponential(1.0, size=(30, 40)))  # many ties, many zeros
    c = np.floor(rng.exponential(0.7, size=(25, 40)))
    x[:, :3] = 0.0
    c[:, :3] = 0.0  # constant in both samples: p = 1
    x[:, 3], c[:, 3] = 2.0, 0.0  # perfectly separated ties
    got = rank_sum_pvalues(x, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = mannwhitneyu(x, c, axis=0, method="asymptotic").pvalue
    np.testing.assert_allclose(got[3:], ref[3:], rtol=1e-12)
    np.testing.assert_array_equal(got[:3], 1.0)


def _de_example(seed: int = 18):
    """400 genes: 30 up, 20 down in the real cells; 60 genes whose controls are all zero."""
    rng = np.random.default_rng(seed)
    n_genes = 400
    base = rng.uniform(1.0, 3.0, n_genes)
    base[-60:] = 0.0
    shift = np.zeros(n_genes)
    shift[:30], shift[30:50] = 1.5, -1.0
    control = np.maximum(base + rng.normal(0, 0.5, (60, n_genes)), 0) * (base > 0)
    real = control[rng.permutation(60)] + shift  # unshifted genes: the controls' own values, so p = 1
    real[:3, -60:] = 0.3  # a few real cells express the silent genes: a small true Δ there
    return control, real, shift


def test_de_overlap_and_direction_by_hand():
    control, real, shift = _de_example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_real = np.nan_to_num(mannwhitneyu(real, control, axis=0).pvalue, nan=1.0)
    assert set(np.flatnonzero(false_discovery_control(p_real) < 0.05)) == set(range(50))  # only the shifted
    good = control[:40] + shift
    flipped = control[:40] - shift
    half = control + np.where(np.arange(400) < 30, shift, 0.0)  # only the up genes; Δ_pred = 0 elsewhere
    names = ["de_overlap_100", "de_direction"]
    assert score(EvalData(control, real, good), names) == {"de_overlap_100": 1.0, "de_direction": 1.0}
    assert score(EvalData(control, real, flipped), names)["de_direction"] == 0.0
    got = score(EvalData(control, real, half), names)
    assert got["de_overlap_100"] == pytest.approx(30 / 50) and got["de_direction"] == pytest.approx(30 / 50)


def test_de_overlap_is_not_flooded_by_genes_with_silent_controls():
    """A shift predictor gives silent-control genes a constant small value: perfectly separated, p ≈ 0.

    Ranking the significant genes by |Δ| keeps those tiny shifts below the real effects (a p-value or
    log-fold-change ranking would put them first, as scoring-facts.md found for cell-eval's overlap).
    """
    control, real, _ = _de_example()
    pred = control[:40] + (real.mean(0) - control.mean(0))
    data = EvalData(control, real, pred)
    assert np.all(data.de_pred[-60:] < 1e-10)  # the trap: every silent gene is "significant" in pred
    assert score(data, ["de_overlap_100"])["de_overlap_100"] == 1.0


def test_de_scores_nan_without_significant_genes():
    rng = np.random.default_rng(19)
    control, real = rng.normal(size=(20, 30)), rng.normal(size=(20, 30))
    got = score(EvalData(control, real, real + 1.0), ["de_overlap_100", "de_direction"])
    assert np.isnan(got["de_overlap_100"]) and np.isnan(got["de_direction"])


def test_discrimination_counts_farther_others_with_half_ties():
    control = np.zeros((1, 3))
    real = np.array([[1.0, 0.0, 0.0]])
    pred = np.array([[1.0, 0.5, 0.0]])  # L1 0.5 from its own Δ
    others = np.array(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.5, 0.1], [5.0, 0.0, 0.0]]
    )  # 1.5, 0.5, 0.1, 4.5
    got = score(EvalData(control, real, pred, others=others), ["discrimination"])["discrimination"]
    assert got == pytest.approx((2 + 0.5) / 4)
    assert np.isnan(score(EvalData(control, real, pred), ["discrimination"])["discrimination"])
    empty = EvalData(control, real, pred, others=np.zeros((0, 3)))
    assert np.isnan(score(empty, ["discrimination"])["discrimination"])
    with pytest.raises(ValueError, match="others"):
        EvalData(control, real, pred, others=np.zeros((2, 4)))


def test_cell_level_scores_use_at_most_k_cells_per_side(monkeypatch):
    rng = np.random.default_rng(20)
    control, real, pred = rng.normal(size=(300, 20)), rng.normal(size=(500, 20)), rng.normal(size=(400, 20))
    monkeypatch.setattr(evaldata, "MAX_DISTANCE_CELLS", 50)
    seen = []
    real_cdist = distribution_scores.cdist

    def spy(a, b, *args, **kwargs):
        seen.append((a.shape[0], b.shape[0]))
        return real_cdist(a, b, *args, **kwargs)

    monkeypatch.setattr(distribution_scores, "cdist", spy)
    monkeypatch.setattr(evaldata, "cdist", spy)
    first = score(EvalData(control, real, pred))
    again = score(EvalData(control, real, pred))
    assert seen and max(max(s) for s in seen) <= 50
    assert first.keys() == again.keys()  # the subsample is seeded: the same cells every time
    np.testing.assert_array_equal(list(first.values()), list(again.values()))
    np.testing.assert_array_equal(subsample_index(500, 50), subsample_index(500, 50))
    assert len(subsample_index(500, 50)) == 50 and len(subsample_index(30, 50)) == 30


def _flat_spectrum(seed: int = 21) -> np.ndarray:
    """Sparse-ish cells whose principal spectrum is nearly flat around component 10 (a randomized SVD's trap)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(150, 8)) @ rng.normal(size=(8, 220)) * 2 + rng.normal(size=(150, 220)) + 1.5
    x[x < 1.0] = 0.0
    return x


def test_fit_embedding_gram_covariance_and_arpack_routes_agree(monkeypatch):
    wide = _flat_spectrum()  # cells < genes: Gram route
    tall = wide[:, :100]  # cells > genes: covariance route
    for x in (wide, tall):
        ref = fit_embedding(x, n_components=10)
        np.testing.assert_allclose(fit_embedding(sp.csr_matrix(x), n_components=10)(x), ref(x), atol=1e-8)
        monkeypatch.setattr(embedding_module, "EXACT_PCA_MAX_DIM", 5)
        np.testing.assert_allclose(fit_embedding(sp.csr_matrix(x), n_components=10)(x), ref(x), atol=1e-8)
        monkeypatch.undo()


def test_distances_reproduce_with_sklearn_full_pca_to_1e6():
    """The README recipe: sklearn PCA(svd_solver='full') on the training cells, sign-fix, project, formulas."""
    from sklearn.decomposition import PCA

    train = _flat_spectrum()
    rng = np.random.default_rng(22)
    real = train[:40] + rng.normal(0, 0.3, (40, 220))
    pred = train[40:90] + 0.2
    pca = PCA(n_components=50, svd_solver="full").fit(train)
    comps = (
        pca.components_
        * np.sign(pca.components_[np.arange(50), np.argmax(np.abs(pca.components_), 1)])[:, None]
    )
    zr, zp = (real - pca.mean_) @ comps.T, (pred - pca.mean_) @ comps.T
    got = score(
        EvalData(real[:5], real, pred, fit_embedding(sp.csr_matrix(train))), ["energy_distance", "mmd_rbf"]
    )
    assert got["energy_distance"] == pytest.approx(_brute_energy(zp, zr), rel=1e-6)
    assert got["mmd_rbf"] == pytest.approx(_brute_mmd(zp, zr), rel=1e-6)


SUBSAMPLE_TOLERANCE = {
    "energy_distance": ("rel", 0.02),
    "mmd_rbf": ("rel", 0.02),
    "energy_distance_shape": ("abs", 0.02),
}
"""How far the K-cell subsample's distances may sit from the exact all-cell value (measured on kang2018 at K=500:
energy 0.6%, MMD 0.7%, shape energy 0.009 absolute, against an energy distance of 3.75)."""


def test_k_cell_subsample_is_close_to_the_exact_distances_on_kang2018(shared_data_dir, monkeypatch):
    from benchmark.data.datasets import load_dataset
    from benchmark.scoring.embedding import fit_embedding

    kang = load_dataset("kang2018", shared_data_dir)
    task, adata = kang.task, kang.adata
    stimulated = task.perturbations(adata) != task.control_label
    real, pred = (
        task.lognorm(adata[mask]).toarray().astype(np.float64) for mask in (stimulated, ~stimulated)
    )
    assert min(real.shape[0], pred.shape[0]) > 500  # both sides are subsampled at K = 500
    embed = fit_embedding(task.lognorm(adata))
    names = list(SUBSAMPLE_TOLERANCE)

    def distances(k: int) -> dict[str, float]:
        monkeypatch.setattr(evaldata, "MAX_DISTANCE_CELLS", k)
        data = EvalData(control=pred, real=real, pred=pred, embed=embed)
        assert data.real_z.shape[0] == min(k, real.shape[0])  # what was computed: a K x K problem at most
        return score(data, names)

    exact, sub = distances(10**9), distances(500)
    for name, (kind, tol) in SUBSAMPLE_TOLERANCE.items():
        allowed = tol * abs(exact[name]) if kind == "rel" else tol
        assert abs(sub[name] - exact[name]) <= allowed, (name, exact[name], sub[name])


@pytest.mark.parametrize("seed", range(5))
def test_top_k_genes_is_the_head_of_a_stable_full_sort(seed):
    """The partitioned top-k equals the first k of a stable argsort of -|Δ| exactly, ties (quantized values,
    zeros, equal magnitudes of opposite sign) included."""
    from benchmark.scoring.metrics import top_k_genes

    rng = np.random.default_rng(seed)
    delta = np.round(rng.normal(size=3000), 1) * rng.choice([-1, 1], size=3000)
    delta[rng.random(3000) < 0.5] = 0.0
    for k in (1, 25, 50, 100, 700, 3000):
        expected = np.argsort(-np.abs(delta), kind="stable")[:k]
        np.testing.assert_array_equal(top_k_genes(delta, k), expected)
    assert top_k_genes(np.zeros(10), 3) is None
