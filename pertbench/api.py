"""`pb.run`, `pb.score` and the listings: the notebook face of `bench run` / `bench score`.

Each call resolves its arguments the way the CLI does (a predictor by registered name, `module:Class` or an
instance; data by card name, h5ad path or an in-memory AnnData with its keys) and hands them to the harness's
own entry points (`run_benchmark`, `score_predictions`), so a notebook and `bench` give the same numbers for the
same seed. `tracking=None` runs into a temporary MLflow store that is deleted afterwards: nothing is written
to disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.protocol import Predictor
from benchmark.core.task import Task
from benchmark.data import datasets as _datasets
from benchmark.data.datasets import Dataset
from benchmark.data.splits import SPLIT_KINDS, default_split_kind
from benchmark.execution.options import RunOptions, RunResult
from benchmark.execution.provenance import changed_params
from benchmark.reports.leaderboard import per_split
from benchmark.scoring.metrics import METRICS
from benchmark.tracking import schema
from benchmark.tracking import store as _store
from benchmark.tracking.scoped import scoped_store as tracking_store
from predictors.registry import BUILTINS, available_predictors, load_class, make_predictor

IN_MEMORY = "in-memory AnnData"
ROWS = ("predictor", "reference", "oracle", "ceiling")
"""The `row` values of a Result's table: the predictor's scores, the engine's reference baseline, the mean
oracle and the noise ceiling, all scored on the same cells."""
TABLE_COLUMNS = ["predictor", "dataset", "split", "target", "seed", "row", "metric", "value"]


@dataclass
class Result:
    """What `pb.run` or `pb.score` produced: the tidy score table and the MLflow run it was logged as."""

    predictor: str
    dataset: str
    split_kind: str
    run: RunResult = field(repr=False)
    tracking_uri: str | None = None
    """The MLflow store the run is in (None: it was a temporary store, now deleted)."""

    @property
    def parent_run_id(self) -> str:
        return self.run.parent_run_id

    @property
    def table(self) -> pd.DataFrame:
        """One row per split x target x seed x metric x row (predictor / reference / oracle / ceiling)."""
        rows = []
        for r in self.run.results:
            if r.status != schema.STATUS_OK:
                continue
            target = f"{r.context}/{r.perturbation}"
            for row, values in zip(ROWS, (r.metrics, r.reference, r.oracle, r.ceiling), strict=True):
                for metric, value in values.items():
                    rows.append((self.predictor, self.dataset, r.split, target, r.seed, row, metric, value))
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)

    @property
    def declined(self) -> pd.DataFrame:
        """The targets the predictor declared not applicable, with the reason."""
        rows = [
            (r.split, f"{r.context}/{r.perturbation}", r.seed, r.reason)
            for r in self.run.results
            if r.status != schema.STATUS_OK
        ]
        return pd.DataFrame(rows, columns=["split", "target", "seed", "reason"])

    def frame(self, row: str = "predictor") -> pd.DataFrame:
        """Per (split, target) unit, the mean over seeds of each metric: the leaderboard's per-split shape."""
        if row not in ROWS:
            raise PertbenchError(f"row must be one of {', '.join(ROWS)}, got {row!r}")
        source = {"predictor": "metrics", "reference": "reference", "oracle": "oracle", "ceiling": "ceiling"}[
            row
        ]
        units = {
            (r.label, r.seed): getattr(r, source) for r in self.run.results if r.status == schema.STATUS_OK
        }
        return per_split(units)

    def summary(self) -> pd.DataFrame:
        """Mean over units of each metric, one column per row kind (predictor, reference, oracle, ceiling)."""
        return pd.DataFrame({row: self.frame(row).mean() for row in ROWS})


# ---------------------------------------------------------------------------------------------- listings


def list_predictors() -> pd.DataFrame:
    """Registered predictors (built-ins, then plug-ins): name, description, class, optional extra."""
    rows = [(name, spec.summary, spec.target, spec.extra) for name, spec in available_predictors().items()]
    return pd.DataFrame(rows, columns=["name", "description", "target", "extra"])


def list_metrics() -> pd.DataFrame:
    """Registered metrics: name, description, direction (higher / lower / zero = best at 0), kind."""
    direction = {True: "higher", False: "lower", None: "zero"}
    rows = [(m.name, m.description, direction[m.higher_is_better], m.kind) for m in METRICS.values()]
    return pd.DataFrame(rows, columns=["name", "description", "direction", "kind"])


def load_dataset(
    dataset: str | Path | AnnData | Dataset,
    perturbation_key: str | None = None,
    control: str | None = None,
    context_key: str | None = None,
    expression: str = "lognorm",
    name: str | None = None,
) -> Dataset:
    """A dataset by card name (or 'synthetic'), h5ad path, or in-memory AnnData; the keys are those of the CLI's
    --data arguments and are needed for a path or an AnnData. An AnnData is copied, never changed."""
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, AnnData):
        return _from_anndata(dataset, perturbation_key, control, context_key, expression, name)
    if isinstance(dataset, str) and (dataset == _datasets.SYNTHETIC or dataset in _datasets.dataset_names()):
        return _datasets.load_dataset(dataset)
    if isinstance(dataset, str | Path) and Path(dataset).suffix == ".h5ad":
        if not perturbation_key or not control:
            raise PertbenchError("an h5ad path needs perturbation_key= and control=")
        return _datasets.load_h5ad(dataset, perturbation_key, control, context_key, expression)
    known = ", ".join([_datasets.SYNTHETIC, *_datasets.dataset_names()])
    raise PertbenchError(
        f"unknown dataset {dataset!r}: give a card name ({known}), an .h5ad path or an AnnData"
    )


def _from_anndata(
    adata: AnnData,
    perturbation_key: str | None,
    control: str | None,
    context_key: str | None,
    expression: str,
    name: str | None,
) -> Dataset:
    """A Dataset of an in-memory AnnData: validated like a file; its checksum digests X, names and keys."""
    if not perturbation_key or not control:
        raise PertbenchError("an in-memory AnnData needs perturbation_key= and control=")
    if expression not in _datasets.EXPRESSIONS:
        raise PertbenchError(
            f"expression must be one of {', '.join(_datasets.EXPRESSIONS)}, got {expression!r}"
        )
    task = Task(perturbation_key, control, context_key, expression=expression)  # type: ignore[arg-type]
    prepared = _datasets.prepare(adata.copy(), task)
    return Dataset(
        name or "adata",
        prepared,
        task,
        anndata_digest(prepared, task),
        IN_MEMORY,
        default_split_kind(prepared, task),
    )


def anndata_digest(adata: AnnData, task: Task) -> str:
    """SHA-256 of X (values and sparsity), cell and gene names and the task's obs columns: the same cells give
    the same checksum, so the model cache and the leaderboard treat them as one dataset."""
    h = hashlib.sha256()
    x = adata.X
    parts = (x.data, x.indices, x.indptr) if sp.issparse(x) else (np.ascontiguousarray(x),)
    h.update(repr((adata.shape, str(x.dtype), sp.issparse(x))).encode())
    for part in parts:
        h.update(np.ascontiguousarray(part).tobytes())
    for labels in (adata.obs_names, adata.var_names):
        h.update("\0".join(map(str, labels)).encode())
    for key in (task.perturbation_key, task.context_key):
        if key is not None:
            h.update(f"\0{key}\0".encode() + "\0".join(adata.obs[key].astype(str)).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- predictors


def resolve_predictor(
    predictor: str | Predictor, params: dict[str, Any] | None, data_key: tuple[str, str]
) -> tuple[str, dict[str, Any]]:
    """(name the runner builds, params on top of its defaults) for a name, `module:Class` or an instance.

    An instance is rebuilt from its class and get_params(); it keeps a registered name when its class and the
    name's fixed parameters match (so `MeanShift()` runs as `mean_shift`), else runs as `module:Class`.
    """
    if isinstance(predictor, str):
        return predictor, dict(params or {})
    if isinstance(predictor, type):
        raise PertbenchError(f"give a predictor instance or name, not the class {predictor.__name__}")
    if not callable(getattr(predictor, "get_params", None)):
        raise PertbenchError(
            f"{type(predictor).__name__} has no get_params(); subclass benchmark.core.protocol.Predictor"
        )
    cls = type(predictor)
    target = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in cls.__qualname__ or load_class(target) is not cls:
        raise PertbenchError(
            f"predictor class {cls.__qualname__} cannot be imported as {target}; define it at the top level of a "
            "module or notebook cell"
        )
    instance_params = {**predictor.get_params(), **(params or {})}
    name = _registered_name(target, instance_params) or target
    return name, changed_params(name, cls(**instance_params), data_key)


def _registered_name(target: str, params: dict[str, Any]) -> str | None:
    """The built-in whose class is `target` and whose fixed parameters all match (the most specific one)."""
    matches = [
        (len(spec.params), name)
        for name, spec in BUILTINS.items()
        if spec.target == target and all(k in params and params[k] == v for k, v in spec.params.items())
    ]
    return max(matches)[1] if matches else None


# ---------------------------------------------------------------------------------------------- tracking


def _check_tracking(tracking: str | None) -> None:
    """A tracking URI with an unknown scheme fails before any data is read."""
    if tracking is not None:
        _store.check_uri(_store.tracking_uri(None if tracking == "default" else tracking))


def _quiet(_: str) -> None:
    """A progress callback that prints nothing."""


def _progress(show: bool) -> dict[str, Any]:
    """The progress argument of the harness's entry points: their default (stderr) or silence."""
    return {} if show else {"progress": _quiet}


def _split_kind(split: str | None, dataset: Dataset) -> str:
    kind = split or dataset.default_split
    if kind not in SPLIT_KINDS:
        raise PertbenchError(f"unknown split kind {kind!r}; known kinds: {', '.join(SPLIT_KINDS)}")
    return kind


# ---------------------------------------------------------------------------------------------- run / score


def run(
    predictor: str | Predictor,
    dataset: str | Path | AnnData | Dataset = "kang2018",
    split: str | None = None,
    seeds: Sequence[int] = (0,),
    max_splits: int | None = None,
    params: dict[str, Any] | None = None,
    tracking: str | None = "default",
    perturbation_key: str | None = None,
    control: str | None = None,
    context_key: str | None = None,
    expression: str = "lognorm",
    dataset_name: str | None = None,
    figures: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Result:
    """Benchmark one predictor on every split of a kind (default: the dataset's), like `bench run`.

    `tracking`: "default" logs to the embedded MLflow store (MLFLOW_TRACKING_URI, else ./mlflow.db), a URI logs
    there, None writes nothing to disk (and draws no figures). `cache_dir` keeps fitted models between calls
    (None: no model cache). Data keys and `dataset_name` (an AnnData's name) are those of `load_dataset`.
    """
    if max_splits is not None and max_splits < 1:
        raise PertbenchError(f"max_splits must be at least 1, got {max_splits}")
    seeds = tuple(seeds)
    if not seeds or any(not isinstance(s, int | np.integer) or s < 0 for s in seeds):
        raise PertbenchError(f"seeds must be one or more integers >= 0, got {seeds!r}")
    _check_tracking(tracking)
    data = load_dataset(dataset, perturbation_key, control, context_key, expression, dataset_name)
    kind = _split_kind(split, data)
    name, overrides = resolve_predictor(predictor, params, (data.name, data.checksum))
    make_predictor(name, (data.name, data.checksum), **overrides)  # a bad name or value fails before any run
    options = RunOptions(
        seeds=tuple(int(s) for s in seeds),
        params=overrides,
        figures=figures and tracking is not None,
        cache_dir=cache_dir,
        max_splits=max_splits,
    )
    from benchmark.execution.runner import run_benchmark

    with tracking_store(tracking, data.name) as (uri, _):
        result = run_benchmark(name, data, kind, options, **_progress(progress))
    return Result(result.predictor, data.name, kind, result, uri)


def score(
    predictions: AnnData | str | Path,
    dataset: str | Path | AnnData | Dataset = "kang2018",
    name: str = "predictions",
    split: str | None = None,
    seed: int = 0,
    tracking: str | None = "default",
    prediction_perturbation_key: str | None = None,
    prediction_context_key: str | None = None,
    perturbation_key: str | None = None,
    control: str | None = None,
    context_key: str | None = None,
    expression: str = "lognorm",
    dataset_name: str | None = None,
    figures: bool = True,
    progress: bool = True,
) -> Result:
    """Score predicted cells (an AnnData, or an h5ad path) on the held-out targets of a split, like `bench score`.

    An AnnData is written to a temporary h5ad and read back by `bench score`'s own reader, so the checks (genes,
    labels, scale) and the scores are those of the CLI. `tracking` as in `run`.
    """
    from benchmark.execution.score import read_predictions, score_predictions

    if not name.strip():
        raise PertbenchError("name must not be empty")
    _check_tracking(tracking)
    data = load_dataset(dataset, perturbation_key, control, context_key, expression, dataset_name)
    kind = _split_kind(split, data)
    options = RunOptions(seeds=(seed,), figures=figures and tracking is not None)
    with contextlib.ExitStack() as stack:
        path = predictions
        if isinstance(predictions, AnnData):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pertbench-predictions-")))
            path = folder / f"{name}.h5ad"
            predictions.write_h5ad(path)
        read = read_predictions(path, data, prediction_perturbation_key, prediction_context_key, seed)
        uri, _ = stack.enter_context(tracking_store(tracking, data.name))
        result = score_predictions(read, name, data, kind, seed, options, **_progress(progress))
    return Result(name, data.name, kind, result, uri)
