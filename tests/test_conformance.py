"""`benchmark.check_predictor`: every built-in predictor passes, and a predictor that breaks a rule fails with a
message naming it and the rule."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import NotApplicable, Predictor, check_predictor
from benchmark.conformance import ConformanceError
from benchmark.core.protocol import predicted_anndata
from benchmark.core.task import dense, mean_profile
from predictors.registry import BUILTINS, check_installed, make_predictor

SMALL_BUDGET = {"max_steps": 20, "max_epochs": 2, "n_hidden": 16, "n_latent": 4, "batch_size": 64}
"""Training budget for the neural predictors: the checks are about the protocol, not the fit's quality."""


def _builtin(name: str):
    try:
        check_installed(name)
    except Exception as exc:  # noqa: BLE001 - an optional extra that is not installed
        pytest.skip(f"{name}: {exc}")
    _, model = make_predictor(name)
    params = {k: v for k, v in SMALL_BUDGET.items() if k in model.get_params()}
    return model, params


@pytest.mark.parametrize(
    "name", [n for n in BUILTINS if not n.startswith(("cvae", "scgen"))] + ["cvae_modeB", "cvae_mlp_modeA"]
)
def test_every_builtin_predictor_conforms(name):
    model, params = _builtin(name)
    check_predictor(model, params, name=name)


class Shift(Predictor):
    """A conforming toy: control cells + the perturbation's pooled mean shift."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def fit(self, train, task):
        x, labels = task.lognorm(train), task.perturbations(train)
        base = mean_profile(x[labels == task.control_label])
        self.shift_ = {p: mean_profile(x[labels == p]) - base for p in set(labels) if p != task.control_label}
        self.task_ = task
        return self

    def predict(self, control, perturbation, context):
        if perturbation not in self.shift_:
            raise NotApplicable(perturbation)
        return predicted_anndata(
            dense(self.task_.lognorm(control)) + self.shift_[perturbation], control, perturbation, context
        )


class MutatesParam(Shift):
    def __init__(self, scale: float = 1.0):
        self.scale = float(scale) * 2


class StateBeforeFit(Shift):
    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.shift_ = {}


class FitReturnsNone(Shift):
    def fit(self, train, task):
        super().fit(train, task)


class WrongGenes(Shift):
    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        return out[:, ::-1].copy()


class KeyErrorOnUnseen(Shift):
    def predict(self, control, perturbation, context):
        self.shift_[perturbation]  # noqa: B018 - raises KeyError for an unseen one
        return super().predict(control, perturbation, context)


class Unseeded(Shift):
    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        out.X = out.X + np.random.default_rng().normal(0, 0.01, out.X.shape).astype(np.float32)
        return out


class ReadsHeldOut(Shift):
    """Fits on the whole dataset the training view was cut from: the held-out cells included."""

    def fit(self, train, task):
        parent = train._adata_ref if train.is_view else train
        return super().fit(parent, task)


class EditsInput(Shift):
    def fit(self, train, task):
        super().fit(train, task)
        train.obs["condition"] = train.obs["condition"]  # harmless, but the X edit below is not
        return self

    def predict(self, control, perturbation, context):
        out = super().predict(control, perturbation, context)
        control.X[:] = 0
        return out


def test_a_conforming_toy_passes():
    check_predictor(Shift)


@pytest.mark.parametrize(
    ("broken", "rule"),
    [
        (MutatesParam, "store its parameters unchanged"),
        (StateBeforeFit, "no learned state before fit"),
        (FitReturnsNone, "fit must return self"),
        (WrongGenes, "genes must be the control's"),
        (KeyErrorOnUnseen, "must raise NotApplicable"),
        (Unseeded, "same seed must give the same predictions"),
        (ReadsHeldOut, "must not depend on held-out cells"),
        (EditsInput, "must not modify"),
    ],
)
def test_a_predictor_breaking_a_rule_fails_naming_it_and_the_rule(broken, rule):
    with pytest.raises(ConformanceError, match=rf"^{broken.__name__}: .*{rule}"):
        check_predictor(broken)
