"""The predictor protocol: scikit-learn estimator conventions for perturbation-response predictors.

A predictor's constructor only stores hyperparameters; `fit(train, task)` learns from the training cells and
returns self, with learned state in attributes ending in `_`; `predict(control, perturbation, context)` returns
an AnnData of predicted perturbed cells, one per given control cell unless documented otherwise, with the
control's genes in the same order and log-normalized values in X.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from benchmark.core.task import Task


class Predictor:
    """Base class: get_params/set_params from the constructor signature, and the fit/predict contract."""

    #: Predictors that can save/load their fitted state set this and implement `save`/`load`, so the harness
    #: can cache a fitted model per dataset, split and seed (e.g. two generation modes share one training).
    cacheable: bool = False

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters, read back from the attributes the constructor set."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Predictor:
        """Set hyperparameters by name; unknown names are an error."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def fit_params(self) -> dict[str, Any]:
        """The hyperparameters that determine the fitted state (the model-cache key). Default: all of them."""
        return self.get_params()

    def fit(self, train: AnnData, task: Task) -> Predictor:  # pragma: no cover - interface
        raise NotImplementedError

    def check_applicable(self, train: AnnData, task: Task, perturbation: str, context: str | None) -> None:
        """Raise NotApplicable if a model fitted on `train` will decline this target; called before fit, so
        the harness skips fits whose every target would be declined. Default: no opinion (decide at predict)."""

    def predict(
        self, control: AnnData, perturbation: str, context: str | None
    ) -> AnnData:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def predicted_anndata(
    values: np.ndarray, control: AnnData, perturbation: str, context: str | None
) -> AnnData:
    """Wrap predicted log-normalized values as an AnnData aligned to the control cells' genes."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != control.n_vars:
        raise ValueError(f"prediction has shape {values.shape}, expected (n, {control.n_vars})")
    obs = pd.DataFrame(
        {"perturbation": perturbation, "context": context if context is not None else "all"},
        index=[f"pred_{i}" for i in range(values.shape[0])],
    )
    return AnnData(X=values, obs=obs, var=pd.DataFrame(index=control.var_names.copy()))
