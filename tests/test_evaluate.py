"""The scoring engine: pure (no MLflow), the mean oracle as defined, `others` from real data, references exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from anndata import AnnData

from benchmark.core.pseudobulk import group_profiles
from benchmark.core.task import LOGNORM_LAYER, Task, dense, lognormalize
from benchmark.data.splits import MIN_CELLS, make_splits
from benchmark.data.synthetic import make_synthetic
from benchmark.scoring.evaluate import evaluate_target, mean_oracle, other_deltas
from benchmark.scoring.metrics import METRICS, EvalData, score
from benchmark.scoring.references import ReferenceShifts, reference_predictions

ROOT = Path(__file__).resolve().parents[1]
TASK = Task("condition", "control", "cell_type", expression="counts")


@pytest.fixture(scope="module")
def data() -> AnnData:
    adata = make_synthetic(n_genes=40, n_contexts=3, n_perturbations=2, cells_per_group=30, seed=3)
    adata.layers[LOGNORM_LAYER] = lognormalize(adata.X)
    return adata


def _cells(adata: AnnData, context: str, perturbation: str) -> np.ndarray:
    mask = (adata.obs["cell_type"] == context).to_numpy() & (
        adata.obs["condition"] == perturbation
    ).to_numpy()
    return dense(adata.layers[LOGNORM_LAYER][mask])


def test_engine_runs_without_importing_mlflow():
    code = (
        "import sys, numpy as np\n"
        "from benchmark.scoring.evaluate import evaluate_target\n"
        "rng = np.random.default_rng(0)\n"
        "c, r = rng.normal(size=(20, 8)), rng.normal(1.0, size=(25, 8))\n"
        "out = evaluate_target(c, r, c + 0.5, None, {'mean_shift': c + 0.4}, seed=0, ceiling_repeats=2)\n"
        "assert out.metrics and out.oracle and out.reference_name == 'mean_shift'\n"
        "assert 'mlflow' not in sys.modules, 'the engine imported mlflow'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_mean_oracle_is_control_plus_the_true_mean_shift_scored_identically():
    rng = np.random.default_rng(1)
    control = rng.normal(loc=10.0, size=(30, 12))  # far from 0: the clip at 0 does not bind
    real = rng.normal(loc=10.0 + np.linspace(-1, 1, 12), scale=2.0, size=(40, 12))
    by_hand = control + (real.mean(axis=0) - control.mean(axis=0))
    np.testing.assert_allclose(mean_oracle(control, real), by_hand)
    out = evaluate_target(control, real, control, None, {}, seed=0, ceiling_repeats=2)
    expected = score(EvalData(control=control, real=real, pred=by_hand))
    assert out.oracle == pytest.approx(expected, nan_ok=True)
    assert out.oracle["r"] == pytest.approx(1.0)  # the true mean shift: its Δ is Δ_true
    assert out.oracle["mse_mean"] == pytest.approx(0.0, abs=1e-20)
    assert out.oracle["var_ratio"] != pytest.approx(
        0.0, abs=0.1
    )  # but the control's spread, not the real one


def test_every_set_of_predicted_cells_is_scored_clipped_at_zero():
    rng = np.random.default_rng(3)
    control = np.abs(rng.normal(size=(30, 12)))
    real = np.abs(rng.normal(loc=0.5, size=(30, 12)))
    pred = control - 0.4  # a shift that leaves negative values
    out = evaluate_target(control, real, pred, None, {"mean_shift": pred}, seed=0, ceiling_repeats=2)
    clipped = score(EvalData(control=control, real=real, pred=np.maximum(pred, 0.0)))
    unclipped = score(EvalData(control=control, real=real, pred=pred))
    assert out.metrics == pytest.approx(clipped, nan_ok=True)
    assert out.reference == pytest.approx(clipped, nan_ok=True)
    assert out.metrics["mse_mean"] != pytest.approx(unclipped["mse_mean"])
    oracle = np.maximum(mean_oracle(control, real), 0.0)
    assert out.oracle == pytest.approx(score(EvalData(control=control, real=real, pred=oracle)), nan_ok=True)


def test_the_first_reference_anchors_the_normalized_scores():
    rng = np.random.default_rng(2)
    control, real = rng.normal(size=(30, 12)), rng.normal(0.5, size=(30, 12))
    shift = control + 0.3
    out = evaluate_target(control, real, shift, None, {"mean_shift": shift, "other": control}, seed=0)
    assert out.reference_name == "mean_shift"
    assert out.reference == pytest.approx(out.metrics, nan_ok=True)
    finite = {k: v for k, v in out.normalized.items() if np.isfinite(v)}
    assert finite and all(v == 0.0 for v in finite.values())
    alone = evaluate_target(control, real, shift, None, {}, seed=0, ceiling_repeats=2)
    assert alone.reference_name == "" and all(np.isnan(v) for v in alone.normalized.values())
    assert set(out.metrics) == set(METRICS)


def test_others_on_holdout_context_are_the_same_perturbation_in_the_other_contexts(data):
    means, sizes = group_profiles(data, TASK)
    others = other_deltas(means, sizes, "control", "holdout_context", "P0", "C1", MIN_CELLS)
    expected = [
        _cells(data, t, "P0").mean(axis=0) - _cells(data, t, "control").mean(axis=0) for t in ("C0", "C2")
    ]
    np.testing.assert_allclose(others, np.array(expected), rtol=1e-10, atol=1e-12)
    # other split kinds: the other perturbations of the target's own context
    within = other_deltas(means, sizes, "control", "random", "P0", "C1", MIN_CELLS)
    p1 = _cells(data, "C1", "P1").mean(axis=0) - _cells(data, "C1", "control").mean(axis=0)
    np.testing.assert_allclose(within, p1[None, :], rtol=1e-10, atol=1e-12)


def test_others_leave_out_groups_below_the_minimum_size(data):
    means, sizes = group_profiles(data, TASK)
    small = dict(sizes)
    small[("C0", "P0")] = MIN_CELLS - 1
    assert len(other_deltas(means, small, "control", "holdout_context", "P0", "C1", MIN_CELLS)) == 1
    small[("C2", "control")] = MIN_CELLS - 1  # a context without enough controls has no usable Δ
    assert other_deltas(means, small, "control", "holdout_context", "P0", "C1", MIN_CELLS) is None


def test_reference_shift_equals_the_mean_shift_predictor_exactly(data):
    from predictors.baselines import MeanShift

    split = make_splits(data, TASK, "holdout_context")[0]
    train = data[list(split.train_cells)].copy()
    target = split.targets[0]
    control = data[list(target.control_cells)].copy()
    control_x = dense(TASK.lognorm(control))
    refs = reference_predictions(ReferenceShifts.fit(train, TASK), control_x, target.perturbation)
    predicted = MeanShift().fit(train, TASK).predict(control, target.perturbation, target.context)
    assert list(refs) == ["mean_shift"]
    np.testing.assert_array_equal(refs["mean_shift"], dense(predicted.X))
    assert reference_predictions(ReferenceShifts.fit(train, TASK), control_x, "never_seen") == {}


def test_others_reach_the_metrics_and_the_ceiling(monkeypatch):
    from benchmark.scoring.metrics import Metric

    seen = []

    def n_others(data: EvalData) -> float:
        seen.append(None if data.others is None else data.others.shape)
        return float("nan") if data.others is None else float(len(data.others))

    monkeypatch.setitem(METRICS, "n_others", Metric("n_others", n_others, True, "rows of others", "mean"))
    rng = np.random.default_rng(4)
    control, real = rng.normal(size=(20, 6)), rng.normal(1.0, size=(20, 6))
    others = rng.normal(size=(3, 6))
    out = evaluate_target(control, real, control, None, {"mean_shift": control}, others, ceiling_repeats=3)
    assert out.metrics["n_others"] == out.ceiling["n_others"] == out.oracle["n_others"] == 3.0
    assert set(seen) == {(3, 6)}


def test_additive_is_the_reference_of_a_combination_never_seen(small_synthetic):
    from predictors.baselines import Additive

    split = make_splits(small_synthetic, TASK, "holdout_combo")[0]
    train = small_synthetic[list(split.train_cells)].copy()
    target = split.targets[0]
    control = small_synthetic[list(target.control_cells)].copy()
    control_x = dense(TASK.lognorm(control))
    refs = reference_predictions(ReferenceShifts.fit(train, TASK), control_x, target.perturbation)
    predicted = Additive().fit(train, TASK).predict(control, target.perturbation, target.context)
    assert list(refs) == ["additive"]
    np.testing.assert_array_equal(refs["additive"], dense(predicted.X))


def test_a_prediction_equal_to_its_reference_reuses_its_scores_exactly():
    rng = np.random.default_rng(5)
    control = np.abs(rng.normal(size=(30, 12)))
    real = np.abs(rng.normal(loc=0.5, size=(25, 12)))
    shifted = (control + 0.3).astype(np.float32)
    reused = evaluate_target(
        control, real, shifted, None, {"mean_shift": shifted.copy()}, seed=0, ceiling_repeats=2
    )
    scored = evaluate_target(control, real, control, None, {"mean_shift": shifted}, seed=0, ceiling_repeats=2)
    assert reused.reference == pytest.approx(scored.reference, nan_ok=True, rel=0, abs=0)
    assert reused.reference == pytest.approx(reused.metrics, nan_ok=True, rel=0, abs=0)
    assert scored.reference != pytest.approx(scored.metrics, nan_ok=True)  # the other path scores it anew
