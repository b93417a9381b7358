"""MLflow plumbing: the default embedded store, experiments, provenance tags and batched logging."""

from __future__ import annotations

import logging
import math
import os
import subprocess
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from benchmark.schema import EXPERIMENT_PREFIX  # noqa: E402

# After importing mlflow, which configures its own loggers: keep store-migration INFO lines out of `bench` output.
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""An embedded SQLite store in the working directory; MLFLOW_TRACKING_URI points elsewhere (e.g. a server)."""
LOCAL_ARTIFACT_DIR = "mlartifacts"


def tracking_uri(uri: str | None = None) -> str:
    """The explicit URI, else MLFLOW_TRACKING_URI, else the embedded SQLite file."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_store(uri: str | None = None) -> str:
    """Point MLflow at the store and return its URI."""
    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return resolved


def experiment_for(dataset: str) -> str:
    """One experiment per dataset, so the MLflow UI compares predictors on the same data side by side."""
    name = f"{EXPERIMENT_PREFIX}/{dataset}"
    if mlflow.get_experiment_by_name(name) is None:
        artifact_location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            artifact_location = (Path.cwd() / LOCAL_ARTIFACT_DIR).resolve().as_uri()
        mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(name)
    return name


def git_commit() -> str:
    """The commit of the pertbench checkout (with '+dirty' for local changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def log_params(run_id: str, params: dict) -> None:
    """Log many params in one call (values as strings, MLflow's limit respected)."""
    items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
    MlflowClient().log_batch(run_id, params=items)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log finite metrics in one call; NaN is stored as NaN (MLflow accepts it) so 'undefined' stays visible."""
    import time

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and not math.isinf(v)
    ]
    for start in range(0, len(items), 900):
        MlflowClient().log_batch(run_id, metrics=items[start : start + 900])


def log_history(run_id: str, history: list[dict]) -> None:
    """Log a training curve (one dict of numbers per epoch) as step-indexed metrics under `train/`."""
    import time

    now = int(time.time() * 1000)
    items = []
    for i, row in enumerate(history):
        step = int(row.get("epoch", i))
        items += [
            Metric(f"train/{k}", float(v), now, step)
            for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)
        ]
    for start in range(0, len(items), 900):
        MlflowClient().log_batch(run_id, metrics=items[start : start + 900])
