"""The Optuna side of tuning: a study per block in RDB storage, resumed across runs, whose trials count only when
they were scored, and whose trials left running by a dead process are reaped."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.core.errors import PertbenchError
from benchmark.selection.objective import SearchSpace, suggest

DEFAULT_STORAGE = "sqlite:///.pertbench/optuna.db"

INTERRUPTED_ATTR = "pertbench_interrupted"
"""A trial's user attribute: the trial was stopped (Ctrl-C, SIGTERM, a killed process) and does not count."""

PROCESS_ATTR = "pertbench_process"
"""A running trial's user attribute: host, pid and process start time, so a later run can tell it is dead."""


def study_name(predictor: str, dataset: str, kind: str, seed: int, objective: str, block: str) -> str:
    """One Optuna study per (predictor, dataset, split kind, seed, objective, block)."""
    return f"pertbench/{predictor}/{dataset}/{kind}/seed={seed}/{objective}/{block}"


def storage_uri(storage: str | None = None) -> str:
    """The Optuna storage: the explicit URI, else PERTBENCH_OPTUNA_STORAGE, else .pertbench/optuna.db."""
    uri = storage or os.environ.get("PERTBENCH_OPTUNA_STORAGE") or DEFAULT_STORAGE
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


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
