"""Tests of the CVAE's anchoring (predictors.cvae.anchor): the baseline weight and the spread rule chosen inside
fit, the blended mean, the perturbed spread, determinism and persistence."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

from benchmark.core.task import Task, dense
from benchmark.data.synthetic import make_synthetic
from predictors.cvae import CVAEPredictor
from predictors.cvae import anchor as anchoring
from predictors.linear import Linear

TASK = Task("condition", "control", "cell_type", expression="counts")
TINY = dict(n_latent=4, n_hidden=32, batch_size=128, max_epochs=20, max_steps=120, kl_warmup_steps=20)
"""A small network: the tests are about the anchoring, not the network's quality."""


def _select(adata: AnnData, context: str, label: str) -> AnnData:
    obs = adata.obs
    return adata[(obs["cell_type"].astype(str) == context) & (obs["condition"].astype(str) == label)]


def _without(adata: AnnData, context: str, label: str) -> AnnData:
    """The dataset minus one (context, perturbation) group: a holdout_context split's training cells."""
    obs = adata.obs
    held = (obs["cell_type"].astype(str) == context) & (obs["condition"].astype(str) == label)
    return adata[~held.to_numpy()].copy()


def _mean(x) -> np.ndarray:
    """Per-gene mean summed in float64 (a float32 sum alone errs by ~1e-6)."""
    return dense(x).mean(axis=0)


def _delta(pred: AnnData, control: AnnData) -> np.ndarray:
    return _mean(pred.X) - _mean(TASK.lognorm(control))


class ZeroShift(CVAEPredictor):
    """A CVAE crippled to predict no change: its cells are the given control cells."""

    def generate_cells(self, control, perturbation, context, rule=None, mode=None):
        super().generate_cells(control, perturbation, context, rule, mode)  # still declines what it must
        return dense(self.task_.lognorm(control))


def test_a_crippled_cvae_gets_weight_one_and_the_linear_mean(small_synthetic: AnnData) -> None:
    train = _without(small_synthetic, "C0", "P1")
    crippled = ZeroShift(**{**TINY, "max_steps": 1}, spread="model").fit(train, TASK)
    assert crippled.mean_weight_ == 1.0
    table = crippled.inner_scores_["B"]["r_by_weight"]
    assert table["0"] == 0.0 and table["1"] > 0.1  # no shift has no correlation
    assert len({round(table[w], 12) for w in ("0.25", "0.5", "0.75", "1")}) == 1  # every w > 0 ties
    control = _select(small_synthetic, "C0", "control")
    linear = Linear().fit(train, TASK)
    np.testing.assert_allclose(
        _delta(crippled.predict(control, "P1", "C0"), control),
        _delta(linear.predict(control, "P1", "C0"), control),
        atol=1e-6,
    )
    assert crippled.selection_["mean_weight"] == 1.0 and crippled.train_stats_["mean_weight"]["B"] == 1.0


def test_weight_choice_follows_the_inner_r_and_ties_go_to_the_baseline() -> None:
    # A fold where the CVAE's shift is right and the baseline's is wrong: the CVAE's weight wins.
    truth = np.random.default_rng(0).normal(size=50)
    wrong = np.random.default_rng(1).normal(size=50)
    rows = [[anchoring.pearson(truth, w * wrong + (1 - w) * truth) for w in anchoring.MEAN_WEIGHTS]]
    assert anchoring.choose("auto", "model", rows, [])[0] == 0.0
    assert anchoring.choose_weight(np.ones((3, 5))) == 1.0  # a tie: the simpler baseline
    assert anchoring.choose("cvae", "model", rows, [])[0] == 0.0
    assert anchoring.choose("baseline", "model", rows, [])[0] == 1.0
    assert anchoring.choose("auto", "auto", [], []) == (1.0, "model")  # nothing to validate on
    spreads = [{"model": 0.5, "perturbed": 0.2}]
    assert anchoring.choose("auto", "auto", rows, spreads)[1] == "perturbed"


def test_nonlinear_response_the_cvae_keeps_weight_below_one() -> None:
    # Each context responds on its own genes (context-specific effects dominate): the baseline's transfer from
    # the other contexts is wrong by construction, the CVAE, which sees each context's cells, less so.
    data = make_synthetic(
        n_genes=60, n_contexts=3, n_perturbations=2, cells_per_group=60, seed=4, frac_context_specific=0.3
    )
    fitted = CVAEPredictor(**TINY, mean_response="auto", spread="model").fit(data, TASK)
    assert fitted.inner_scores_["B"]["groups"] >= 2
    r = fitted.inner_scores_["B"]["r_by_weight"]
    assert fitted.mean_weight_ == max(
        (float(w) for w in r), key=lambda w: (round(r[f"{w:g}"], 12), w)
    )  # the inner table's own argmax, ties to the larger weight


def test_predicted_mean_shift_is_the_blended_shift(small_synthetic: AnnData) -> None:
    train = _without(small_synthetic, "C1", "P0")
    model = CVAEPredictor(**TINY, mean_response="baseline", spread="perturbed").fit(train, TASK)
    control = _select(small_synthetic, "C1", "control")
    cvae_shift = _mean(model.generate_cells(control, "P0", "C1")) - _mean(TASK.lognorm(control))
    base_shift = _delta(model.anchor_.baseline.predict(control, "P0", "C1"), control)
    assert not np.allclose(cvae_shift, base_shift, atol=1e-3)
    for w in (0.25, 0.75, 1.0):
        model.anchor_.weights["B"] = w
        np.testing.assert_allclose(
            _delta(model.predict(control, "P0", "C1"), control),
            w * base_shift + (1 - w) * cvae_shift,
            atol=1e-6,
        )


def _gene_var_error(pred: np.ndarray, real: np.ndarray) -> float:
    return anchoring.var_ratio_error(pred, real)


def test_perturbed_spread_is_closer_to_the_real_perturbed_variance() -> None:
    # A strong, known change of dispersion on a fifth of the genes.
    data = make_synthetic(
        n_genes=60,
        n_contexts=3,
        n_perturbations=1,
        cells_per_group=80,
        seed=2,
        frac_variance=0.2,
        variance_effect=2.0,
        frac_affected=0.05,
    )
    train = _without(data, "C2", "P0")
    model = CVAEPredictor(**TINY, mean_response="cvae", spread="perturbed").fit(train, TASK)
    control = _select(data, "C2", "control")
    real = dense(TASK.lognorm(_select(data, "C2", "P0")))
    model_cells = model.generate_cells(control, "P0", "C2")
    perturbed = dense(model.predict(control, "P0", "C2").X)
    assert _gene_var_error(perturbed, real) < _gene_var_error(model_cells, real)


def test_same_seed_same_auto_fit_and_predictions_and_save_load(tmp_path, small_synthetic: AnnData) -> None:
    train = _without(small_synthetic, "C0", "P2")
    control = _select(small_synthetic, "C0", "control")
    fits = [CVAEPredictor(**TINY, inner_folds=1).fit(train, TASK) for _ in range(2)]
    preds = [f.predict(control, "P2", "C0").X for f in fits]
    np.testing.assert_array_equal(preds[0], preds[1])
    assert fits[0].inner_scores_["B"] == fits[1].inner_scores_["B"]
    fits[0].save(tmp_path)
    loaded = CVAEPredictor(**TINY, inner_folds=1).load_fitted(tmp_path)
    np.testing.assert_array_equal(loaded.predict(control, "P2", "C0").X, preds[0])
    assert loaded.selection_ == fits[0].selection_


def test_inner_folds_hold_out_training_groups_like_the_splits(small_synthetic: AnnData) -> None:
    contexts = TASK.contexts(small_synthetic).astype(str)
    perts = TASK.perturbations(small_synthetic)
    folds = anchoring.inner_folds(small_synthetic, TASK, n_folds=3, seed=0)
    assert len(folds) == 3
    for fold in folds:
        held = set(zip(contexts[fold.held_out], perts[fold.held_out], strict=True))
        assert all(p != "control" for _, p in held) and len({t for t, _ in held}) == 1
        assert set(fold.groups) <= held
    one_context = small_synthetic[contexts == "C0"].copy()
    combos = anchoring.inner_folds(one_context, TASK, n_folds=5, seed=0)
    assert [f.name for f in combos] == ["combination P0+P1", "combination P0+P2"]


def test_bad_anchoring_values_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="mean_response must be one of"):
        CVAEPredictor(mean_response="linear")
    with pytest.raises(ValueError, match="spread must be one of"):
        CVAEPredictor(spread="wide")
    with pytest.raises(ValueError, match="inner_folds must be an integer >= 1"):
        CVAEPredictor(inner_folds=0)


def test_numpy_blas_runs_at_the_fits_thread_count(small_synthetic: AnnData, monkeypatch) -> None:
    from threadpoolctl import threadpool_info

    seen = []
    fit = Linear.fit

    def spy(self, train, task):
        seen.append({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})
        return fit(self, train, task)

    monkeypatch.setattr(Linear, "fit", spy)
    model = CVAEPredictor(**{**TINY, "max_steps": 2}, mean_response="baseline", spread="model", n_threads=1)
    model.fit(small_synthetic, TASK)
    assert seen and all(threads == {1} for threads in seen)
