"""What a tuning trial optimizes: the predictor's search space, one point of it, and the validation score of a
point, scored on the tuning cells as `bench run` scores a target."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.pseudobulk import group_profiles
from benchmark.core.task import Positions, dense, take
from benchmark.data.datasets import Dataset
from benchmark.data.splits import MIN_CELLS, Split, scored_test_cells
from benchmark.scoring.embedding import fit_embedding_cells
from benchmark.scoring.evaluate import OtherDeltas, checked_prediction, score_prediction
from benchmark.scoring.metrics import METRICS
from benchmark.selection.blocks import _subset
from predictors.registry import make_predictor

DEFAULT_OBJECTIVE = "r"

SearchSpace = dict[str, tuple]
"""name -> ("int", lo, hi, log) | ("float", lo, hi, log) | ("categorical", [choices])."""


def search_space(predictor_name: str) -> SearchSpace:
    """The predictor's declared search space, checked; a predictor without one is a one-line error."""
    _, predictor = make_predictor(predictor_name)
    space = getattr(type(predictor), "search_space", None)
    if callable(space):
        space = space()
    if space is None:
        raise PertbenchError(f"predictor {predictor_name!r} is not tunable: it declares no search_space")
    params = set(predictor.get_params())
    for name, spec in space.items():
        if name not in params:
            raise PertbenchError(
                f"search_space of {predictor_name!r} names {name!r}, not one of its parameters"
            )
        kind = spec[0] if spec else None
        ok = (kind in ("int", "float") and len(spec) == 4 and spec[1] <= spec[2]) or (
            kind == "categorical" and len(spec) == 2 and len(spec[1]) > 0
        )
        if not ok:
            raise PertbenchError(f"search_space of {predictor_name!r}: bad entry {name}={spec!r}")
    return dict(space)


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """One point of the space from an Optuna trial."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec[0] == "int":
            params[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]), log=bool(spec[3]))
        elif spec[0] == "float":
            params[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]), log=bool(spec[3]))
        else:
            params[name] = trial.suggest_categorical(name, list(spec[1]))
    return params


def direction(metric: str) -> str:
    """'maximize' or 'minimize' for a registered metric (best at 0: |value| is minimized)."""
    if metric not in METRICS:
        raise PertbenchError(f"unknown objective metric {metric!r}; known: {', '.join(METRICS)}")
    return "maximize" if METRICS[metric].higher_is_better else "minimize"


def validation_score(
    predictor_name: str,
    params: dict[str, Any],
    dataset: Dataset,
    tuning_cells: tuple[str, ...],
    splits: list[Split],
    metric: str = DEFAULT_OBJECTIVE,
    seed: int = 0,
) -> float:
    """Mean of `metric` over the validation targets (NaN when none could be scored), scored as `bench run` scores
    (embedding fitted on the split's training cells, `others` from the tuning cells); fits only on tuning cells."""
    return validation_scores(predictor_name, params, dataset, tuning_cells, splits, [metric], seed)[metric]


def validation_scores(
    predictor_name: str,
    params: dict[str, Any],
    dataset: Dataset,
    tuning_cells: tuple[str, ...],
    splits: list[Split],
    metrics: list[str],
    seed: int = 0,
) -> dict[str, float]:
    """validation_score for several metrics from one fit per validation split (each metric's mean over the
    targets it could score; |value| for metrics best at 0).

    A validation target is scored as `bench run` scores a target of a dataset made of the tuning cells alone:
    the same cells (training cells in order, the scored sample of the held-out cells), the same prediction checks
    and clip (`checked_prediction`), the same embedding (`fit_embedding_cells` of the training cells) and
    comparison groups (`OtherDeltas`), through the engine's `score_prediction`."""
    task = dataset.task
    sub = _subset(dataset, tuning_cells)
    positions = Positions(sub.obs_names)
    profiles = group_profiles(sub, task)  # the real Δ of the other groups (discrimination), tuning cells only
    needs_embed = any(_needs_embed(m) for m in metrics)
    values: dict[str, list[float]] = {m: [] for m in metrics}
    for split in splits:
        train = sub[positions.of(split.train_cells)]  # a view, as bench run passes it
        name, predictor = make_predictor(predictor_name, **params)
        if "random_state" in predictor.get_params():
            predictor.set_params(random_state=seed)
        try:
            predictor.fit(train, task)
        except NotApplicable:
            continue
        embed = fit_embedding_cells(train, task) if needs_embed else None
        others = OtherDeltas(*profiles, task.control_label, split.kind)
        for target in split.targets:
            control = take(sub, positions.of(target.control_cells))
            real = dense(task.lognorm(take(sub, positions.of(scored_test_cells(target.test_cells)))))
            try:
                predicted = predictor.predict(control, target.perturbation, target.context)
            except NotApplicable:
                continue
            scores, _ = score_prediction(
                dense(task.lognorm(control)),
                real,
                checked_prediction(name, predicted, control),
                embed,
                others(target.perturbation, target.context, MIN_CELLS),
                list(metrics),
            )
            for metric, value in scores.items():
                if math.isfinite(value):
                    values[metric].append(abs(value) if METRICS[metric].higher_is_better is None else value)
    return {m: float(np.mean(v)) if v else math.nan for m, v in values.items()}


def _needs_embed(metric: str) -> bool:
    return METRICS[metric].kind == "distribution"
