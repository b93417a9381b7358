"""Noise ceiling against its analytic value, and the normalized score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.ceiling import clip_for_display, noise_ceiling, normalized_score


def _synthetic_split(n_real: int, n_control: int, sigma: float, seed: int = 0):
    """Control and real cells: per-gene baseline, a known shift Δ for the real cells, Gaussian noise σ."""
    rng = np.random.default_rng(seed)
    n_genes = 2000
    base = rng.uniform(0, 3, n_genes)
    delta = rng.normal(0, 0.3, n_genes)
    control = base + sigma * rng.normal(size=(n_control, n_genes))
    real = base + delta + sigma * rng.normal(size=(n_real, n_genes))
    return control, real, delta


def test_ceiling_matches_analytic_half_split_values():
    """Halves A, B of n cells: Δ_A = Δ + ē_A − η̄, Δ_B = Δ + ē_B − η̄ with a shared control-mean error η̄.

    Across genes Cov(Δ_A, Δ_B) = s² + σ²/n_c and Var(Δ_X) = s² + σ²/n_X + σ²/n_c, so
    r = (s² + σ²/n_c) / sqrt(Var_A Var_B); and E[mse(mean_A, mean_B)] = σ² (1/n_A + 1/n_B).
    """
    n, n_c, sigma = 200, 50, 1.0
    control, real, delta = _synthetic_split(n, n_c, sigma)
    s2, n_a, n_b = delta.var(), n // 2, n - n // 2
    var_a, var_b = s2 + sigma**2 / n_a + sigma**2 / n_c, s2 + sigma**2 / n_b + sigma**2 / n_c
    expected_r = (s2 + sigma**2 / n_c) / math.sqrt(var_a * var_b)
    expected_mse = sigma**2 * (1 / n_a + 1 / n_b)
    got = noise_ceiling(control, real, None, n_repeats=20, seed=0, names=["r", "mse_mean"])
    assert got["r"] == pytest.approx(expected_r, abs=0.01)
    assert got["mse_mean"] == pytest.approx(expected_mse, rel=0.05)


def test_ceiling_r_drops_with_noise():
    low = noise_ceiling(*_synthetic_split(100, 100, 0.5)[:2], None, n_repeats=5, names=["r"])["r"]
    high = noise_ceiling(*_synthetic_split(100, 100, 3.0)[:2], None, n_repeats=5, names=["r"])["r"]
    assert low > high + 0.2


def test_ceiling_is_deterministic_per_seed_and_covers_all_metrics():
    control, real, _ = _synthetic_split(40, 30, 1.0)
    embed = lambda x: x[:, :10]  # noqa: E731 - any projection will do
    a = noise_ceiling(control, real, embed, n_repeats=3, seed=1)
    b = noise_ceiling(control, real, embed, n_repeats=3, seed=1)
    c = noise_ceiling(control, real, embed, n_repeats=3, seed=2)
    assert a == b and a != c
    assert {"r", "energy_distance", "var_ratio", "jaccard_100"} <= set(a)


def test_ceiling_undefined_with_one_real_cell():
    control, real, _ = _synthetic_split(1, 10, 1.0)
    got = noise_ceiling(control, real, None, names=["r", "mse_mean"])
    assert set(got) == {"r", "mse_mean"} and all(math.isnan(v) for v in got.values())


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
        (0.5, 0.4, 0.4, True),  # ceiling == baseline
        (0.5, 0.9, 0.1, True),  # ceiling worse than baseline: scale inverted
        (0.5, 0.1, 0.9, False),
        (0.5, 0.2, -0.2, None),  # |ceiling| == |baseline|
    ],
)
def test_normalized_score_nan_when_undefined(value, baseline, ceiling, direction):
    assert math.isnan(normalized_score(value, baseline, ceiling, direction))


def test_clip_for_display():
    assert clip_for_display(3.0) == 1.0 and clip_for_display(-7.0) == -1.0 and clip_for_display(0.2) == 0.2
    assert clip_for_display(5.0, lo=0, hi=2) == 2.0
    assert math.isnan(clip_for_display(float("nan")))
    np.testing.assert_array_equal(clip_for_display(np.array([-2.0, 0.5, np.nan])), [-1.0, 0.5, np.nan])
