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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import benchmark
from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.files import file_to_write
from benchmark.core.pseudobulk import group_profiles
from benchmark.core.task import Positions, dense, take
from benchmark.data.datasets import Dataset
from benchmark.data.splits import MIN_CELLS, Split, make_splits, scored_test_cells, split_kind
from benchmark.scoring.embedding import fit_embedding_cells
from benchmark.scoring.evaluate import OtherDeltas, checked_prediction, score_prediction
from benchmark.scoring.metrics import METRICS
from predictors.registry import make_predictor

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROTOCOL = "blocked-nested"
CHOOSE_DEFAULTS_PROTOCOL = "blocked-nested, pooled over the visible datasets"
"""How benchmark.selection.choose_defaults chose a registered predictor's defaults (logged as config.protocol)."""
DEFAULT_OBJECTIVE = "r"
DEFAULT_TRIALS = 20
DEFAULT_FOLDS = 5
"""holdout_combo: most blocks the combinations are dealt into (each block is one tuning)."""
MAX_VALIDATION_SPLITS = 20
"""Most validation splits (fits) per trial and block; a seeded subset, the same for every trial."""
DEFAULT_STORAGE = "sqlite:///.pertbench/optuna.db"

SearchSpace = dict[str, tuple]
"""name -> ("int", lo, hi, log) | ("float", lo, hi, log) | ("categorical", [choices])."""


@dataclass(frozen=True)
class Block:
    """Outer splits tuned together, and the cells that are training cells in every one of them."""

    name: str
    outer: tuple[Split, ...]
    tuning_cells: tuple[str, ...]

    def test_cells(self) -> set[str]:
        """Every held-out cell of the block's outer splits."""
        return {c for s in self.outer for t in s.targets for c in t.test_cells}


# ---------------------------------------------------------------------------------------------- search space


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


# ---------------------------------------------------------------------------------------------- blocks


def outer_blocks(dataset: Dataset, kind: str, seed: int = 0, folds: int = DEFAULT_FOLDS) -> list[Block]:
    """The outer splits `bench run` scores, grouped into blocks that are tuned once each (see the module doc)."""
    splits = make_splits(dataset.adata, dataset.task, kind, seed=seed)
    keys = split_kind(kind).tuning_blocks(splits, seed, folds)
    ids = np.asarray(dataset.adata.obs_names, dtype=object)
    blocks = []
    for key in dict.fromkeys(keys):
        outer = tuple(s for s, k in zip(splits, keys, strict=True) if k == key)
        held = {c for s in outer for t in s.targets for c in t.test_cells}
        common = set.intersection(*(set(s.train_cells) for s in outer)) - held
        blocks.append(Block(key, outer, tuple(c for c in ids if c in common)))
    return blocks


def validation_splits(
    dataset: Dataset, block: Block, kind: str, seed: int = 0, max_splits: int = MAX_VALIDATION_SPLITS
) -> list[Split]:
    """Splits of `kind` made from the block's tuning cells only (a seeded subset of at most max_splits)."""
    sub = _subset(dataset, block.tuning_cells)
    try:
        splits = make_splits(sub, dataset.task, kind, seed=seed)
    except PertbenchError as exc:
        raise PertbenchError(
            f"block {block.name}: no validation split of kind {kind} can be made from its training cells ({exc})"
        ) from exc
    if len(splits) > max_splits:
        keep = np.sort(np.random.default_rng(seed).choice(len(splits), size=max_splits, replace=False))
        splits = [splits[i] for i in keep]
    return splits


def _subset(dataset: Dataset, cells) -> Any:
    positions = dataset.adata.obs_names.get_indexer(list(cells))
    return take(dataset.adata, positions)  # in memory, also from a backed file


# ---------------------------------------------------------------------------------------------- objective


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


# ---------------------------------------------------------------------------------------------- the search


def study_name(predictor: str, dataset: str, kind: str, seed: int, objective: str, block: str) -> str:
    """One Optuna study per (predictor, dataset, split kind, seed, objective, block)."""
    return f"pertbench/{predictor}/{dataset}/{kind}/seed={seed}/{objective}/{block}"


def storage_uri(storage: str | None = None) -> str:
    """The Optuna storage: the explicit URI, else PERTBENCH_OPTUNA_STORAGE, else .pertbench/optuna.db."""
    uri = storage or os.environ.get("PERTBENCH_OPTUNA_STORAGE") or DEFAULT_STORAGE
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


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


INTERRUPTED_ATTR = "pertbench_interrupted"
"""A trial's user attribute: the trial was stopped (Ctrl-C, SIGTERM, a killed process) and does not count."""
PROCESS_ATTR = "pertbench_process"
"""A running trial's user attribute: host, pid and process start time, so a later run can tell it is dead."""


def counted_trials(optuna: Any, study: Any) -> list[Any]:
    """Trials that count toward the budget: scored (COMPLETE) or scored nothing (PRUNED); never an interrupted
    or failed one, so a resumed study reaches the full budget."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.trials if t.state in states]


def run_trial(optuna: Any, study: Any, space: SearchSpace, objective_of: Callable[[dict], float]) -> None:
    """Ask one trial, score it and tell the study; an interrupt marks it FAIL (not counted) and propagates."""
    from benchmark.tracking.store import process_tags

    trial = study.ask()
    trial.set_user_attr(PROCESS_ATTR, process_tags())
    try:
        value = objective_of(suggest(trial, space))
    except BaseException as exc:  # interrupts and errors alike: the trial must not stay RUNNING
        if not isinstance(exc, Exception):
            trial.set_user_attr(INTERRUPTED_ATTR, type(exc).__name__)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if math.isfinite(value):
        study.tell(trial, value)
    else:  # no validation target could be scored: the trial ran, and counts, but has no value
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def reap_trials(optuna: Any, study: Any) -> list[int]:
    """Mark FAIL (interrupted, not counted) the RUNNING trials whose process on this host is gone (kill -9, a
    crash); returns their numbers. A trial running in a live process, or on another host, is left alone."""
    import socket

    from benchmark.tracking.store import HOST_TAG, PID_TAG, PROC_START_TAG, process_alive

    reaped = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get(PROCESS_ATTR) or {}
        if owner.get(HOST_TAG) != host:
            continue
        if process_alive(int(owner.get(PID_TAG, 0)), owner.get(PROC_START_TAG)):
            continue
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, "process gone")
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        reaped.append(trial.number)
    return reaped


def _open_study(optuna: Any, name: str, uri: str, goal: str, checksum: str) -> Any:
    """Create or resume a study; a stored study made from other data or another direction is an error."""
    try:
        study = optuna.create_study(study_name=name, storage=uri, direction=goal, load_if_exists=True)
    except Exception as exc:  # noqa: BLE001 - storage errors of every kind: one line
        raise PertbenchError(
            f"cannot open the Optuna storage {uri}: {' '.join(str(exc).split())[:200]}"
        ) from exc
    stored = study.user_attrs.get("dataset_checksum")
    if stored is None:
        study.set_user_attr("dataset_checksum", checksum)
    elif stored != checksum:
        raise PertbenchError(f"study {name} in {uri} was made from other data (checksum {stored[:12]}…)")
    if study.direction.name.lower() != goal:
        raise PertbenchError(
            f"study {name} in {uri} has direction {study.direction.name.lower()}, not {goal}"
        )
    return study


def _common(param_sets) -> dict[str, Any]:
    """The parameters every block chose with the same value."""
    sets = list(param_sets)
    if not sets:
        return {}
    return {k: v for k, v in sets[0].items() if all(k in s and _eq(s[k], v) for s in sets[1:])}


def _eq(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------------------------------- config files


def write_config(config: dict[str, Any], path: Path | str) -> Path:
    """Write the config as TOML."""
    path = file_to_write(path, "--output", ".toml file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(config), encoding="utf-8")
    return path


def load_config(path: Path | str, predictor_name: str | None = None) -> dict[str, Any]:
    """Read and check a config written by `bench tune` (predictor name, blocks and their parameters)."""
    path = Path(path)
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PertbenchError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PertbenchError(f"config {path} is not valid TOML: {exc}") from exc
    if not isinstance(config.get("predictor"), str):
        raise PertbenchError(f"config {path} names no predictor")
    if predictor_name is not None and predictor_name != config["predictor"]:
        raise PertbenchError(
            f"config {path} was made for predictor {config['predictor']!r}, not {predictor_name!r}"
        )
    for block in config.get("blocks", []):
        if not isinstance(block.get("params"), dict) or not isinstance(block.get("outer_digests"), list):
            raise PertbenchError(
                f"config {path}: block {block.get('name', '?')} lacks params or outer_digests"
            )
    return config


def split_params(config: dict[str, Any], split: Split) -> dict[str, Any]:
    """The parameters a config assigns to an outer split: its block's, else the top-level `params` when the
    config has no blocks; a split no block covers is an error (its tuning might have seen its test cells)."""
    blocks = config.get("blocks", [])
    if not blocks:
        return dict(config.get("params", {}))
    digest = split.digest()
    for block in blocks:
        if digest in block["outer_digests"]:
            return dict(block["params"])
    tuning = config.get("tuning", {})
    raise PertbenchError(
        f"split {split.name} ({split.kind}, seed {split.seed}) is not covered by the config (tuned on "
        f"{tuning.get('dataset', '?')} {tuning.get('split_kind', '?')} seed {tuning.get('seed', '?')}); "
        "run `bench tune` for this dataset, split kind and seed"
    )


def config_digest(config: dict[str, Any]) -> str:
    """A short hash of a config's content."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dump_toml(config: dict[str, Any]) -> str:
    """TOML text for the config's shape: top-level scalars, tables of scalars, arrays of tables (no tomli_w)."""
    lines: list[str] = []
    tables, arrays = [], []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables:
        lines += ["", f"[{_key(key)}]", *(f"{_key(k)} = {_value(v)}" for k, v in table.items())]
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_key(key)}]]", *(f"{_key(k)} = {_value(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        raise PertbenchError("a config value is None, which TOML cannot hold")
    return json.dumps(str(value))
