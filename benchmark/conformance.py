"""A public conformance check for predictors, in the spirit of scikit-learn's `check_estimator`: each rule of the
protocol (benchmark.core.protocol) is tried on a small synthetic task, and the first broken one is an error that
names the predictor and the rule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.protocol import Predictor
from benchmark.core.task import Task, dense


class ConformanceError(PertbenchError):
    """A predictor broke a rule of the protocol."""


@dataclass(frozen=True)
class _Case:
    """A synthetic task with one held-out target: training cells (a view of `full`, as the runner passes them),
    the target's control cells, and the held-out cells the predictor must never read."""

    full: AnnData
    train: AnnData
    control: AnnData
    held_out: np.ndarray
    task: Task
    perturbation: str
    context: str


TARGETS = ("P0", "P0+P1")
"""Held-out targets tried in order (in context C0): a single perturbation, else a combination of two seen ones."""


def _case(perturbation: str = TARGETS[0], poison: bool = False) -> _Case:
    from benchmark.data.synthetic import make_synthetic

    full = make_synthetic(n_genes=40, n_contexts=3, n_perturbations=2, cells_per_group=40, seed=0, n_combos=1)
    task = Task("condition", "control", "cell_type", expression="counts")
    labels, contexts = task.perturbations(full), task.contexts(full)
    held_out = (labels == perturbation) & (contexts == "C0")
    x = dense(full.X).astype(np.float32)  # the same storage with and without poison
    if poison:  # the held-out cells replaced by counts no honest prediction could follow
        x[held_out] = x[held_out][:, ::-1] * 7 + 50
    full.X = x
    train = full[~held_out]
    control = full[(labels == task.control_label) & (contexts == "C0")]
    return _Case(full, train, control, np.flatnonzero(held_out), task, perturbation, "C0")


def _instance(predictor: type[Predictor] | Predictor, params: dict[str, Any]) -> Predictor:
    if isinstance(predictor, Predictor):
        return type(predictor)(**{**predictor.get_params(), **params})
    return predictor(**params)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - arrays and odd objects: compare by identity only
        return False


def _predict(model: Predictor, case: _Case) -> np.ndarray:
    return dense(model.predict(case.control, case.perturbation, case.context).X)


Check = Callable[[str, Callable[[], Predictor], str], None]


def _fail(name: str, rule: str, detail: str) -> ConformanceError:
    return ConformanceError(f"{name}: {rule}: {detail}")


def check_params_stored_unchanged(name: str, build: Callable[[], Predictor], target: str) -> None:
    """The constructor stores each parameter as given, and get_params/set_params round-trip."""
    model = build()
    params = model.get_params()
    again = type(model)(**params)
    changed = [k for k, v in params.items() if not _same(again.get_params()[k], v)]
    if changed:
        raise _fail(name, "the constructor must store its parameters unchanged", f"changed: {changed}")
    model.set_params(**params)
    if any(not _same(model.get_params()[k], v) for k, v in params.items()):
        raise _fail(name, "set_params must store values unchanged", "get_params differs after set_params")


def check_no_learned_state_before_fit(name: str, build: Callable[[], Predictor], target: str) -> None:
    """No attribute ending in '_' exists before fit (learned state is made by fit alone)."""
    model = build()
    learned = [a for a in vars(model) if a.endswith("_") and not a.startswith("_")]
    if learned:
        raise _fail(name, "no learned state before fit", f"attributes set by the constructor: {learned}")


def check_fit_returns_self(name: str, build: Callable[[], Predictor], target: str) -> None:
    """fit returns the predictor itself and creates learned state."""
    model, case = build(), _case(target)
    fitted = model.fit(case.train, case.task)
    if fitted is not model:
        raise _fail(name, "fit must return self", f"returned {type(fitted).__name__}")


def check_prediction_shape(name: str, build: Callable[[], Predictor], target: str) -> None:
    """predict returns an AnnData with the control's genes in order, at least one cell, finite values."""
    case = _case(target)
    model = build().fit(case.train, case.task)
    predicted = model.predict(case.control, case.perturbation, case.context)
    if not isinstance(predicted, AnnData):
        raise _fail(name, "predict must return an AnnData", f"returned {type(predicted).__name__}")
    if list(predicted.var_names) != list(case.control.var_names):
        raise _fail(name, "predicted genes must be the control's, in order", "var_names differ")
    if predicted.n_obs == 0:
        raise _fail(name, "predict must return cells", "0 cells")
    if not np.isfinite(dense(predicted.X)).all():
        raise _fail(name, "predicted values must be finite", "NaN or infinite values")


def check_not_applicable(name: str, build: Callable[[], Predictor], target: str) -> None:
    """A perturbation never seen in training is declined with NotApplicable, or predicted validly; any other
    exception breaks the protocol (the harness records NotApplicable, and stops on anything else)."""
    case = _case(target)
    model = build().fit(case.train, case.task)
    try:
        predicted = model.predict(case.control, "never_seen_perturbation", case.context)
    except NotApplicable:
        return
    except Exception as exc:  # noqa: BLE001 - the point is which exception
        raise _fail(
            name, "an unpredictable target must raise NotApplicable", f"raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(predicted, AnnData) or not np.isfinite(dense(predicted.X)).all():
        raise _fail(name, "an unseen perturbation must be declined or predicted validly", "invalid output")


def check_seeded(name: str, build: Callable[[], Predictor], target: str) -> None:
    """Two fresh fits with the same parameters (and seed) give the same predictions."""
    runs = [_case(target), _case(target)]  # fresh cells each time: nothing one run did can reach the other
    first, second = (_predict(build().fit(case.train, case.task), case) for case in runs)
    if first.shape != second.shape or not np.array_equal(first, second):
        raise _fail(name, "the same seed must give the same predictions", "two fits differ")


def check_never_reads_held_out_cells(name: str, build: Callable[[], Predictor], target: str) -> None:
    """The training cells are a view of a dataset that also holds the target's cells (as in the runner): two
    datasets that differ only in those held-out cells must give the same predictions."""
    clean, poisoned = _case(target), _case(target, poison=True)
    a = _predict(build().fit(clean.train, clean.task), clean)
    b = _predict(build().fit(poisoned.train, poisoned.task), poisoned)
    if a.shape != b.shape or not np.array_equal(a, b):
        raise _fail(name, "predictions must not depend on held-out cells", "changing them changed the output")


def check_does_not_modify_its_input(name: str, build: Callable[[], Predictor], target: str) -> None:
    """fit and predict leave the training and control cells as they were."""
    case = _case(target)
    before_train, before_control = dense(case.train.X).copy(), dense(case.control.X).copy()
    obs_before = case.train.obs.copy()
    model = build().fit(case.train, case.task)
    model.predict(case.control, case.perturbation, case.context)
    if not np.array_equal(dense(case.train.X), before_train) or not case.train.obs.equals(obs_before):
        raise _fail(name, "fit must not modify the training cells", "train changed")
    if not np.array_equal(dense(case.control.X), before_control):
        raise _fail(name, "predict must not modify the control cells", "control changed")


CHECKS: tuple[Check, ...] = (
    check_params_stored_unchanged,
    check_no_learned_state_before_fit,
    check_fit_returns_self,
    check_prediction_shape,
    check_not_applicable,
    check_seeded,
    check_never_reads_held_out_cells,
    check_does_not_modify_its_input,
)


def check_predictor(
    predictor: type[Predictor] | Predictor, params: dict[str, Any] | None = None, name: str | None = None
) -> None:
    """Run every protocol check on `predictor` (a class or an instance whose parameters are used), built with
    `params` on top (e.g. a small training budget); raises ConformanceError naming the predictor and the rule."""
    params = dict(params or {})
    label = name or (predictor.__name__ if isinstance(predictor, type) else type(predictor).__name__)
    template = copy.deepcopy(predictor) if isinstance(predictor, Predictor) else predictor

    def build() -> Predictor:
        return _instance(template, params)

    try:
        build()
    except Exception as exc:  # noqa: BLE001 - a constructor that cannot run fails the first rule
        raise _fail(label, "the predictor must be constructible", f"{type(exc).__name__}: {exc}") from exc
    target = _predictable_target(label, build)
    for check in CHECKS:
        check(label, build, target)


def _predictable_target(name: str, build: Callable[[], Predictor]) -> str:
    """The first of TARGETS the predictor predicts (a combination-only predictor declines single ones)."""
    reasons = []
    for target in TARGETS:
        case = _case(target)
        try:
            model = build()
            model.fit(case.train, case.task)
            model.predict(case.control, case.perturbation, case.context)
            return target
        except NotApplicable as exc:
            reasons.append(f"{target}: {exc}")
    raise _fail(name, "the predictor must predict some target of the check's task", "; ".join(reasons))
