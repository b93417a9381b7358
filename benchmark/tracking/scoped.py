"""A store for one call of the Python API: the default or a given MLflow store, or a temporary one removed after."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import fluent as _fluent

from benchmark.tracking import schema
from benchmark.tracking import store as _store

_EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_ID"
"""Where mlflow.set_experiment records the active experiment (besides its module state)."""


@contextlib.contextmanager
def scoped_store(tracking: str | None, dataset_name: str) -> Iterator[tuple[str | None, Path | None]]:
    """Point MLflow at the store for one call: "default" (MLFLOW_TRACKING_URI, else ./mlflow.db), a URI, or None
    (a temporary store whose artifacts also stay in the temporary folder; removed on exit). Yields (the store's
    URI or None, the temporary folder or None); the previous tracking URI is restored."""
    previous = mlflow.get_tracking_uri()
    experiment = os.environ.get(_EXPERIMENT_ENV), _fluent._active_experiment_id
    try:
        if tracking is None:
            with tempfile.TemporaryDirectory(prefix="pertbench-") as tmp:
                _store.use_store(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
                mlflow.create_experiment(
                    f"{schema.EXPERIMENT_PREFIX}/{dataset_name}",
                    artifact_location=(Path(tmp) / _store.LOCAL_ARTIFACT_DIR).as_uri(),
                    tags=_store.experiment_tags(),
                )
                try:
                    yield None, Path(tmp)
                finally:  # the temporary store's experiment must not stay the active one
                    _fluent._active_experiment_id = experiment[1]
                    if experiment[0] is None:
                        os.environ.pop(_EXPERIMENT_ENV, None)
                    else:
                        os.environ[_EXPERIMENT_ENV] = experiment[0]
        else:
            uri = _store.use_store(None if tracking == "default" else tracking)
            _store.reap_dead_runs()
            yield uri, None
    finally:
        mlflow.set_tracking_uri(previous)
