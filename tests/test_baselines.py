"""Baselines on tiny hand-made datasets: arithmetic checked against hand-computed numbers, NotApplicable cases,
output alignment, and the linear model's planted-relation, strong-penalty and pure-noise behaviour."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from benchmark.core.errors import NotApplicable
from benchmark.core.task import Task
from predictors.baselines import Additive, LinearCV, MeanShift, NoChange
from predictors.linear import Linear, ridge_multi_hot, ridge_transfer
from predictors.registry import make_predictor
from predictors.ridge import MULTI_HOT_DEFAULT, Candidate, pca_basis, transfer_shift

TASK = Task(perturbation_key="condition", control_label="control", context_key="cell_type")
GENES = ["g0", "g1", "g2"]


def make_adata(cells: list[tuple[str, str, list[float]]], genes: list[str] | None = None, sparse=False):
    """AnnData from (cell_type, condition, values) rows."""
    x = np.array([row for _, _, row in cells], dtype=np.float32)
    obs = pd.DataFrame(
        {"cell_type": [t for t, _, _ in cells], "condition": [p for _, p, _ in cells]},
        index=[f"c{i}" for i in range(len(cells))],
    )
    var = pd.DataFrame(index=genes or [f"g{j}" for j in range(x.shape[1])])
    return anndata.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)


def values(adata) -> np.ndarray:
    """Dense X as float64."""
    return np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float64)


# t1: control mean [2, 2, 2]; P mean [3, 3, 2] from three cells -> shift [1, 1, 0]
# t2: control mean [1, 1, 1]; P one cell [4, 1, 2]              -> shift [3, 0, 1]
# mean shift of P, equal weight per context: [2, 0.5, 0.5]   (pooling the 4 cells would give [2.5, 0.75, 0.25])
# t3: controls only, the prediction target.
CELLS = [
    ("t1", "control", [1, 2, 3]),
    ("t1", "control", [3, 2, 1]),
    ("t1", "P", [3, 2, 2]),
    ("t1", "P", [3, 4, 2]),
    ("t1", "P", [3, 3, 2]),
    ("t2", "control", [0, 0, 0]),
    ("t2", "control", [2, 2, 2]),
    ("t2", "P", [4, 1, 2]),
    ("t3", "control", [1, 1, 1]),
    ("t3", "control", [0, 2, 4]),
]
T3_CONTROL = [[1, 1, 1], [0, 2, 4]]
P_MEAN_SHIFT = [2, 0.5, 0.5]


def control_of(adata, context: str):
    """The control cells of one context."""
    mask = (adata.obs["cell_type"] == context) & (adata.obs["condition"] == "control")
    return adata[mask.to_numpy()].copy()


@pytest.mark.parametrize("sparse", [False, True])
def test_no_change_returns_the_control_cells(sparse):
    adata = make_adata(CELLS, sparse=sparse)
    pred = NoChange().fit(adata, TASK).predict(control_of(adata, "t3"), "P", "t3")
    np.testing.assert_array_equal(values(pred), T3_CONTROL)
    assert list(pred.var_names) == GENES
    assert list(pred.obs["perturbation"]) == ["P", "P"]


@pytest.mark.parametrize("sparse", [False, True])
def test_mean_shift_adds_the_context_averaged_shift(sparse):
    adata = make_adata(CELLS, sparse=sparse)
    pred = MeanShift().fit(adata, TASK).predict(control_of(adata, "t3"), "P", "t3")
    expected = np.array(T3_CONTROL) + np.array(P_MEAN_SHIFT)  # [[3, 1.5, 1.5], [2, 2.5, 4.5]]
    np.testing.assert_allclose(values(pred), expected, atol=1e-6)


def test_mean_shift_not_applicable_for_unseen_perturbation():
    adata = make_adata(CELLS)
    model = MeanShift().fit(adata, TASK)
    with pytest.raises(NotApplicable, match="never seen"):
        model.predict(control_of(adata, "t3"), "Q", "t3")


def test_group_without_controls_in_its_context_gives_no_shift():
    cells = [*CELLS, ("t4", "Q", [9, 9, 9])]  # Q only where there are no controls: no shift can be formed
    model = MeanShift().fit(make_adata(cells), TASK)
    assert ("t4", "Q") not in model.shifts_
    with pytest.raises(NotApplicable):
        model.predict(control_of(make_adata(cells), "t3"), "Q", "t3")


def test_prediction_follows_the_control_gene_order():
    adata = make_adata(CELLS)
    model = MeanShift().fit(adata, TASK)
    control = control_of(adata, "t3")[:, ["g2", "g0", "g1"]].copy()
    pred = model.predict(control, "P", "t3")
    assert list(pred.var_names) == ["g2", "g0", "g1"]
    assert pred.shape == control.shape
    expected = np.array([[1, 1, 1], [4, 0, 2]]) + np.array([0.5, 2, 0.5])
    np.testing.assert_allclose(values(pred), expected, atol=1e-6)


def test_unknown_control_gene_is_an_error():
    adata = make_adata(CELLS)
    model = MeanShift().fit(adata, TASK)
    other = make_adata([("t3", "control", [1, 1, 1])], genes=["g0", "g1", "gX"])
    with pytest.raises(ValueError, match="not in training"):
        model.predict(other, "P", "t3")


def test_predict_before_fit_is_an_error():
    adata = make_adata(CELLS)
    for model in (NoChange(), MeanShift(), Additive(), Linear(), LinearCV()):
        with pytest.raises(RuntimeError, match="fitted"):
            model.predict(control_of(adata, "t3"), "P", "t3")


# Combinations, 4 genes. Context k: control mean [1, 1, 1, 1]; context m: control mean [2, 2, 2, 2].
# Shifts: A in k [1, 0, 0, 0], A in m [3, 0, 0, -1] -> A mean shift [2, 0, 0, -0.5]; B in k [0, 2, 0, 0.5].
# Additive prediction for A+B: control + [2, 2, 0, 0].
COMBO_CELLS = [
    ("k", "control", [0, 1, 2, 1]),
    ("k", "control", [2, 1, 0, 1]),
    ("k", "A", [2, 1, 1, 1]),
    ("k", "B", [1, 3, 1, 1.5]),
    ("k", "A+C", [5, 5, 5, 5]),
    ("m", "control", [2, 2, 2, 2]),
    ("m", "A", [5, 2, 2, 1]),
]


def test_additive_sums_the_single_mean_shifts():
    adata = make_adata(COMBO_CELLS)
    control = control_of(adata, "k")
    pred = Additive().fit(adata, TASK).predict(control, "A+B", "k")
    expected = np.array([[0, 1, 2, 1], [2, 1, 0, 1]]) + np.array([2, 2, 0, 0])
    np.testing.assert_allclose(values(pred), expected, atol=1e-6)
    assert list(pred.var_names) == ["g0", "g1", "g2", "g3"]


@pytest.mark.parametrize(
    ("label", "reason"), [("A", "applies to combinations"), ("A+C", "never seen"), ("A+Z", "never seen")]
)
def test_additive_not_applicable(label, reason):
    adata = make_adata(COMBO_CELLS)
    model = Additive().fit(adata, TASK)
    with pytest.raises(NotApplicable, match=reason):
        model.predict(control_of(adata, "k"), label, "k")


def test_count_data_is_predicted_on_the_lognorm_scale():
    counts = Task(
        perturbation_key="condition", control_label="control", context_key="cell_type", expression="counts"
    )
    # library size 1e4 per cell, so lognorm = log1p(counts): control g0 = log1p(5000) in both cells
    cells = [("t", "control", [5000, 5000]), ("t", "control", [5000, 5000]), ("t", "P", [9999, 1])]
    adata = make_adata(cells)
    pred = MeanShift().fit(adata, counts).predict(control_of(make_adata(cells), "t"), "P", "t")
    expected_shift = np.log1p([9999.0, 1.0]) - np.log1p([5000.0, 5000.0])
    np.testing.assert_allclose(values(pred), np.log1p([[5000.0, 5000.0]] * 2) + expected_shift, rtol=1e-5)


# --- LinearCV (linear_cv): context transfer ---------------------------------------------------------------


def planted_contexts(slope_scale: float, n_contexts=10, n_genes=40, seed=0):
    """Contexts with random control profiles; perturbation P's shift = a + slope * (c - mean c) + small noise.

    Each group has two cells, profile +- 0.05, so its mean is exactly the planted profile."""
    rng = np.random.default_rng(seed)
    control = rng.uniform(0.5, 3.0, size=(n_contexts, n_genes))
    slope = rng.uniform(-1.5, 1.5, size=n_genes) * slope_scale
    offset = rng.normal(0, 0.5, size=n_genes)
    noise_sd = 0.02 if slope_scale else 0.5
    shift = offset + slope * (control - control.mean(axis=0)) + rng.normal(0, noise_sd, size=control.shape)
    cells = []
    for t in range(n_contexts):
        for label, profile in (("control", control[t]), ("P", control[t] + shift[t])):
            cells += [(f"t{t}", label, list(profile + 0.05)), (f"t{t}", label, list(profile - 0.05))]
    return make_adata(cells), shift


def held_out(adata, context: str, perturbation: str):
    """Training data without the (context, perturbation) cells, and that context's controls."""
    mask = (adata.obs["cell_type"] == context) & (adata.obs["condition"] == perturbation)
    return adata[~mask.to_numpy()].copy(), control_of(adata, context)


def predicted_shift(model, train, control, perturbation: str, context: str) -> np.ndarray:
    """Mean predicted profile minus mean control profile."""
    pred = model.fit(train, TASK).predict(control, perturbation, context)
    return values(pred).mean(axis=0) - values(control).mean(axis=0)


def test_linear_cv_recovers_a_planted_control_to_shift_relation():
    adata, shift = planted_contexts(slope_scale=1.0)
    train, control = held_out(adata, "t0", "P")
    linear = LinearCV()
    linear_err = np.mean((predicted_shift(linear, train, control, "P", "t0") - shift[0]) ** 2)
    mean_err = np.mean((predicted_shift(MeanShift(), train, control, "P", "t0") - shift[0]) ** 2)
    assert linear.transfer_model_.family != "mean_shift"
    assert linear_err < 0.1 * mean_err


def test_linear_cv_equals_mean_shift_in_the_strong_penalty_limit():
    adata, _ = planted_contexts(slope_scale=1.0)
    train, control = held_out(adata, "t0", "P")
    strong = predicted_shift(LinearCV(penalties=(1e9,)), train, control, "P", "t0")
    mean = predicted_shift(MeanShift(), train, control, "P", "t0")
    np.testing.assert_allclose(strong, mean, atol=1e-4)


@pytest.mark.parametrize("family", ["per_gene", "low_rank"])
def test_each_transfer_ridge_tends_to_the_mean_shift(family):
    rng = np.random.default_rng(0)
    c, d, c_new = rng.uniform(0, 3, (5, 6)), rng.normal(0, 1, (5, 6)), rng.uniform(0, 3, 6)
    basis = pca_basis(np.vstack([c, c + d]), 4)
    strong = transfer_shift(c, d, c_new, basis, Candidate(family, 1e9, 4))
    weak = transfer_shift(c, d, c_new, basis, Candidate(family, 1e-3, 4))
    np.testing.assert_allclose(strong, d.mean(axis=0), atol=1e-6)
    assert not np.allclose(weak, d.mean(axis=0), atol=1e-2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_cv_picks_mean_shift_on_pure_noise(seed):
    adata, _ = planted_contexts(slope_scale=0.0, seed=seed)
    train, control = held_out(adata, "t0", "P")
    linear = LinearCV().fit(train, TASK)
    assert linear.transfer_model_.family == "mean_shift"
    np.testing.assert_allclose(
        values(linear.predict(control, "P", "t0")),
        values(MeanShift().fit(train, TASK).predict(control, "P", "t0")),
    )


def test_linear_cv_falls_back_to_mean_shift_with_too_few_contexts():
    adata = make_adata(CELLS)  # P seen in two contexts: a single CV fold would be uninformative
    linear = LinearCV().fit(adata, TASK)
    assert linear.transfer_model_.family == "mean_shift"
    pred = linear.predict(control_of(adata, "t3"), "P", "t3")
    np.testing.assert_allclose(values(pred), np.array(T3_CONTROL) + np.array(P_MEAN_SHIFT), atol=1e-6)


def test_linear_cv_learns_a_contexts_systematic_shift_from_its_other_perturbations():
    # Every perturbation in context t shifts by the same context effect gamma_t (plus small noise): the held-out
    # (t0, Q0) is predicted from t0's other perturbations; mean_shift only sees Q0 in the other contexts.
    rng = np.random.default_rng(0)
    gamma = rng.normal(0, 1, size=(3, 20))
    cells = []
    for t in range(3):
        cells += [(f"t{t}", "control", [1.0] * 20)] * 2
        for q in range(6):
            profile = 1.0 + gamma[t] + rng.normal(0, 0.05, size=20)
            cells += [(f"t{t}", f"Q{q}", list(profile))]
    train, control = held_out(make_adata(cells), "t0", "Q0")
    linear = LinearCV()
    linear_err = np.mean((predicted_shift(linear, train, control, "Q0", "t0") - gamma[0]) ** 2)
    mean_err = np.mean((predicted_shift(MeanShift(), train, control, "Q0", "t0") - gamma[0]) ** 2)
    assert linear.transfer_model_.family == "two_way"
    assert linear_err < 0.05 * mean_err


# --- LinearCV (linear_cv): combinations -------------------------------------------------------------------


def additive_world(labels: list[str], effects: dict[str, list[float]]):
    """One context; each label's cells sit at control + the sum of its genes' effects (control = [1, 1, 1])."""
    cells = [("k", "control", [1.0, 1.0, 1.0])] * 2
    for label in labels:
        shift = np.sum([effects[g] for g in label.split("+")], axis=0)
        cells += [("k", label, list(1.0 + shift))] * 2
    return make_adata(cells)


EFFECTS = {"A": [1.0, 0, 0], "B": [0, 1.0, 0], "C": [0, 0, 1.0], "D": [0.5, -0.5, 0]}


def test_linear_cv_predicts_a_combination_whose_single_is_missing():
    adata = additive_world(["A", "B", "A+C"], EFFECTS)  # C only inside A+C: additive cannot predict B+C
    control = control_of(adata, "k")
    with pytest.raises(NotApplicable):
        Additive().fit(adata, TASK).predict(control, "B+C", "k")
    linear = LinearCV()
    shift = predicted_shift(linear, adata, control, "B+C", "k")
    assert linear.combo_model_ == MULTI_HOT_DEFAULT  # one CV fold only (A, from A+C): the documented default
    np.testing.assert_allclose(shift, [0, 1, 1], atol=0.2)  # B + C; exact as the penalty -> 0


def test_linear_cv_matches_additive_truth_on_combinations():
    adata = additive_world(["A", "B", "C", "D", "A+C", "B+C", "C+D", "A+D"], EFFECTS)
    control = control_of(adata, "k")
    linear = LinearCV()
    shift = predicted_shift(linear, adata, control, "A+B", "k")
    assert linear.combo_model_.family == "multi_hot" and linear.combo_cv_
    np.testing.assert_allclose(shift, [1, 1, 0], atol=0.05)


def test_linear_cv_not_applicable_for_an_unseen_gene():
    adata = additive_world(["A", "B", "A+C"], EFFECTS)
    with pytest.raises(NotApplicable, match="never seen"):
        LinearCV().fit(adata, TASK).predict(control_of(adata, "k"), "A+Z", "k")


def test_linear_cv_output_follows_the_control_gene_order():
    adata = additive_world(["A", "B", "A+C"], EFFECTS)
    control = control_of(adata, "k")[:, ["g1", "g2", "g0"]].copy()
    pred = LinearCV().fit(adata, TASK).predict(control, "A", "k")
    assert list(pred.var_names) == ["g1", "g2", "g0"] and pred.shape == control.shape
    np.testing.assert_allclose(values(pred), [[1, 1, 2]] * 2, atol=1e-6)  # A's own shift [1, 0, 0], reordered


def test_registry_builds_the_baselines():
    for name, cls in [
        ("no_change", NoChange),
        ("mean_shift", MeanShift),
        ("additive", Additive),
        ("linear", Linear),
        ("linear_cv", LinearCV),
    ]:
        _, model = make_predictor(name)
        assert type(model) is cls
    assert LinearCV(penalties=(1.0,)).get_params()["penalties"] == (1.0,)


# --- Linear (linear): one ridge family, the penalty chosen by leave-one-training-context-out CV ------------------


def profile_driven_contexts(n_contexts=8, n_genes=30, seed=0):
    """Contexts whose control profiles vary along one direction u (score s_t), and P's shift = a + s_t v: a relation
    that the ridge of the shift on the control profile can represent. Two cells per group, profile +- 0.05."""
    rng = np.random.default_rng(seed)
    u, v, a = rng.normal(0, 1, n_genes), rng.normal(0, 1, n_genes), rng.normal(0, 0.5, n_genes)
    scores = rng.normal(0, 1, n_contexts)
    control = 2.0 + np.outer(scores, u) + rng.normal(0, 0.02, (n_contexts, n_genes))
    shift = a + np.outer(scores, v)
    cells = []
    for t in range(n_contexts):
        for label, profile in (("control", control[t]), ("P", control[t] + shift[t])):
            cells += [(f"t{t}", label, list(profile + 0.05)), (f"t{t}", label, list(profile - 0.05))]
    return make_adata(cells), shift


def test_ridge_transfer_spans_mean_shift_to_interpolation():
    rng = np.random.default_rng(0)
    c, d, c_new = rng.uniform(0, 3, (5, 6)), rng.normal(0, 1, (5, 6)), rng.uniform(0, 3, 6)
    np.testing.assert_allclose(ridge_transfer(c, d, c_new, np.inf), d.mean(axis=0))
    np.testing.assert_allclose(ridge_transfer(c, d, c_new, 1e9), d.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(
        ridge_transfer(c, d, c[2], 1e-9), d[2], atol=1e-4
    )  # a training context, no penalty
    np.testing.assert_allclose(ridge_transfer(c[:1], d[:1], c_new, 0.1), d[0])  # one context: its shift


def test_linear_recovers_a_shift_driven_by_the_control_profile():
    adata, shift = profile_driven_contexts()
    train, control = held_out(adata, "t0", "P")
    linear = Linear()
    linear_err = np.mean((predicted_shift(linear, train, control, "P", "t0") - shift[0]) ** 2)
    mean_err = np.mean((predicted_shift(MeanShift(), train, control, "P", "t0") - shift[0]) ** 2)
    assert linear.transfer_penalty_ < 1.0
    assert linear_err < 0.05 * mean_err


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_linear_on_pure_noise_chooses_the_mean_shift_limit(seed):
    # Shifts independent of the control profiles: the CV error is least at the infinite penalty (the mean shift).
    adata, _ = planted_contexts(slope_scale=0.0, seed=seed)
    train, control = held_out(adata, "t0", "P")
    linear = Linear().fit(train, TASK)
    assert linear.selection_["transfer"]["chosen"] == "penalty=inf"
    np.testing.assert_allclose(
        values(linear.predict(control, "P", "t0")),
        values(MeanShift().fit(train, TASK).predict(control, "P", "t0")),
        atol=1e-5,
    )


def test_linear_selection_records_the_cv_on_training_contexts_only():
    adata, _ = profile_driven_contexts()
    train, _ = held_out(adata, "t0", "P")
    linear = Linear(penalties=(0.1, 10.0)).fit(train, TASK)
    record = linear.selection_["transfer"]
    assert json.loads(json.dumps(linear.selection_)) == linear.selection_
    assert record["protocol"] == "leave-one-training-context-out"
    assert set(record["cv_error"]) == {"penalty=inf", "penalty=10", "penalty=0.1"}
    assert min(record["cv_error"], key=record["cv_error"].get) == record["chosen"]
    # t0's P cells are the test target: t0 has no training shift, so it is never a fold
    assert record["folds"] == [f"t{t}" for t in range(1, 8)]
    assert linear.selection_["combination"]["folds"] == []


def test_linear_with_too_few_contexts_is_the_mean_shift():
    adata = make_adata(CELLS)  # P seen in two contexts: no fold keeps 2 other contexts
    linear = Linear().fit(adata, TASK)
    assert linear.selection_["transfer"] == {
        "protocol": "leave-one-training-context-out",
        "chosen": "penalty=inf",
        "cv_error": {},
        "folds": [],
    }
    pred = linear.predict(control_of(adata, "t3"), "P", "t3")
    np.testing.assert_allclose(values(pred), np.array(T3_CONTROL) + np.array(P_MEAN_SHIFT), atol=1e-6)


def test_linear_matches_additive_truth_on_combinations_with_leave_one_combination_out():
    adata = additive_world(["A", "B", "C", "D", "A+C", "B+C", "C+D", "A+D"], EFFECTS)
    control = control_of(adata, "k")
    linear = Linear()
    shift = predicted_shift(linear, adata, control, "A+B", "k")
    record = linear.selection_["combination"]
    assert record["folds"] == ["A+C", "A+D", "B+C", "C+D"]  # combinations only
    assert record["chosen"] == "penalty=0.01"  # exact additivity: the weakest penalty predicts best
    np.testing.assert_allclose(shift, [1, 1, 0], atol=0.05)


def test_linear_predicts_a_combination_whose_single_is_missing_and_declines_an_unseen_gene():
    adata = additive_world(["A", "B", "A+C"], EFFECTS)  # C only inside A+C
    control = control_of(adata, "k")
    linear = Linear()
    np.testing.assert_allclose(predicted_shift(linear, adata, control, "B+C", "k"), [0, 1, 1], atol=0.1)
    assert linear.selection_["combination"]["chosen"] == "penalty=0.01"  # no fold: the grid's smallest
    with pytest.raises(NotApplicable, match="never seen"):
        linear.predict(control, "A+Z", "k")


def test_ridge_multi_hot_tends_to_the_mean_shift_and_to_additive():
    labels, shifts = [["A"], ["B"], ["A", "B"]], np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(ridge_multi_hot(labels, shifts, ["A", "B"], np.inf), shifts.mean(axis=0))
    np.testing.assert_allclose(ridge_multi_hot(labels, shifts, ["A", "B"], 1e-6), [1, 1], atol=1e-4)


def test_linear_cv_records_its_selection():
    adata, _ = planted_contexts(slope_scale=1.0)
    train, _ = held_out(adata, "t0", "P")
    linear = LinearCV().fit(train, TASK)
    record = linear.selection_["transfer"]
    assert json.loads(json.dumps(linear.selection_)) == linear.selection_
    assert record["chosen"] == str(linear.transfer_model_) and len(record["cv_error"]) == 41
    assert ["t0", "P"] not in record["folds"] and len(record["folds"]) == 9


def test_baselines_re_exports_every_name_of_ridge():
    """Every name defined in predictors.ridge is importable from predictors.baselines as the same object."""
    import ast
    from pathlib import Path

    from predictors import baselines, ridge

    tree = ast.parse(Path(ridge.__file__).read_text(encoding="utf-8"))
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    names += [
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    ]
    assert "TwoWayRidge" in names and "Group" in names
    for name in names:
        assert getattr(baselines, name) is getattr(ridge, name), name
        assert name in baselines.__all__, name
