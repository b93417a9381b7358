"""A public conformance check for predictors, in the spirit of scikit-learn's `check_estimator`: each rule of the
protocol (benchmark.core.protocol) is tried on a small synthetic task, and the first broken one is an error that
names the predictor and the rule."""

from __future__ import annotations

import copy
import inspect
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.protocol import Predictor
from benchmark.core.task import Task, dense


class ConformanceError(PertbenchError):
    """A predictor broke a rule of the protocol."""


TARGETS = ("P0", "P0+P1")
"""Held-out targets tried in order (in context C0): a single perturbation, else a combination of two seen ones."""

CONTEXT = "C0"
N_CONTROLS = 29
"""Control cells per context: unlike the 40 of every perturbed group, so a prediction sized by a training group
does not pass for one cell per control cell."""

UNSEEN_PERTURBATION, UNSEEN_CONTEXT = "never_seen_perturbation", "never_seen_context"


@dataclass(frozen=True)
class _Case:
    """A synthetic task with one held-out target: training cells (a view of `full`, as the runner passes them),
    the target's control cells (a view of `full` too), and the held-out cells the predictor must never read."""

    full: AnnData
    train: AnnData
    control: AnnData
    task: Task
    perturbation: str
    context: str


def _case(perturbation: str, poison: bool = False) -> _Case:
    """A fresh case (nothing a previous fit did can reach it); `poison` replaces the held-out cells' counts by
    values no honest prediction could follow, leaving every training and control cell as it was."""
    from benchmark.data.synthetic import make_synthetic

    full = make_synthetic(
        n_genes=40,
        n_contexts=3,
        n_perturbations=2,
        cells_per_group=40,
        seed=0,
        n_combos=1,
        n_controls=N_CONTROLS,
    )
    full.uns = {}  # the generator's ground truth is not part of a real dataset
    task = Task("condition", "control", "cell_type", expression="counts")
    labels, contexts = task.perturbations(full), task.contexts(full)
    held_out = (labels == perturbation) & (contexts == CONTEXT)
    x = dense(full.X).astype(np.float32)
    if poison:
        x[held_out] = x[held_out][:, ::-1] * 7 + 50
    full.X = sp.csr_matrix(x)  # the same storage with and without poison
    train = full[~held_out]
    control = full[(labels == task.control_label) & (contexts == CONTEXT)]
    return _Case(full, train, control, task, perturbation, CONTEXT)


@dataclass
class _Subject:
    """The predictor under check: how to build a fresh instance, and its first fit on a clean case with the
    prediction made right after it (shared by the rules that need a fitted model)."""

    name: str
    build: Callable[[], Predictor]
    one_cell_per_control: bool
    strict_params: bool
    target: str = ""
    case: _Case | None = None
    model: Predictor | None = None
    fit_result: Any = None
    prediction: Any = None
    before: dict[str, Any] = field(default_factory=dict)

    def fail(self, rule: str, detail: str) -> ConformanceError:
        return ConformanceError(f"{self.name}: {rule}: {detail}")

    def fresh_prediction(self, case: _Case) -> np.ndarray:
        model = self.build()
        model.fit(case.train, case.task)
        return dense(model.predict(case.control, case.perturbation, case.context).X)


def _same(a: Any, b: Any) -> bool:
    """Stored unchanged: the same object, or (immutable scalars, strings) an equal value of the same type."""
    if a is b:
        return True
    if isinstance(a, list | dict | set | np.ndarray) or isinstance(b, list | dict | set | np.ndarray):
        return False  # a container is stored as given, not as a copy
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - odd objects: compare by identity only
        return False


def _signature_defaults(cls: type[Predictor]) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _twin(value: Any) -> Any:
    """An equal value of another accepted type (numpy scalars and ints for floats, as the project's validators
    accept): a constructor that converts it (`float(x)`, `int(x)`) has changed a parameter."""
    if isinstance(value, bool | np.bool_):
        return np.bool_(value)
    if isinstance(value, int | np.integer):
        return np.int64(value)
    if isinstance(value, float) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, tuple) and value:
        return list(value)
    return None


def _invalid(value: Any) -> Any:
    """A value of the wrong type for a boolean or numeric parameter (as `--param x=...` could give), or None."""
    if isinstance(value, bool | np.bool_):
        return "false"
    if isinstance(value, int | float | np.integer | np.floating):
        return "not a number"
    return None


def _difference(a: np.ndarray, b: np.ndarray) -> str:
    """How two predictions differ, for the error message."""
    if a.shape != b.shape:
        return f"shapes {a.shape} and {b.shape}"
    return f"largest difference {float(np.max(np.abs(a.astype(np.float64) - b))):.3g}"


def _params(subject: _Subject, model: Predictor) -> dict[str, Any]:
    try:
        return model.get_params()
    except AttributeError as exc:
        raise subject.fail(
            "the constructor must store every parameter as an attribute of its name", str(exc)
        ) from exc


def check_params_stored_unchanged(subject: _Subject) -> None:
    """The constructor stores each parameter as given (no conversion, no copy), and set_params does too."""
    model = subject.build()
    cls, params = type(model), _params(subject, model)
    probes = [params, {**_signature_defaults(cls), **params}]
    probes += [{**params, k: t} for k, v in params.items() if (t := _twin(v)) is not None]
    for given in probes:
        try:
            again = cls(**given)
        except ValueError:
            continue  # rejecting a twin is the validator's business (checked by the next rule)
        changed = [k for k, v in given.items() if not _same(_params(subject, again)[k], v)]
        if changed:
            stored = _params(subject, again)
            given_changed = {k: given[k] for k in changed}
            stored_changed = {k: stored[k] for k in changed}
            raise subject.fail(
                "the constructor must store its parameters unchanged",
                f"given {given_changed!r}, stored {stored_changed!r}",
            )
    model.set_params(**params)
    changed = [k for k, v in params.items() if not _same(model.get_params()[k], v)]
    if changed:
        raise subject.fail("set_params must store values unchanged", f"changed: {changed}")


def _rejection(subject: _Subject, where: str, name: str, bad: Any, attempt: Callable[[], Any]) -> bool:
    """Whether `attempt` rejected name=bad; a rejection other than a one-line ValueError naming it is an error."""
    try:
        attempt()
    except ValueError as exc:
        message = str(exc)
        if not re.search(rf"\b{re.escape(name)}\b", message) or "\n" in message:
            raise subject.fail(
                "an invalid hyperparameter must be a one-line ValueError naming it",
                f"{where} with {name}={bad!r} raised {message!r}",
            ) from exc
        return True
    except Exception as exc:  # noqa: BLE001 - the point is which exception
        raise subject.fail(
            "an invalid hyperparameter must be rejected with ValueError",
            f"{where} with {name}={bad!r} raised {type(exc).__name__}: {exc}",
        ) from exc
    return False


def check_invalid_params_rejected(subject: _Subject) -> None:
    """A wrongly typed boolean or numeric hyperparameter that is rejected is a one-line ValueError naming it,
    from the constructor and set_params alike (which then leaves the predictor as it was); with
    `strict_params`, every such parameter must be rejected (the built-ins' convention: a bad `--param` never
    reaches a fit)."""
    model = subject.build()
    cls, params = type(model), model.get_params()
    for name, value in params.items():
        bad = _invalid(value)
        if bad is None:
            continue
        # Bound now: each lambda runs before the loop moves on.
        by_init = _rejection(subject, "the constructor", name, bad, lambda: cls(**{**params, name: bad}))  # noqa: B023
        by_set = _rejection(subject, "set_params", name, bad, lambda: model.set_params(**{name: bad}))  # noqa: B023
        if by_init != by_set or (subject.strict_params and not by_init):
            where = "set_params" if by_init else "the constructor"
            rule = "the constructor and set_params must reject the same values" if by_init != by_set else ""
            raise subject.fail(
                rule or "an invalid hyperparameter must be rejected with ValueError",
                f"{where} accepted {name}={bad!r}",
            )
        if by_set and repr(model.get_params()) != repr(params):
            raise subject.fail("a rejected set_params must leave the parameters unchanged", f"{name} changed")
        model.set_params(**{name: value})  # undo an accepted value before the next parameter


def check_no_learned_state_before_fit(subject: _Subject) -> None:
    """No attribute ending in '_' exists before fit (learned state is made by fit alone)."""
    model = subject.build()
    learned = sorted(a for a in vars(model) if a.endswith("_") and not a.startswith("_"))
    if learned:
        raise subject.fail("no learned state before fit", f"attributes set by the constructor: {learned}")


def check_fit_returns_self(subject: _Subject) -> None:
    """fit returns the predictor itself."""
    if subject.fit_result is not subject.model:
        raise subject.fail("fit must return self", f"returned {type(subject.fit_result).__name__}")


def check_prediction(subject: _Subject) -> None:
    """predict returns an AnnData with the control's genes in order, one cell per control cell (or, where the
    predictor documents otherwise, at least one), and finite values."""
    predicted, control = subject.prediction, subject.case.control
    if not isinstance(predicted, AnnData):
        raise subject.fail("predict must return an AnnData", f"returned {type(predicted).__name__}")
    if list(predicted.var_names) != list(control.var_names):
        raise subject.fail("predicted genes must be the control's, in order", "var_names differ")
    if subject.one_cell_per_control and predicted.n_obs != control.n_obs:
        raise subject.fail(
            "predict must return one cell per control cell",
            f"{predicted.n_obs} cells for {control.n_obs} control cells",
        )
    if predicted.n_obs == 0:
        raise subject.fail("predict must return cells", "0 cells")
    if not np.isfinite(dense(predicted.X)).all():
        raise subject.fail("predicted values must be finite", "NaN or infinite values")


def check_not_applicable(subject: _Subject) -> None:
    """A target it cannot predict (a perturbation or context never seen in training) is declined with
    NotApplicable, or predicted validly; check_applicable raises nothing else and does not decline a target the
    fitted model predicts (the harness records NotApplicable, skips declined fits, and stops on anything else)."""
    case, model = subject.case, subject.model
    for perturbation, context in ((UNSEEN_PERTURBATION, case.context), (case.perturbation, UNSEEN_CONTEXT)):
        try:
            predicted = model.predict(case.control, perturbation, context)
        except NotApplicable:
            continue
        except Exception as exc:  # noqa: BLE001 - the point is which exception
            raise subject.fail(
                "an unpredictable target must raise NotApplicable",
                f"predict({perturbation!r}, {context!r}) raised {type(exc).__name__}: {exc}",
            ) from exc
        if not isinstance(predicted, AnnData) or not np.isfinite(dense(predicted.X)).all():
            raise subject.fail(
                "an unseen target must be declined or predicted validly", f"{perturbation!r} in {context!r}"
            )
    fresh = subject.build()
    try:
        fresh.check_applicable(case.train, case.task, case.perturbation, case.context)
    except NotApplicable as exc:
        raise subject.fail(
            "check_applicable must not decline a target the fitted model predicts",
            f"{case.perturbation!r}: {exc}",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the point is which exception
        raise subject.fail(
            "check_applicable may only raise NotApplicable", f"raised {type(exc).__name__}: {exc}"
        ) from exc


def check_context_free_task(subject: _Subject) -> None:
    """A task without a context key (every cell in context 'all', as a dataset card may say) is predicted
    validly or declined with NotApplicable, at fit or at predict."""
    case = _case(TARGETS[-1])
    task = Task(case.task.perturbation_key, case.task.control_label, None, expression=case.task.expression)
    labels = task.perturbations(case.full)
    train = case.full[labels != case.perturbation]
    control = case.full[labels == task.control_label]
    try:
        predicted = subject.build().fit(train, task).predict(control, case.perturbation, "all")
    except NotApplicable:
        return
    except Exception as exc:  # noqa: BLE001 - the point is which exception
        raise subject.fail(
            "a task without contexts must be predicted or declined with NotApplicable",
            f"raised {type(exc).__name__}: {exc}",
        ) from exc
    if not isinstance(predicted, AnnData) or list(predicted.var_names) != list(control.var_names):
        raise subject.fail("a task without contexts must be predicted validly", "not an AnnData of the genes")
    if not np.isfinite(dense(predicted.X)).all():
        raise subject.fail("a task without contexts must be predicted validly", "NaN or infinite values")


def check_seeded(subject: _Subject) -> None:
    """A second fresh fit with the same parameters (and seed) gives the same predictions as the first."""
    first, second = dense(subject.prediction.X), subject.fresh_prediction(_case(subject.target))
    if first.shape != second.shape or not np.array_equal(first, second):
        raise subject.fail(
            "the same seed must give the same predictions",
            f"two fresh fits differ: {_difference(first, second)}",
        )


def check_cache_round_trip(subject: _Subject) -> None:
    """A cacheable predictor (the harness may load a fit instead of fitting): `fit_params` are some of its
    parameters, and a fresh instance loading what `save` wrote predicts what the fitted model predicted."""
    model = subject.model
    if not getattr(model, "cacheable", False):
        return
    params, keyed = model.get_params(), model.fit_params()
    stray = [k for k, v in keyed.items() if k not in params or not _same(params[k], v)]
    if stray:
        raise subject.fail("fit_params must be parameters of the predictor, as stored", f"not: {stray}")
    if not (callable(getattr(model, "save", None)) and callable(getattr(model, "load_fitted", None))):
        raise subject.fail("a cacheable predictor must implement save and load_fitted", "missing")
    with tempfile.TemporaryDirectory(prefix="pertbench-conformance-") as directory:
        model.save(Path(directory))
        fresh = subject.build()
        loaded = fresh.load_fitted(Path(directory))
        if loaded is not fresh:
            raise subject.fail("load_fitted must return self", f"returned {type(loaded).__name__}")
        case = subject.case
        again = dense(fresh.predict(case.control, case.perturbation, case.context).X)
    first = dense(subject.prediction.X)
    if first.shape != again.shape or not np.array_equal(first, again):
        raise subject.fail(
            "a loaded fit must predict what the fitted model predicted", _difference(first, again)
        )


def check_order_independent(subject: _Subject) -> None:
    """A prediction does not depend on what the model predicted before it (targets are scored in threads, in
    any order): the target predicted again, after other targets, is the same."""
    case, model = subject.case, subject.model
    for other in ("P1", *TARGETS):
        try:
            model.predict(case.control, other, case.context)
        except NotApplicable:
            pass
    again = dense(model.predict(case.control, case.perturbation, case.context).X)
    first = dense(subject.prediction.X)
    if first.shape != again.shape or not np.array_equal(first, again):
        raise subject.fail(
            "a prediction must not depend on the predictions made before it",
            f"the target predicted again after other targets differs: {_difference(first, again)}",
        )


def check_never_reads_held_out_cells(subject: _Subject) -> None:
    """The training and control cells are views of a dataset that also holds the target's cells (as in the
    runner): two datasets that differ only in those held-out cells must give the same predictions."""
    clean, poisoned = (
        dense(subject.prediction.X),
        subject.fresh_prediction(_case(subject.target, poison=True)),
    )
    if clean.shape != poisoned.shape or not np.array_equal(clean, poisoned):
        raise subject.fail(
            "predictions must not depend on held-out cells", "changing them changed the output"
        )


def check_does_not_modify_its_input(subject: _Subject) -> None:
    """fit and predict leave the training and control cells as they were."""
    case, before = subject.case, subject.before
    if not np.array_equal(dense(case.train.X), before["train"]) or not case.train.obs.equals(before["obs"]):
        raise subject.fail("fit must not modify the training cells", "train changed")
    if not np.array_equal(dense(case.control.X), before["control"]):
        raise subject.fail("predict must not modify the control cells", "control changed")


BEFORE_FIT: tuple[Callable[[_Subject], None], ...] = (
    check_params_stored_unchanged,
    check_invalid_params_rejected,
    check_no_learned_state_before_fit,
)
AFTER_FIT: tuple[Callable[[_Subject], None], ...] = (
    check_fit_returns_self,
    check_does_not_modify_its_input,
    check_prediction,
    check_seeded,
    check_never_reads_held_out_cells,
    check_cache_round_trip,
    check_order_independent,
    check_not_applicable,
    check_context_free_task,
)


def check_predictor(
    predictor: type[Predictor] | Predictor | str,
    params: dict[str, Any] | None = None,
    name: str | None = None,
    one_cell_per_control: bool = True,
    strict_params: bool = False,
) -> None:
    """Run every protocol check on `predictor` (a class, an instance whose parameters are used, or a name as
    `bench run --predictor` takes it: registered, or module:Class), built with `params` on top (e.g. a small
    training budget); raises ConformanceError naming the predictor and the rule.
    `one_cell_per_control=False` for a predictor documented to return another number of cells;
    `strict_params=True` requires every boolean or numeric hyperparameter to be validated on construction."""
    params = dict(params or {})
    if isinstance(predictor, str):
        from predictors.registry import make_predictor

        name = name or predictor
        predictor = make_predictor(predictor)[1]
    label = name or (predictor.__name__ if isinstance(predictor, type) else type(predictor).__name__)
    template = copy.deepcopy(predictor) if isinstance(predictor, Predictor) else predictor

    def build() -> Predictor:
        if isinstance(template, Predictor):
            return type(template)(**{**template.get_params(), **params})
        return template(**params)

    subject = _Subject(label, build, one_cell_per_control, strict_params)
    try:
        build()
    except Exception as exc:  # noqa: BLE001 - a constructor that cannot run fails the first rule
        raise subject.fail("the predictor must be constructible", f"{type(exc).__name__}: {exc}") from exc
    for check in BEFORE_FIT:
        check(subject)
    _first_fit(subject)
    for check in AFTER_FIT:
        check(subject)


def _first_fit(subject: _Subject) -> None:
    """Fit on the first of TARGETS the predictor predicts (a combination-only predictor declines single ones),
    keeping the fitted model, fit's return value, the prediction and a copy of the input as it was."""
    reasons = []
    for target in TARGETS:
        case = _case(target)
        before = {"train": dense(case.train.X).copy(), "obs": case.train.obs.copy()}
        before["control"] = dense(case.control.X).copy()
        model = subject.build()
        try:
            fit_result = model.fit(case.train, case.task)  # a fit may decline too (the runner records it)
            prediction = model.predict(case.control, case.perturbation, case.context)
        except NotApplicable as exc:
            reasons.append(f"{target}: {exc}")
            continue
        subject.target, subject.case, subject.model, subject.before = target, case, model, before
        subject.fit_result, subject.prediction = fit_result, prediction
        return
    raise subject.fail("the predictor must predict some target of the check's task", "; ".join(reasons))
