"""Predictors used by the harness tests: they record what reaches fit, fail on purpose, or cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmark.core.errors import NotApplicable
from benchmark.core.protocol import Predictor, predicted_anndata
from benchmark.core.task import dense


class SpyPredictor(Predictor):
    """Predicts the control cells and records the obs names of every training set it is fitted on."""

    fitted_cells: list[set[str]] = []

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, train, task):
        type(self).fitted_cells.append(set(train.obs_names))
        self.task_ = task
        return self

    def predict(self, control, perturbation, context):
        return predicted_anndata(dense(self.task_.lognorm(control)) + 0.1, control, perturbation, context)


class FailingPredictor(SpyPredictor):
    """Breaks on its second fit, to check that a half-finished run is marked failed."""

    fits = 0

    def fit(self, train, task):
        type(self).fits += 1
        if type(self).fits >= 2:
            raise RuntimeError("boom on purpose")
        return super().fit(train, task)


class FailsOnSecondTarget(SpyPredictor):
    """Predicts its first target, then breaks: what was predicted before a failure must still be logged."""

    calls = 0

    def predict(self, control, perturbation, context):
        type(self).calls += 1
        if type(self).calls >= 2:
            raise RuntimeError("boom on the second target")
        return super().predict(control, perturbation, context)


class PickyPredictor(SpyPredictor):
    """Declares every perturbation whose name ends in '1' not applicable."""

    def predict(self, control, perturbation, context):
        if perturbation.endswith("1"):
            raise NotApplicable(f"{perturbation} is not for me")
        return super().predict(control, perturbation, context)


class ForesightedPredictor(SpyPredictor):
    """Declines, before fitting, every target whose perturbation contains 'P1' (check_applicable)."""

    def check_applicable(self, train, task, perturbation, context):
        if "P1" in perturbation:
            raise NotApplicable(f"{perturbation} declined before fit")


class CachedPredictor(SpyPredictor):
    """A cacheable predictor: its fitted state is the training mean; `offset` only affects generation."""

    cacheable = True
    fit_count = 0

    def __init__(self, random_state: int = 0, offset: float = 0.0):
        self.random_state = random_state
        self.offset = offset

    def fit_params(self):
        return {"random_state": self.random_state}

    def fit(self, train, task):
        type(self).fit_count += 1
        self.task_ = task
        self.mean_ = dense(task.lognorm(train)).mean(axis=0)
        return self

    def save(self, directory: Path) -> None:
        (Path(directory) / "state.json").write_text(json.dumps({"mean": self.mean_.tolist()}))

    def load_fitted(self, directory: Path):
        self.mean_ = np.asarray(json.loads((Path(directory) / "state.json").read_text())["mean"])
        return self

    def predict(self, control, perturbation, context):
        values = np.tile(self.mean_ + self.offset, (control.n_obs, 1))
        return predicted_anndata(values, control, perturbation, context)


class TunableSpy(Predictor):
    """A tunable predictor for the tuning tests: control + `scale` x the training mean shift of the label (for a
    new combination, the sum of its genes' shifts), plus seeded noise of size `noise`; records the cells of every fit and every prediction's control cells."""

    search_space = {"scale": ("float", 0.5, 2.0, False), "noise": ("categorical", [0.0, 0.05])}
    fitted_cells: list[set[str]] = []
    control_cells: list[set[str]] = []

    def __init__(self, scale: float = 1.0, noise: float = 0.0, random_state: int = 0):
        self.scale = scale
        self.noise = noise
        self.random_state = random_state

    def fit(self, train, task):
        type(self).fitted_cells.append(set(train.obs_names))
        x, perts = dense(task.lognorm(train)), task.perturbations(train)
        control = x[perts == task.control_label].mean(axis=0)
        self.shifts_ = {p: x[perts == p].mean(axis=0) - control for p in set(perts) - {task.control_label}}
        self.task_ = task
        return self

    def predict(self, control, perturbation, context):
        type(self).control_cells.append(set(control.obs_names))
        genes = [perturbation] if perturbation in self.shifts_ else self.task_.genes_of(perturbation)
        if not genes or any(g not in self.shifts_ for g in genes):
            raise NotApplicable(f"{perturbation} not seen in training, nor all its genes")
        x = dense(self.task_.lognorm(control)) + self.scale * sum(self.shifts_[g] for g in genes)
        x = x + self.noise * np.random.default_rng(self.random_state).normal(size=x.shape)
        return predicted_anndata(x, control, perturbation, context)
