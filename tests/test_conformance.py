"""`benchmark.check_predictor`: every built-in predictor passes, and a predictor that breaks a rule fails with a
message naming it and the rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmark import NotApplicable, Predictor, Task, check_predictor
from benchmark.conformance import ConformanceError, _case
from benchmark.core.protocol import predicted_anndata
from benchmark.core.task import dense, mean_profile
from predictors.params import ValidatedParams, check_float
from predictors.registry import BUILTINS, check_installed, make_predictor

SMALL_BUDGET = {"max_steps": 20, "max_epochs": 2, "n_hidden": 16, "n_latent": 4, "batch_size": 64}
"""Training budget for the neural predictors: the checks are about the protocol, not the fit's quality."""

FAST_NEURAL = {"cvae_modeB", "cvae_mlp_modeA"}
"""One CVAE per decoder in the fast suite; the other generation modes and scGen run with the slow tests."""


def _builtin(name: str):
    try:
        check_installed(name)
    except Exception as exc:  # noqa: BLE001 - an optional extra that is not installed
        pytest.skip(f"{name}: {exc}")
    _, model = make_predictor(name)
    params = {k: v for k, v in SMALL_BUDGET.items() if k in model.get_params()}
    return model, params


def _registry_cases():
    for name in BUILTINS:
        neural = name.startswith(("cvae", "scgen"))
        marks = [pytest.mark.slow] if neural and name not in FAST_NEURAL else []
        # a peer in its own environment: checked on a tiny budget in tests/test_envs.py
        if BUILTINS[name].env:
            continue
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_registry_cases()))
def test_every_builtin_predictor_conforms(name):
    model, params = _builtin(name)
    check_predictor(model, params, name=name, strict_params=True)


class Shift(ValidatedParams, Predictor):
    """A conforming toy: control cells + `scale` x the perturbation's pooled mean shift."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self._validate()

    def _validate(self):
        check_float("scale", self.scale, 0.0)

    def fit(self, train, task):
        x, labels = task.lognorm(train), task.perturbations(train)
        base = mean_profile(x[labels == task.control_label])
        self.shift_ = {p: mean_profile(x[labels == p]) - base for p in set(labels) if p != task.control_label}
        self.task_ = task
        return self

    def predict(self, control, perturbation, context):
        if perturbation not in self.shift_:
            raise NotApplicable(perturbation)
        x = dense(self.task_.lognorm(control)) + self.scale * self.shift_[perturbation]
        return predicted_anndata(x, control, perturbation, context)


class MutatesParam(Shift):
    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)  # an int or numpy scale comes back as another type


class CopiesParam(Shift):
    def __init__(self, scale: float = 1.0, genes: list | None = None):
        self.scale = scale
        self.genes = list(genes) if genes is not None else None
        self._validate()


class DoesNotStoreParam(Shift):
    def __init__(self, scale: float = 1.0):
        self.factor = scale


class AcceptsAnything(Shift):
    def _validate(self):
        """No validation: scale='not a number' fails at predict, if ever."""


class RaisesTypeError(Shift):
    def _validate(self):
        if not isinstance(self.scale, int | float):
            raise TypeError("bad")


class ValidatesOnlyInInit(Shift):
    def set_params(self, **params):
        return Predictor.set_params(self, **params)


class StateBeforeFit(Shift):
    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.shift_ = {}
        self._validate()


class FitReturnsNone(Shift):
    def fit(self, train, task):
        super().fit(train, task)


class WrongGenes(Shift):
    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        return out[:, ::-1].copy()


class OneCellPerTrainingCell(Shift):
    """Returns as many cells as the perturbation had in training (2 contexts x 40), not one per control cell."""

    def fit(self, train, task):
        self.sizes_ = dict(zip(*np.unique(task.perturbations(train), return_counts=True), strict=True))
        return super().fit(train, task)

    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        return out[np.arange(self.sizes_[perturbation]) % out.n_obs].copy()


class InfiniteValues(Shift):
    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        out.X[0, 0] = np.inf
        return out


class KeyErrorOnUnseen(Shift):
    def predict(self, control, perturbation, context):
        self.shift_[perturbation]  # noqa: B018 - raises KeyError for an unseen one
        return super().predict(control, perturbation, context)


class ContextBlind(Shift):
    """Indexes a per-context table that has no row for an unseen context."""

    def fit(self, train, task):
        self.contexts_ = {c: i for i, c in enumerate(sorted(set(task.contexts(train))))}
        return super().fit(train, task)

    def predict(self, control, perturbation, context):
        self.contexts_[context]  # noqa: B018 - KeyError for an unseen context
        return super().predict(control, perturbation, context)


class ReadsContextFromObs(Shift):
    """Reads the context column itself instead of through the task (None without contexts)."""

    def fit(self, train, task):
        self.contexts_ = set(train.obs[task.context_key])
        return super().fit(train, task)


class DeclinesAtFit(Shift):
    """Declines single perturbations at fit (the runner records it): checked on the combination instead."""

    def fit(self, train, task):
        if "P0" not in set(task.perturbations(train)):
            raise NotApplicable("needs P0 in training")
        return super().fit(train, task)


class DeclinesTooMuch(Shift):
    def check_applicable(self, train, task, perturbation, context):
        raise NotApplicable("declined before fit")


class CheckApplicableCrashes(Shift):
    def check_applicable(self, train, task, perturbation, context):
        raise RuntimeError("boom")


class Unseeded(Shift):
    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        out.X = out.X + np.random.default_rng().normal(0, 0.01, out.X.shape).astype(np.float32)
        return out


class DrawsFromFitRng(Shift):
    """Seeded, but every prediction draws on from one generator made at fit: a target depends on the order."""

    def fit(self, train, task):
        self.rng_ = np.random.default_rng(0)
        return super().fit(train, task)

    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        out.X = out.X + self.rng_.normal(0, 0.01, out.X.shape).astype(np.float32)
        return out


class ReadsHeldOut(Shift):
    """Fits on the whole dataset the training view was cut from: the held-out cells included."""

    def fit(self, train, task):
        parent = train._adata_ref if train.is_view else train
        return super().fit(parent, task)


class ReadsHeldOutAtPredict(Shift):
    """Predicts from the target's own cells, found in the dataset the control view was cut from."""

    def predict(self, control, perturbation, context):
        parent = control._adata_ref if control.is_view else control
        labels, contexts = self.task_.perturbations(parent), self.task_.contexts(parent)
        real = dense(self.task_.lognorm(parent[(labels == perturbation) & (contexts == context)]))
        if not len(real):
            return super().predict(control, perturbation, context)
        x = dense(self.task_.lognorm(control))
        return predicted_anndata(x + real.mean(axis=0) - x.mean(axis=0), control, perturbation, context)


class Cached(Shift):
    """A conforming cacheable toy: its fitted state saved as JSON."""

    cacheable = True

    def save(self, directory):
        state = {"shift": {p: v.tolist() for p, v in self.shift_.items()}, "task": vars(self.task_)}
        (directory / "state.json").write_text(json.dumps(state))

    def load_fitted(self, directory):
        state = json.loads((directory / "state.json").read_text())
        self.shift_ = {p: np.asarray(v, dtype=np.float32) for p, v in state["shift"].items()}
        self.task_ = Task(**state["task"])
        return self


class SavesRoundedState(Cached):
    """Writes its shifts to one decimal: a cached fit would predict something else than the fit."""

    def save(self, directory):
        exact = self.shift_
        self.shift_ = {p: np.round(v, 1) for p, v in exact.items()}
        try:
            super().save(directory)
        finally:
            self.shift_ = exact


class LoadReturnsNone(Cached):
    def load_fitted(self, directory):
        super().load_fitted(directory)


class KeysOnAnUnknownParam(Cached):
    def fit_params(self):
        return {"scale": self.scale, "epochs": 3}


class EditsInput(Shift):
    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        control.X[:] = 0
        return out


def test_a_conforming_toy_passes_as_a_class_an_instance_and_a_name():
    check_predictor(Shift)
    check_predictor(Shift(scale=0.5))
    check_predictor(f"{__name__}:Shift", {"scale": 2})
    check_predictor(OneCellPerTrainingCell, one_cell_per_control=False)  # documented to differ
    check_predictor(Cached)
    check_predictor(DeclinesAtFit)


@pytest.mark.parametrize(
    ("broken", "rule"),
    [
        (MutatesParam, "store its parameters unchanged: given {'scale': 1}, stored {'scale': 1.0}"),
        (DoesNotStoreParam, "store every parameter as an attribute"),
        (RaisesTypeError, "must be rejected with ValueError: the constructor .* raised TypeError"),
        (ValidatesOnlyInInit, "constructor and set_params must reject the same values: set_params accepted"),
        (StateBeforeFit, r"no learned state before fit: .*\['shift_'\]"),
        (FitReturnsNone, "fit must return self: returned NoneType"),
        (WrongGenes, "genes must be the control's"),
        (OneCellPerTrainingCell, "one cell per control cell: 80 cells for 29 control cells"),
        (InfiniteValues, "values must be finite"),
        (KeyErrorOnUnseen, r"must raise NotApplicable: predict\('never_seen_perturbation'"),
        (ContextBlind, r"must raise NotApplicable: predict\('P0', 'never_seen_context'\) raised KeyError"),
        (ReadsContextFromObs, "a task without contexts must be predicted or declined .*raised KeyError"),
        (DeclinesTooMuch, "check_applicable must not decline a target the fitted model predicts"),
        (CheckApplicableCrashes, "check_applicable may only raise NotApplicable"),
        (Unseeded, "same seed must give the same predictions: two fresh fits differ: largest difference"),
        (DrawsFromFitRng, "must not depend on the predictions made before it"),
        (ReadsHeldOut, "must not depend on held-out cells"),
        (ReadsHeldOutAtPredict, "must not depend on held-out cells"),
        (EditsInput, "predict must not modify the control cells"),
        (SavesRoundedState, "a loaded fit must predict what the fitted model predicted: largest difference"),
        (LoadReturnsNone, "load_fitted must return self: returned NoneType"),
        (
            KeysOnAnUnknownParam,
            r"fit_params must be parameters of the predictor, as stored: not: \['epochs'\]",
        ),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_a_predictor_breaking_a_rule_fails_naming_it_and_the_rule(broken, rule):
    with pytest.raises(ConformanceError, match=rf"^{broken.__name__}: .*{rule}"):
        check_predictor(broken)


def test_an_unvalidated_parameter_passes_unless_strict():
    check_predictor(AcceptsAnything)
    with pytest.raises(
        ConformanceError,
        match=r"^AcceptsAnything: an invalid hyperparameter must be rejected with ValueError: "
        r"the constructor accepted scale='not a number'",
    ):
        check_predictor(AcceptsAnything, strict_params=True)


def test_the_readme_example_conforms():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- example:start -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its example block"
    namespace = {}
    exec(block.group(1), namespace)  # noqa: S102 - the README's own example
    check_predictor(namespace["PooledShift"])


class VagueMessage(Shift):
    def _validate(self):
        if not isinstance(self.scale, int | float):
            raise ValueError("bad value")


def test_a_rejection_that_does_not_name_the_parameter_fails():
    with pytest.raises(
        ConformanceError, match=r"^VagueMessage: .*one-line ValueError naming it: .*'bad value'"
    ):
        check_predictor(VagueMessage)


def test_copied_container_parameter_is_named():
    with pytest.raises(ConformanceError, match=r"^Copy: .*given \{'genes': \['a'\]\}"):
        check_predictor(CopiesParam, {"genes": ["a"]}, name="Copy")


def test_the_held_out_cells_are_in_the_parent_of_the_training_view_and_poisoning_changes_only_them():
    clean, poisoned = _case("P0"), _case("P0", poison=True)
    assert clean.train.is_view and clean.train._adata_ref is clean.full
    held_out = ~clean.full.obs_names.isin(clean.train.obs_names)
    assert held_out.sum() == 40
    assert set(clean.full.obs.loc[held_out, "condition"]) == {"P0"}
    differs = (dense(clean.full.X) != dense(poisoned.full.X)).any(axis=1)
    np.testing.assert_array_equal(differs, held_out)
    np.testing.assert_array_equal(dense(clean.train.X), dense(poisoned.train.X))
    np.testing.assert_array_equal(dense(clean.control.X), dense(poisoned.control.X))


def test_a_constructor_that_cannot_run_fails_the_first_rule():
    with pytest.raises(ConformanceError, match=r"^Shift: the predictor must be constructible: TypeError"):
        check_predictor(Shift, {"no_such_param": 1})


class DeclinesEverything(Shift):
    def predict(self, control, perturbation, context):
        raise NotApplicable("nothing")


def test_a_predictor_that_predicts_nothing_fails_naming_the_targets_tried():
    with pytest.raises(
        ConformanceError, match=r"^DeclinesEverything: .*predict some target.*: P0: nothing; P0\+P1: nothing$"
    ):
        check_predictor(DeclinesEverything)
