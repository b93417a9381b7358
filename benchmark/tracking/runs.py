"""Runs in the store, behind plain functions and records: start child runs, log params, metrics, tags and
artifacts in batches, end or delete runs, and search an experiment's runs into `RunRecord`s. The rest of
pertbench logs and reads back through here, so no module outside `benchmark.tracking` calls MLflow."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

MAX_PARAM_CHARS = 6000
"""MLflow's limit on a param value; a longer value is stored whole as an artifact (see `param_value`)."""
LONG_PARAM = "(stored whole in artifact "
"""How a param that was too long to store starts: the rest names the artifact holding it."""
BATCH_PARAMS_TAGS, BATCH_ENTITIES = 100, 900
"""Most params (and tags) in one logged batch, and most entries of all kinds (MLflow allows 100 and 1000)."""


@dataclass(frozen=True)
class RunRecord:
    """One run as read back from the store: its identity, state and logged values, as plain data."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    start_time: int
    end_time: int | None
    artifact_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, run) -> RunRecord:
        """The record of an MLflow run entity."""
        info, data = run.info, run.data
        return cls(
            info.run_id,
            info.experiment_id,
            info.run_name or "",
            info.status,
            int(info.start_time or 0),
            info.end_time,
            info.artifact_uri or "",
            dict(data.tags),
            dict(data.params),
            dict(data.metrics),
        )


# ---------------------------------------------------------------------------------------------- writing


def active_run_id() -> str | None:
    """The run the current thread logs to by default (a `child_run`, a `resumed_run` or the parent run)."""
    active = mlflow.active_run()
    return active.info.run_id if active is not None else None


@contextlib.contextmanager
def child_run(run_name: str, parent_run_id: str | None = None) -> Iterator[str]:
    """A run nested in `parent_run_id` (None: the active run), active within the block; yields its id and ends
    it FINISHED, or FAILED when the block raises."""
    with mlflow.start_run(run_name=run_name, nested=True, parent_run_id=parent_run_id) as run:
        yield run.info.run_id


@contextlib.contextmanager
def resumed_run(run_id: str) -> Iterator[str]:
    """An existing run made active again within the block (ended FINISHED after it, FAILED when it raises)."""
    with mlflow.start_run(run_id=run_id):
        yield run_id


def create_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    """A new RUNNING run, not made active, with `tags` and the source tags MLflow adds to runs it starts."""
    from mlflow.tracking.context import registry as context_registry

    run = MlflowClient().create_run(
        experiment_id, run_name=run_name, tags=context_registry.resolve_tags(tags)
    )
    return run.info.run_id


def log_batch(
    run_id: str | None = None,
    params: dict | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    step: int = 0,
) -> None:
    """Log params (as `log_params` stores them), metrics (as `log_metrics`) and tags to a run (None: the active
    one) in as few requests as MLflow's batch limits allow: one for a typical target."""
    run_id = run_id or active_run_id()
    assert run_id is not None, "no run to log to"
    items = _params(run_id, params or {})
    tag_items = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
    metric_items = _metrics(metrics or {}, step)
    client = MlflowClient()
    while items or tag_items or metric_items:
        some_params, items = items[:BATCH_PARAMS_TAGS], items[BATCH_PARAMS_TAGS:]
        some_tags, tag_items = tag_items[:BATCH_PARAMS_TAGS], tag_items[BATCH_PARAMS_TAGS:]
        room = BATCH_ENTITIES - len(some_params) - len(some_tags)
        some_metrics, metric_items = metric_items[:room], metric_items[room:]
        client.log_batch(run_id, metrics=some_metrics, params=some_params, tags=some_tags)


def set_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    """Set tags on a run (None: the active one) in one request."""
    log_batch(run_id, tags=tags)


def log_params(run_id: str, params: dict) -> None:
    """Log many params in one call (values as strings); a value longer than MLflow allows is written whole as
    the artifact params/<name>.txt and the param names it, so nothing (e.g. a Reproduce command) is cut."""
    log_batch(run_id, params=params)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log finite metrics in one call; NaN is stored as NaN (MLflow accepts it) so 'undefined' stays visible."""
    log_batch(run_id, metrics=metrics, step=step)


def log_history(run_id: str, history: list[dict]) -> None:
    """Log a training curve (one dict of numbers per epoch) as step-indexed metrics under `train/`."""
    now = int(time.time() * 1000)
    items = []
    for i, row in enumerate(history):
        step = int(row.get("epoch", i))
        items += [
            Metric(f"train/{k}", float(v), now, step)
            for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)
        ]
    for start in range(0, len(items), BATCH_ENTITIES):
        MlflowClient().log_batch(run_id, metrics=items[start : start + BATCH_ENTITIES])


def _params(run_id: str, params: dict) -> list[Param]:
    """Params as strings; one too long for MLflow is stored whole as an artifact and the param names it."""
    items = []
    for key, value in params.items():
        text = str(value)
        if len(text) > MAX_PARAM_CHARS:
            artifact = f"params/{key}.txt"
            MlflowClient().log_text(run_id, text, artifact)
            text = f"{LONG_PARAM}{artifact})"
        items.append(Param(str(key), text))
    return items


def _metrics(metrics: dict[str, float], step: int) -> list[Metric]:
    """Metrics to log: infinite and missing values left out, NaN kept."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and not math.isinf(v)]


def log_artifact(path: Path | str, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Store a local file as an artifact of a run (None: the active one), under `artifact_path`."""
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    else:
        MlflowClient().log_artifact(run_id, str(path), artifact_path=artifact_path)


def set_status(run_id: str, status: str) -> None:
    """Set a run's status without ending it (a reopened run goes back to RUNNING)."""
    MlflowClient().update_run(run_id, status=status)


def terminate(run_id: str, status: str, end_time: int | None = None) -> None:
    """End a run that is not active in this thread with `status` (FINISHED, FAILED, KILLED)."""
    MlflowClient().set_terminated(run_id, status, end_time=end_time)


def delete(run_id: str) -> None:
    """Delete a run (MLflow keeps it in the trash; searches no longer find it)."""
    MlflowClient().delete_run(run_id)


# ---------------------------------------------------------------------------------------------- reading


def experiment_id(name: str) -> str | None:
    """The id of the experiment called `name`, or None when the store has none."""
    experiment = MlflowClient().get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def experiment_ids(prefix: str) -> list[str]:
    """The ids of the experiments whose name starts with `prefix`."""
    return [e.experiment_id for e in MlflowClient().search_experiments() if e.name.startswith(prefix)]


def get_run(run_id: str) -> RunRecord:
    """One run by id."""
    return RunRecord.of(MlflowClient().get_run(run_id))


def search(
    experiment_ids: list[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
    max_results: int | None = None,
) -> list[RunRecord]:
    """The experiments' runs that match an MLflow filter string, in `order_by` order, page by page (every match
    when `max_results` is None)."""
    if not experiment_ids:
        return []
    client, found, token = MlflowClient(), [], None
    while max_results is None or len(found) < max_results:
        page_size = 1000 if max_results is None else min(1000, max_results - len(found))
        page = client.search_runs(
            experiment_ids, filter_string, max_results=page_size, order_by=order_by, page_token=token
        )
        found += [RunRecord.of(run) for run in page]
        token = page.token
        if not token:
            break
    return found


def param_value(run: RunRecord, key: str, default: str | None = None) -> str | None:
    """A run's param as logged by `log_params`: the whole value, read back from its artifact when it was long."""
    value = run.params.get(key, default)
    if value is None or not value.startswith(LONG_PARAM):
        return value
    artifact = value[len(LONG_PARAM) : -1]
    return mlflow.artifacts.load_text(f"{run.artifact_uri.rstrip('/')}/{artifact}")


def download_artifact(run_id: str, artifact_path: str) -> Path:
    """A run's artifact copied to a local temporary path (raises when the run has none at that path)."""
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path))
