"""`bench score`: score a predictions file made by any tool exactly as `bench run` scores a fitted predictor.

The file is an h5ad of predicted cells whose obs name each cell's perturbation and context (bench's own saved
predictions: `perturbation` / `context`; cell-eval's layout: `target_gene`, with `non-targeting` control rows,
which are left out). The split is rebuilt with `make_splits` from the real data, kind and seed, exactly as
`bench run` builds it; each held-out target with predicted cells is scored and logged by the runner's
`SplitScorer` (the code path of `bench run`: same metrics, noise ceiling, reference baseline fit on the split's
training cells, mean oracle, normalized scores, figure); a target without predicted cells is recorded not
applicable. A file that cannot be scored (missing genes, groups that are not held-out targets, values on the
wrong scale) is a one-line PertbenchError.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.files import shown_path
from benchmark.core.task import dense, take
from benchmark.data.datasets import Dataset, read_h5ad, sha256_file
from benchmark.data.splits import Split, Target, make_splits
from benchmark.data.validation import COUNTS_LOOKING_MAX, format_labels
from benchmark.execution.options import Progress, RunOptions, RunResult, _stderr
from benchmark.execution.provenance import (
    data_provenance,
    dataset_cli_args,
    log_summary,
    run_tags,
    split_set_digest,
)
from benchmark.execution.runner import parent_frame
from benchmark.execution.scorer import SplitJob, SplitScorer, score_threads
from benchmark.scoring.evaluate import TargetResult
from benchmark.tracking import schema

PERTURBATION_KEY, CONTEXT_KEY = "perturbation", "context"
"""obs columns read by default: those of bench's own saved predictions."""
CELL_EVAL_PERTURBATION_KEY = "target_gene"
"""cell-eval's perturbation column, read when the file has no `perturbation` column."""
CONTROL_STYLE_LABELS = ("non-targeting", "non_targeting", "NT", "control", "ctrl")
"""Labels read as the control (rows left out, not scored) unless the dataset uses them for a perturbation."""
NEGATIVE_MASS_MAX = 0.3
"""Largest share of the absolute value mass that negative values may hold. Centered or z-scored data hold half
of it (their mean is 0); bench's own shift-baseline predictions on kang2018 hold 10-15% (small negatives where
a control cell's zero gets a negative shift)."""
NO_PREDICTED_CELLS = "no predicted cells"
PREDICTOR_CLASS = "predictions file"


@dataclass(frozen=True)
class Predictions:
    """Predicted cells read from a file: X rows in the dataset's gene order, grouped by (perturbation, context)."""

    path: Path
    checksum: str
    groups: dict[tuple[str, str], AnnData]
    perturbation_key: str
    context_key: str | None
    n_control_rows: int = 0


def read_predictions(
    path: Path | str,
    dataset: Dataset,
    perturbation_key: str | None = None,
    context_key: str | None = None,
    seed: int | None = None,
) -> Predictions:
    """Read and check a predictions file against the dataset (genes, labels, scale); group its cells by target.

    Without keys: `perturbation`, else cell-eval's `target_gene`; `context`, else the dataset's context column,
    else (a dataset with one context) that context. A `seed` column (bench's saved predictions) keeps the rows
    of `seed`.
    """
    path = Path(path)
    if not path.is_file():
        raise PertbenchError(f"no such predictions file: {path}")
    with warnings.catch_warnings():  # merged saved predictions repeat cell names; bench groups cells itself
        warnings.filterwarnings("ignore", message=r".*names are not unique", category=UserWarning)
        adata = read_h5ad(path)
        adata.obs_names_make_unique()
    if adata.n_obs == 0:
        raise PertbenchError(f"predictions file {path} holds no cells")
    obs = adata.obs
    task = dataset.task
    pert_key = _column(
        obs, perturbation_key, (PERTURBATION_KEY, CELL_EVAL_PERTURBATION_KEY), path, "perturbation"
    )
    contexts = np.unique(task.contexts(dataset.adata))
    ctx_key = _column(
        obs,
        context_key,
        tuple(k for k in (CONTEXT_KEY, task.context_key) if k is not None),
        path,
        "context",
        required=len(contexts) > 1,
    )
    keep = np.ones(adata.n_obs, dtype=bool)
    if "seed" in obs.columns and seed is not None:
        seeds = obs["seed"].astype(str).to_numpy()
        keep &= seeds == str(seed)
        if not keep.any():
            raise PertbenchError(
                f"predictions file {path} holds seed(s) {format_labels(seeds)} in obs['seed'], not --seed {seed}"
            )
    perts = obs[pert_key].astype(str).to_numpy()
    known = set(task.perturbations(dataset.adata))
    controls = {task.control_label} | {label for label in CONTROL_STYLE_LABELS if label not in known}
    is_control = np.isin(perts, list(controls))
    n_control = int((is_control & keep).sum())
    keep &= ~is_control
    if not keep.any():
        raise PertbenchError(f"predictions file {path} holds no predicted (non-control) cells")
    ctxs = obs[ctx_key].astype(str).to_numpy() if ctx_key is not None else np.full(adata.n_obs, contexts[0])
    adata = adata[keep]
    perts, ctxs = perts[keep], ctxs[keep]
    x = _in_dataset_genes(adata, dataset, path)
    check_scale(x, path)
    check_scale_like(x, _control_sample(dataset), path)
    groups = {}
    for (p, t), idx in pd.DataFrame({"p": perts, "t": ctxs}).groupby(["p", "t"]).indices.items():
        groups[(str(p), str(t))] = AnnData(
            X=x[idx],
            obs=pd.DataFrame(index=adata.obs_names[idx]),
            var=pd.DataFrame(index=dataset.adata.var_names),
        )
    return Predictions(path, sha256_file(path), groups, pert_key, ctx_key, n_control)


def _column(
    obs: pd.DataFrame,
    given: str | None,
    defaults: tuple[str, ...],
    path: Path,
    role: str,
    required: bool = True,
) -> str | None:
    """The obs column holding `role` labels: the given one (which must exist), else the first default present."""
    flag = f"--prediction-{role}-key"
    if given is not None:
        if given not in obs.columns:
            raise PertbenchError(
                f"{flag} {given!r} is not an obs column of {path}; columns: {format_labels(obs.columns)}"
            )
        return given
    for key in defaults:
        if key in obs.columns:
            return key
    if not required:
        return None
    raise PertbenchError(
        f"predictions file {path} has no {role} column ({' or '.join(map(repr, defaults))}); "
        f"name it with {flag}; columns: {format_labels(obs.columns)}"
    )


def _in_dataset_genes(adata: AnnData, dataset: Dataset, path: Path) -> np.ndarray:
    """The predicted values with the dataset's genes in its order (extra genes dropped); missing genes are an error."""
    genes = pd.Index(adata.var_names.astype(str))
    wanted = dataset.adata.var_names
    if genes.has_duplicates:
        raise PertbenchError(f"predictions file {path} names some genes twice in var_names")
    missing = wanted.difference(genes)
    if len(missing):
        raise PertbenchError(
            f"predictions file {path} lacks {len(missing)} of the dataset's {len(wanted)} genes "
            f"(e.g. {', '.join(map(str, missing[:5]))}); predict every gene of the dataset, named as in its var_names"
        )
    x = adata.X[:, genes.get_indexer(wanted)]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def check_scale(x: np.ndarray, path: Path | str) -> None:
    """Predicted values must be finite log-normalized expression: not counts, not centered or scaled data."""
    advice = "bench scores log1p(counts / library size * 1e4) values, as the dataset's log-normalized X"
    if not np.isfinite(x).all():
        raise PertbenchError(
            f"predictions file {path} holds {int((~np.isfinite(x)).sum())} NaN or infinite values"
        )
    top = float(x.max())
    if (x == np.round(x)).all() and top >= 2:
        raise PertbenchError(
            f"predictions file {path} is on the wrong scale: integers up to {top:.0f} look like counts; {advice}"
        )
    if top > COUNTS_LOOKING_MAX:
        raise PertbenchError(
            f"predictions file {path} is on the wrong scale: values up to {top:.4g} (log-normalized values stay "
            f"below {COUNTS_LOOKING_MAX:g}); {advice}"
        )
    total = float(np.abs(x).sum())
    negative = float(-x[x < 0].sum())
    if total > 0 and negative / total > NEGATIVE_MASS_MAX:
        raise PertbenchError(
            f"predictions file {path} is on the wrong scale: negative values hold {negative / total:.0%} of the "
            f"value mass (min {float(x.min()):.3g}), as in centered or scaled data; {advice}"
        )


LIBRARY_RATIO_MAX = 3.0
"""Most a predictions file's median per-cell total expression (sum of expm1 over genes) may differ, either way,
from the dataset's control cells before its scale is refused: log2 instead of natural log, or 0/1 values,
change it many times over, while a perturbation rarely changes a cell's total expression threefold."""


def _control_sample(dataset: Dataset, n: int = 2000) -> np.ndarray:
    """Log-normalized values of up to n of the dataset's control cells (a fixed, evenly spaced sample)."""
    rows = np.flatnonzero(dataset.task.is_control(dataset.adata))
    rows = rows[np.linspace(0, rows.size - 1, min(n, rows.size)).astype(int)] if rows.size else rows
    return dense(dataset.task.lognorm(take(dataset.adata, rows)))


def _median_library(x: np.ndarray) -> float:
    return float(np.median(np.expm1(np.asarray(x, dtype=np.float64)).sum(axis=1)))


def check_scale_like(x: np.ndarray, control_x: np.ndarray, path: Path | str) -> None:
    """The predictions' implied library size (sum of expm1 per cell) must be within LIBRARY_RATIO_MAX of the
    dataset's control cells': log1p of the same normalization, not log2, 0/1 or another scale."""
    if control_x.size == 0 or x.size == 0:
        return
    ours, theirs = _median_library(x), _median_library(control_x)
    if theirs <= 0:
        return
    ratio = ours / theirs
    if not 1 / LIBRARY_RATIO_MAX <= ratio <= LIBRARY_RATIO_MAX:
        raise PertbenchError(
            f"predictions file {path} is on the wrong scale: its cells' median total expression (sum of expm1 "
            f"over genes) is {ratio:.3g}x the dataset's control cells' (log2 or 0/1 values do this); bench scores "
            "log1p(counts / library size * 1e4) values, as the dataset's log-normalized X"
        )


def score_predictions(
    predictions: Predictions,
    name: str,
    dataset: Dataset,
    split_kind: str,
    seed: int = 0,
    options: RunOptions | None = None,
    progress: Progress = _stderr,
) -> RunResult:
    """Score a predictions file on every held-out target of the split (kind, seed) and log it as predictor `name`.

    The parent and child runs carry the tags of `bench run` with source 'score'; their hyperparameters are empty
    and their recorded arguments reproduce the `bench score` command.
    """
    options = options or RunOptions(seeds=(seed,))
    score_threads(options)  # a bad PERTBENCH_SCORE_THREADS fails here, before any work
    splits = make_splits(dataset.adata, dataset.task, split_kind, seed=seed)
    where = {(t.perturbation, t.context): s for s in splits for t in s.targets}
    unknown = sorted(set(predictions.groups) - set(where))
    if unknown:
        shown = ", ".join(f"{t}/{p}" for p, t in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise PertbenchError(
            f"predictions file {predictions.path} holds {len(unknown)} group(s) that are not held-out targets of "
            f"the {split_kind} split with seed {seed} (context/perturbation: {shown}); held-out targets: "
            f"{format_labels(f'{t}/{p}' for p, t in where)}"
        )
    for note in splits[0].skipped:
        progress(f"skipped {note}")
    config = _configuration(predictions, name, dataset, split_kind, seed, splits)
    params = {
        schema.PARAM_PREDICTOR: name,
        schema.PARAM_PREDICTOR_CLASS: PREDICTOR_CLASS,
        **data_provenance(dataset, split_kind),
        schema.PARAM_PREDICTIONS_FILE: str(predictions.path.resolve()),
        schema.PARAM_PREDICTIONS_CHECKSUM: predictions.checksum,
    }
    tags = {
        **run_tags(name, dataset, split_kind, schema.LEVEL_PARENT, source=schema.SOURCE_SCORE),
        schema.TAG_PARTIAL: schema.FALSE,
        schema.TAG_CONFIG: _digest({**config, **params}),
        schema.TAG_RUN_NAME: f"{name} (scored file) · {split_kind} · seed {seed}",
    }
    logged = {**params, schema.PARAM_SEEDS: str(seed), schema.PARAM_N_SPLITS: len(splits), **config}
    results: list[TargetResult] = []
    with parent_frame(dataset, f"{name} · {split_kind}", tags, logged, len(splits)) as frame:
        parent_id = frame.parent_id
        for i, split in enumerate(splits, 1):
            progress(f"[{i}/{len(splits)}] seed {seed} split {split.name}: scoring {predictions.path.name}")
            scorer = _scorer(frame.job(name, dataset, split, seed, options, progress), predictions)
            results += scorer.log_targets(
                ((target, _reader(predictions, target)) for target in split.targets),
                params=params,
                tags={schema.TAG_SOURCE: schema.SOURCE_SCORE},
            )
            frame.bar.update(1)
        log_summary(parent_id, name, dataset, split_kind, results, options)
    return RunResult(name, dataset.name, split_kind, parent_id, results, splits[0].skipped)


def _scorer(job: SplitJob, predictions: Predictions) -> SplitScorer:
    """The split's SplitScorer; its embedding and references are fit only when the file predicts a target of it."""
    split, dataset = job.split, job.dataset
    if not any((t.perturbation, t.context) in predictions.groups for t in split.targets):
        return SplitScorer(
            job.name,
            dataset,
            split,
            job.seed,
            None,
            None,
            job.profiles,
            job.positions,
            job.options,
            job.progress,
        )  # type: ignore[arg-type]
    train = dataset.adata[job.positions.of(split.train_cells)]
    return SplitScorer.prepare(job, train)


def _reader(predictions: Predictions, target: Target):
    """A predict function that returns the file's cells of `target`, or NotApplicable when it has none."""

    def predict(control: AnnData) -> AnnData:
        cells = predictions.groups.get((target.perturbation, target.context))
        if cells is None:
            raise NotApplicable(NO_PREDICTED_CELLS)
        return cells

    return predict


def _configuration(
    predictions: Predictions, name: str, dataset: Dataset, split_kind: str, seed: int, splits: list[Split]
) -> dict[str, str]:
    """Parent params: the split set, no changed hyperparameters, and the `bench score` arguments that reproduce it."""
    args = ["--predictions", shown_path(predictions.path), *dataset_cli_args(dataset), "--name", name]
    args += ["--split", split_kind, "--seed", str(seed)]
    if predictions.perturbation_key != PERTURBATION_KEY:
        args += ["--prediction-perturbation-key", predictions.perturbation_key]
    if predictions.context_key not in (None, CONTEXT_KEY):
        args += ["--prediction-context-key", str(predictions.context_key)]
    return {
        schema.PARAM_SPLIT_SET: split_set_digest({seed: splits}),
        schema.PARAM_PARTIAL: schema.FALSE,
        schema.PARAM_CLI: shlex.join(args),
        schema.PARAM_CLI_PARAMS: "",
    }


def _digest(ident: dict) -> str:
    """Digest of the configuration: name, data checksum, split kind and set, and the predictions file's checksum."""
    keep = (
        schema.PARAM_PREDICTOR,
        schema.PARAM_DATASET_CHECKSUM,
        schema.PARAM_SPLIT_KIND,
        schema.PARAM_SPLIT_SET,
        schema.PARAM_PARTIAL,
        schema.PARAM_PREDICTIONS_CHECKSUM,
    )
    payload = {k: str(ident[k]) for k in keep}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
