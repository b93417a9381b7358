"""One split-level task of `bench sweep`, wherever it runs (the sweep's own process or a Ray worker).

A task may run more than once (Ray retries a task whose worker died; a restarted sweep meets tasks again), so it
is idempotent: it first reads its own child runs from the store (the parent's children with its split and seed).
If every target of the split already has a FINISHED child, it does nothing and reports their results; otherwise it
deletes whatever an earlier attempt left (finished or not) and runs the split afresh. The store thus ends with
exactly one FINISHED child run per (predictor, split, seed, target).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmark.execution.options import RunOptions
from benchmark.execution.sweep import DatasetSpec
from benchmark.scoring.evaluate import TargetResult

if TYPE_CHECKING:
    from benchmark.tracking.runs import RunRecord

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
"""A task's outcome: it ran; its runs were already in the store (resumed); it raised or its worker died."""


@dataclass(frozen=True)
class SplitTask:
    """Everything a worker needs to run one split of one group and log it under the group's parent run."""

    group: str  # the group's key (benchmark.execution.sweep.group_key)
    parent_run_id: str
    predictor: str
    dataset: DatasetSpec
    split_kind: str
    seed: int
    index: int  # position among the seed's splits
    split_name: str
    options: RunOptions  # the group's (its params, figures, cache folder, ...)
    tracking_uri: str
    threads: int | None = None
    """Torch and BLAS threads inside the task (a Ray task's CPUs); None leaves the process's settings."""

    @property
    def key(self) -> str:
        return f"{self.group}/{self.seed}/{self.index}"

    def label(self) -> str:
        return f"{self.predictor} on {self.dataset.name} seed {self.seed} split {self.split_name}"


@dataclass
class TaskOutcome:
    """What became of a task: its status, its targets' results, how long it took and where it ran."""

    key: str
    status: str
    results: list[TargetResult] = field(default_factory=list)
    seconds: float = 0.0
    host: str = ""
    pid: int = 0
    error: str = ""


# ------------------------------------------------------------------------------ per-process caches (workers)

_DATASETS: dict[DatasetSpec, Any] = {}
_SPLITS: dict[tuple, list] = {}
_PROFILES: dict[DatasetSpec, tuple[dict, dict]] = {}
MAX_DATASETS = 2
"""Loaded datasets a process keeps (a worker meets the tasks of a few datasets at a time)."""


def dataset_for(spec: DatasetSpec):
    """The loaded dataset of `spec`, read once per process."""
    if spec not in _DATASETS:
        while len(_DATASETS) >= MAX_DATASETS:
            old = next(iter(_DATASETS))
            del _DATASETS[old]
            _PROFILES.pop(old, None)
            for key in [k for k in _SPLITS if k[0] == old]:
                del _SPLITS[key]
        _DATASETS[spec] = spec.load()
    return _DATASETS[spec]


def _splits(spec: DatasetSpec, kind: str, seed: int, perturbations: tuple[str, ...] | None) -> list:
    from benchmark.data.splits import make_splits

    key = (spec, kind, seed, perturbations)
    if key not in _SPLITS:
        dataset = dataset_for(spec)
        _SPLITS[key] = make_splits(dataset.adata, dataset.task, kind, seed=seed, perturbations=perturbations)
    return _SPLITS[key]


def _profiles(spec: DatasetSpec) -> tuple[dict, dict]:
    from benchmark.core.pseudobulk import group_profiles

    if spec not in _PROFILES:
        dataset = dataset_for(spec)
        _PROFILES[spec] = group_profiles(dataset.adata, dataset.task)
    return _PROFILES[spec]


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Torch and BLAS/OpenMP pools limited to `n` threads within the block (no-op for None)."""
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------- the task


def run_task(task: SplitTask) -> TaskOutcome:
    """Run one task (or find it done); an exception becomes a FAILED outcome with a one-line error."""
    from benchmark.tracking import store as tracking

    started = time.perf_counter()
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        with _threads(task.threads):
            status, results = _run(task)
    except Exception as exc:  # noqa: BLE001 - the sweep reports it and goes on with the other tasks
        return TaskOutcome(
            task.key,
            FAILED,
            seconds=time.perf_counter() - started,
            error=f"{type(exc).__name__}: {tracking.one_line(exc)}",
            **where,
        )
    return TaskOutcome(task.key, status, results, time.perf_counter() - started, **where)


def _run(task: SplitTask) -> tuple[str, list[TargetResult]]:
    from benchmark.core.errors import PertbenchError
    from benchmark.execution.runner import run_split
    from benchmark.tracking import runs
    from benchmark.tracking import store as tracking

    tracking.use_store(task.tracking_uri)
    dataset = dataset_for(task.dataset)
    split = _splits(task.dataset, task.split_kind, task.seed, task.options.perturbations)[task.index]
    if split.name != task.split_name:
        raise PertbenchError(
            f"split {task.index} of seed {task.seed} is {split.name!r} here, {task.split_name!r} in the sweep: "
            "the worker's data or code differ from the sweep's"
        )
    earlier = own_runs(task)
    finished = finished_by_target(earlier)
    wanted = [(t.context, t.perturbation) for t in split.targets]
    if all(key in finished for key in wanted):
        return SKIPPED, [results_of(finished[key], task) for key in wanted]
    for run in earlier:  # an earlier attempt's runs, finished or not: this attempt redoes the whole split
        runs.delete(run.run_id)
    options = RunOptions(**{**task.options.__dict__, "seeds": (task.seed,)})
    results = run_split(
        task.predictor,
        dataset,
        split,
        task.seed,
        options,
        task.parent_run_id,
        progress=lambda _: None,
        profiles=_profiles(task.dataset),
    )
    return DONE, results


def own_runs(task: SplitTask) -> list[RunRecord]:
    """The task's child runs in the store (not deleted): the parent's children with its split and seed."""
    from benchmark.tracking import runs as store_runs
    from benchmark.tracking import schema

    experiment = store_runs.get_run(task.parent_run_id).experiment_id
    text = f"{schema.children_filter(task.parent_run_id)} and tags.`{schema.TAG_SEED}` = '{task.seed}'"
    if "'" not in task.split_name:
        text += f" and tags.`{schema.TAG_SPLIT}` = '{task.split_name}'"
    runs = store_runs.search([experiment], filter_string=text, max_results=50000)
    return [r for r in runs if r.tags.get(schema.TAG_SPLIT) == task.split_name]


def finished_by_target(runs: list[RunRecord]) -> dict[tuple[str, str], RunRecord]:
    """The FINISHED runs by (context, perturbation), the earliest where there are several."""
    from benchmark.tracking import schema

    found: dict[tuple[str, str], RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        tags = run.tags
        key = (tags.get(schema.TAG_CONTEXT, ""), tags.get(schema.TAG_PERTURBATION, ""))
        if run.status == "FINISHED" and key not in found:
            found[key] = run
    return found


def results_of(run: RunRecord, task: SplitTask) -> TargetResult:
    """A finished child run read back as the TargetResult that logged it (status and headline metrics)."""
    from benchmark.scoring.metrics import METRICS
    from benchmark.tracking import schema

    tags, metrics = run.tags, run.metrics
    return TargetResult(
        task.split_name,
        task.seed,
        tags.get(schema.TAG_PERTURBATION, ""),
        tags.get(schema.TAG_CONTEXT, ""),
        tags.get(schema.TAG_STATUS, schema.STATUS_OK),
        reason=tags.get(schema.TAG_REASON, ""),
        metrics={k: v for k, v in metrics.items() if k in METRICS},
        run_id=run.run_id,
    )
