"""Hyperparameter selection that never sees a test target: blocked nested validation, searched with Optuna.

Protocol (`PROTOCOL`, "blocked-nested"). The outer splits of a (dataset, split kind) are the ones `bench run`
scores. No single configuration can be chosen for all of them honestly on a holdout kind: every perturbed group
is the test target of some outer split (holdout_context holds out each (context, perturbation) once,
holdout_combo each combination), so the cells that are training cells in *every* outer split are little more
than the controls. Full nesting (tune once per outer split on that split's training cells) is honest but costs
trials x outer splits. So the outer splits are grouped into blocks and each block is tuned once, on the cells that
are training cells in every outer split of the block (all cells minus the union of the block's test cells):

- holdout_context: one block per held-out context t (all outer splits (t, p)); its tuning cells lack every
  held-out (t, p) group. Validation: leave-one-training-context-out, i.e. `make_splits` of kind holdout_context
  on the tuning cells: each (t', p) with p seen in another tuning context and >= MIN_CELLS cells (and controls)
  is held out, the predictor fitted on the rest and (t', p) predicted from t''s control cells.
- holdout_combo: the combinations are dealt (seeded) into at most `folds` blocks; a block's tuning cells lack
  all of its combinations. Validation: leave-one-training-combination-out over the remaining combinations.
- random: one outer split per seed, one block; its tuning cells are that split's training cells. Validation: a
  seeded random fraction of every perturbed group of the tuning cells.

A block's tuning cells are a subset of the training cells of each of its outer splits, so no outer test cell
reaches any fit, prediction or score of the search (tests/test_tuning.py checks it cell by cell). Each block's
outer splits are then run with the block's best parameters: the config file maps split digests to parameters, and
`bench run --config` refuses a split the file does not cover (e.g. a random split of another seed).

The same protocol and budget hold for every tunable predictor: `trials` Optuna trials per block (TPE, seeded),
each trial fitting the predictor once per validation split (at most `max_validation_splits`, a seeded subset that
stays fixed across trials) and scoring the validation targets with the engine's metric registry. The objective is
the mean over validation targets of one metric (default `r`), maximized or minimized as METRICS declares (best at
0: |value| is minimized). A predictor is tunable when it declares `search_space` (see `SearchSpace`); an empty
space is evaluated once. Each block's study lives in an Optuna RDB storage (default `.pertbench/optuna.db` beside
the model cache and mlflow.db) under a name made of predictor, dataset, split kind, seed, objective and block;
rerunning `bench tune` resumes it: `trials` is the total a study should reach, scored trials count (an interrupted one
is stored FAIL and does not; a trial left RUNNING by a killed process is reaped on the next run), and the
sampler of a resumed study is seeded with seed + its stored trial count (so it does not replay its first points).

Layout: `blocks` makes the blocks and their validation splits, `objective` the search space and the validation
score, `study` the Optuna studies and their trials, `config` the config files; `tune` here runs the search.
This module re-exports their names, which are importable from here as before the split.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import benchmark
from benchmark.core.errors import PertbenchError
from benchmark.data.datasets import Dataset
from benchmark.data.splits import split_kind
from benchmark.selection.blocks import (
    DEFAULT_FOLDS,
    MAX_VALIDATION_SPLITS,
    Block,
    _subset,
    outer_blocks,
    validation_splits,
)
from benchmark.selection.config import (
    _common,
    _eq,
    _key,
    _value,
    config_digest,
    dump_toml,
    load_config,
    split_params,
    write_config,
)
from benchmark.selection.objective import (
    DEFAULT_OBJECTIVE,
    SearchSpace,
    _needs_embed,
    direction,
    search_space,
    suggest,
    validation_score,
    validation_scores,
)
from benchmark.selection.study import (
    DEFAULT_STORAGE,
    INTERRUPTED_ATTR,
    PROCESS_ATTR,
    _open_study,
    counted_trials,
    reap_trials,
    run_trial,
    storage_uri,
    study_name,
)

__all__ = [
    "CHOOSE_DEFAULTS_PROTOCOL",
    "DEFAULT_FOLDS",
    "DEFAULT_OBJECTIVE",
    "DEFAULT_STORAGE",
    "DEFAULT_TRIALS",
    "INTERRUPTED_ATTR",
    "MAX_VALIDATION_SPLITS",
    "PROCESS_ATTR",
    "PROTOCOL",
    "Block",
    "Progress",
    "SearchSpace",
    "config_digest",
    "counted_trials",
    "direction",
    "dump_toml",
    "load_config",
    "outer_blocks",
    "reap_trials",
    "run_trial",
    "search_space",
    "split_params",
    "storage_uri",
    "study_name",
    "suggest",
    "tune",
    "validation_score",
    "validation_scores",
    "validation_splits",
    "write_config",
]
_PRIVATE = (_eq, _key, _needs_embed, _subset, _value)
"""Private helpers of the one-module layout, still importable from it."""

PROTOCOL = "blocked-nested"

CHOOSE_DEFAULTS_PROTOCOL = "blocked-nested, pooled over the visible datasets"
"""How benchmark.selection.choose_defaults chose a registered predictor's defaults (logged as config.protocol)."""

DEFAULT_TRIALS = 20

Progress = Callable[[str], None]


def tune(
    predictor_name: str,
    dataset: Dataset,
    kind: str,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    objective: str = DEFAULT_OBJECTIVE,
    storage: str | None = None,
    folds: int = DEFAULT_FOLDS,
    max_validation: int = MAX_VALIDATION_SPLITS,
    progress: Progress = lambda _: None,
) -> dict[str, Any]:
    """Search each block's best parameters; returns the config (see write_config) for `bench run --config`."""
    import optuna

    if trials < 1:
        raise PertbenchError(f"--trials must be at least 1, got {trials}")
    split_kind(kind)  # an unknown kind: one line
    space = search_space(predictor_name)
    goal = direction(objective)
    uri = storage_uri(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    blocks = outer_blocks(dataset, kind, seed, folds)
    budget = trials if space else 1
    out_blocks = []
    for i, block in enumerate(blocks, 1):
        splits = validation_splits(dataset, block, kind, seed, max_validation)
        name = study_name(predictor_name, dataset.name, kind, seed, objective, block.name)
        study = _open_study(optuna, name, uri, goal, dataset.checksum)
        reap_trials(optuna, study)
        done = counted_trials(optuna, study)
        todo = max(0, budget - len(done))
        progress(
            f"[{i}/{len(blocks)}] block {block.name}: {len(block.outer)} outer split(s), "
            f"{len(splits)} validation split(s), {len(done)} trial(s) stored, running {todo}"
        )
        if todo:
            study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))

            def objective_of(params: dict[str, Any], block=block, splits=splits) -> float:
                return validation_score(
                    predictor_name, params, dataset, block.tuning_cells, splits, objective, seed
                )

            for _ in range(todo):
                run_trial(optuna, study, space, objective_of)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise PertbenchError(
                f"block {block.name}: no trial scored any validation target on {objective}; "
                "try another objective or split kind"
            )
        best = study.best_trial
        progress(f"    best {objective} = {best.value:.4f} with {best.params or 'the defaults'}")
        out_blocks.append(
            {
                "name": block.name,
                "study": name,
                "best_value": float(best.value),
                "n_trials": len(counted_trials(optuna, study)),
                "n_validation_splits": len(splits),
                "n_tuning_cells": len(block.tuning_cells),
                "outer_splits": [s.name for s in block.outer],
                "outer_digests": [s.digest() for s in block.outer],
                "params": dict(best.params),
            }
        )
    common = _common(b["params"] for b in out_blocks)
    return {
        "predictor": predictor_name,
        "params": common,
        "tuning": {
            "protocol": PROTOCOL,
            "objective": objective,
            "direction": goal,
            "trials": budget,
            "seed": seed,
            "dataset": dataset.name,
            "dataset_checksum": dataset.checksum,
            "split_kind": kind,
            "folds": folds,
            "max_validation_splits": max_validation,
            "storage": uri,
            "pertbench_version": benchmark.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "blocks": out_blocks,
    }
