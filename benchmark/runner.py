"""Runs one predictor over every split of a kind and seed, scores it identically to every other, logs to MLflow.

Per split: fit on the training cells only (or load the cached fit), predict each held-out target from the
control cells of its context, score against the real held-out cells, compute the split's noise ceiling and the
reference baseline (mean_shift, or additive for combinations) for normalized scores, draw the composite figure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from anndata import AnnData

import benchmark
from benchmark import tracking
from benchmark.ceiling import noise_ceiling, normalized_score
from benchmark.datasets import Dataset
from benchmark.errors import NotApplicable, PertbenchError
from benchmark.figures import composite_figure, summary_figure
from benchmark.metrics import METRICS, EvalData, PCAEmbedding, fit_embedding, score
from benchmark.model_cache import cache_key, fit_or_load
from benchmark.protocol import Predictor
from benchmark.splits import Split, Target, make_splits
from benchmark.task import dense
from predictors.registry import make_predictor

REFERENCE_PREDICTORS = ("mean_shift", "additive")
"""The baseline that anchors normalized scores at 0: the first of these that applies to a target."""
CEILING_REPEATS = 20


@dataclass
class TargetResult:
    """The outcome for one held-out target of one split and seed."""

    split: str
    seed: int
    perturbation: str
    context: str
    status: str  # "ok" | "not_applicable"
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    ceiling: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    normalized: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return (
            self.split
            if self.split.endswith(f"{self.context}/{self.perturbation}")
            else (f"{self.split}:{self.context}/{self.perturbation}")
        )


@dataclass
class RunOptions:
    """What `bench run` asked for beyond predictor, dataset and split kind."""

    seeds: tuple[int, ...] = (0,)
    params: dict[str, Any] = field(default_factory=dict)
    perturbations: tuple[str, ...] | None = None
    save_predictions: bool = False
    figures: bool = True
    embedding: str = "umap"
    cache_dir: Path | None = None
    max_splits: int | None = None


@dataclass
class RunResult:
    """Everything a run produced: per-target results, the parent MLflow run, where the summary figure is."""

    predictor: str
    dataset: str
    split_kind: str
    parent_run_id: str
    results: list[TargetResult]
    skipped: tuple[str, ...] = ()

    def table(self) -> pd.DataFrame:
        """One row per scored (or not applicable) target and seed."""
        rows = []
        for r in self.results:
            rows.append(
                {"split": r.label, "seed": r.seed, "status": r.status, **r.metrics, "reason": r.reason}
            )
        return pd.DataFrame(rows)


Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmark(
    predictor_name: str,
    dataset: Dataset,
    split_kind: str,
    options: RunOptions | None = None,
    progress: Progress = _stderr,
) -> RunResult:
    """Benchmark one predictor on every split of `split_kind` and seed; log a parent run with child runs."""
    options = options or RunOptions()
    display_name, template = make_predictor(predictor_name, **options.params)
    splits_by_seed = {
        seed: make_splits(
            dataset.adata, dataset.task, split_kind, seed=seed, perturbations=options.perturbations
        )
        for seed in options.seeds
    }
    if options.max_splits is not None:
        splits_by_seed = {s: v[: options.max_splits] for s, v in splits_by_seed.items()}
    skipped = next(iter(splits_by_seed.values()))[0].skipped
    for note in skipped:
        progress(f"skipped {note}")

    tracking.experiment_for(dataset.name)
    positions = {name: i for i, name in enumerate(dataset.adata.obs_names)}
    results: list[TargetResult] = []
    total = sum(len(v) for v in splits_by_seed.values())
    with tracking.parent_run(f"{display_name} · {split_kind}") as parent:
        parent_id = parent.info.run_id
        mlflow.set_tags(_run_tags(display_name, dataset, split_kind, level="parent"))
        tracking.log_params(
            parent_id,
            {
                **_provenance(display_name, template, dataset, split_kind),
                "seeds": ",".join(map(str, options.seeds)),
                "n_splits": total,
            },
        )
        done = 0
        embeddings: dict[str, PCAEmbedding] = {}
        for seed, splits in splits_by_seed.items():
            for split in splits:
                done += 1
                progress(f"[{done}/{total}] seed {seed} split {split.name}: fitting {display_name}")
                results += _run_split(
                    display_name, template, dataset, split, seed, positions, options, progress, embeddings
                )
        _log_summary(parent_id, display_name, dataset, split_kind, results, options)
    return RunResult(display_name, dataset.name, split_kind, parent_id, results, skipped)


def _run_split(
    name: str,
    template: Predictor,
    dataset: Dataset,
    split: Split,
    seed: int,
    positions: dict[str, int],
    options: RunOptions,
    progress: Progress,
    embeddings: dict[str, PCAEmbedding],
) -> list[TargetResult]:
    """Fit once on the split's training cells, then predict and score each of its targets in a child run."""
    adata, task = dataset.adata, dataset.task
    train = adata[[positions[c] for c in split.train_cells]].copy()
    if split.digest() not in embeddings:  # same training cells (a holdout split under another seed): same PCA
        embeddings[split.digest()] = fit_embedding(task.lognorm(train), n_components=50, seed=0)
    embed = embeddings[split.digest()]
    predictor = _fresh(template, seed)
    started = time.perf_counter()
    fit_error: NotApplicable | None = None
    cache = "off"
    key = cache_key(predictor, dataset.checksum, split.digest(), seed)
    declined = _declined_targets(predictor, train, task, split)
    try:
        if len(declined) == len(split.targets):  # nothing to predict: skip the fit
            raise next(iter(declined.values()))
        predictor, cache = fit_or_load(predictor, train, task, key, options.cache_dir)
    except NotApplicable as exc:
        fit_error = exc
    fit_seconds = time.perf_counter() - started
    references = _reference_predictors(name, train, task)

    out: list[TargetResult] = []
    for target in split.targets:
        with mlflow.start_run(run_name=f"{split.name} · seed {seed}", nested=True) as child:
            run_id = child.info.run_id
            mlflow.set_tags(
                {
                    **_run_tags(name, dataset, split.kind, level="split"),
                    "pertbench.split": split.name,
                    "pertbench.seed": str(seed),
                    "pertbench.context": target.context,
                    "pertbench.perturbation": target.perturbation,
                    "pertbench.model_cache": cache,
                }
            )
            tracking.log_params(
                run_id,
                {
                    **_provenance(name, predictor, dataset, split.kind),
                    "seed": seed,
                    "split": split.name,
                    "split_digest": split.digest(),
                    "model_cache_key": key,
                    "n_train_cells": len(split.train_cells),
                    "n_test_cells": len(target.test_cells),
                    "n_control_cells": len(target.control_cells),
                },
            )
            with tempfile.TemporaryDirectory() as tmp:
                split_file = split.save(Path(tmp) / "split.json")
                mlflow.log_artifact(str(split_file))
            history = getattr(predictor, "history_", None)
            if isinstance(history, list) and history:
                tracking.log_history(run_id, history)
            result = _score_target(
                name,
                predictor,
                declined.get((target.perturbation, target.context), fit_error),
                references,
                dataset,
                split,
                target,
                seed,
                embed,
                positions,
                options,
            )
            result.run_id = run_id
            result.seconds = fit_seconds + result.seconds
            mlflow.set_tag("pertbench.status", result.status)
            if result.status == "not_applicable":
                mlflow.set_tag("pertbench.reason", result.reason[:5000])
                progress(f"    {target.context}/{target.perturbation}: not applicable ({result.reason})")
            else:
                flat = {
                    **result.metrics,
                    **{f"ceiling_{k}": v for k, v in result.ceiling.items()},
                    **{f"reference_{k}": v for k, v in result.reference.items()},
                    **{f"norm_{k}": v for k, v in result.normalized.items()},
                    "fit_seconds": fit_seconds,
                }
                tracking.log_metrics(run_id, flat)
                progress(
                    f"    {target.context}/{target.perturbation}: "
                    + ", ".join(
                        f"{k}={result.metrics[k]:.3f}" for k in ("r", "jaccard_100", "energy_distance")
                    )
                    + f" (fit {fit_seconds:.1f}s, cache {cache})"
                )
            out.append(result)
    return out


def _declined_targets(
    predictor: Predictor, train: AnnData, task, split: Split
) -> dict[tuple[str, str], NotApplicable]:
    """The split's targets the predictor declines before fitting (its check_applicable), with the reasons."""
    declined = {}
    for target in split.targets:
        try:
            predictor.check_applicable(train, task, target.perturbation, target.context)
        except NotApplicable as exc:
            declined[(target.perturbation, target.context)] = exc
    return declined


def _score_target(
    name: str,
    predictor: Predictor,
    fit_error: NotApplicable | None,
    references: dict[str, Predictor],
    dataset: Dataset,
    split: Split,
    target: Target,
    seed: int,
    embed,
    positions: dict[str, int],
    options: RunOptions,
) -> TargetResult:
    """Predict one target and score it; NotApplicable becomes a recorded status, not a failure."""
    adata, task = dataset.adata, dataset.task
    result = TargetResult(split.name, seed, target.perturbation, target.context, "ok")
    control = adata[[positions[c] for c in target.control_cells]].copy()
    real = dense(task.lognorm(adata[[positions[c] for c in target.test_cells]]))
    control_x = dense(task.lognorm(control))
    started = time.perf_counter()
    try:
        if fit_error is not None:
            raise fit_error
        predicted = predictor.predict(control, target.perturbation, target.context)
    except NotApplicable as exc:
        result.status, result.reason = "not_applicable", str(exc) or type(exc).__name__
        return result
    result.seconds = time.perf_counter() - started
    pred_x = _checked_prediction(name, predicted, control)
    data = EvalData(control=control_x, real=real, pred=pred_x, embed=embed)
    result.metrics = score(data)
    result.ceiling = noise_ceiling(control_x, real, embed, n_repeats=CEILING_REPEATS, seed=seed)
    result.reference = _reference_scores(
        name, result.metrics, references, control, control_x, real, embed, target
    )
    result.normalized = {
        k: normalized_score(
            v, result.reference.get(k, np.nan), result.ceiling.get(k, np.nan), METRICS[k].higher_is_better
        )
        for k, v in result.metrics.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        if options.figures:
            title = f"{dataset.name} · {split.kind} {split.name} · {name} · seed {seed}"
            path = composite_figure(
                data,
                result.metrics,
                result.reference or None,
                title,
                Path(tmp) / "composite.png",
                embedding=options.embedding,
                seed=seed,
            )
            mlflow.log_artifact(str(path), artifact_path="figures")
        if options.save_predictions:
            predicted = predicted.copy()
            predicted.obs["perturbation"] = target.perturbation
            predicted.obs["context"] = target.context
            predicted.obs["split"] = split.name
            predicted.obs["seed"] = seed
            pred_file = Path(tmp) / f"predictions_{_safe(split.name)}_{_safe(target.context)}.h5ad"
            predicted.write_h5ad(pred_file)
            mlflow.log_artifact(str(pred_file), artifact_path="predictions")
    return result


def _reference_predictors(name: str, train: AnnData, task) -> dict[str, Predictor]:
    """Fit the cheap reference baselines on the same training cells (skipped when the predictor is one)."""
    refs = {}
    for ref in REFERENCE_PREDICTORS:
        if ref != name:
            refs[ref] = make_predictor(ref)[1].fit(train, task)
    return refs


def _reference_scores(
    name: str, own: dict, references: dict[str, Predictor], control, control_x, real, embed, target: Target
) -> dict[str, float]:
    """Scores of the first applicable reference baseline on the same target (the predictor's own if it is one)."""
    for ref in REFERENCE_PREDICTORS:
        if ref == name:
            return dict(own)
        try:
            pred = references[ref].predict(control, target.perturbation, target.context)
        except NotApplicable:
            continue
        return score(EvalData(control=control_x, real=real, pred=dense(pred.X), embed=embed))
    return {}


def _checked_prediction(name: str, predicted: AnnData, control: AnnData) -> np.ndarray:
    """The predicted matrix, after checking the protocol: an AnnData, same genes in order, finite values."""
    if not isinstance(predicted, AnnData):
        raise PertbenchError(f"predictor {name} returned {type(predicted).__name__}, expected an AnnData")
    if predicted.n_obs == 0:
        raise PertbenchError(f"predictor {name} returned no cells")
    if list(predicted.var_names) != list(control.var_names):
        raise PertbenchError(
            f"predictor {name} returned genes that differ from the control's (names or order)"
        )
    values = dense(predicted.X)
    if not np.isfinite(values).all():
        raise PertbenchError(f"predictor {name} returned NaN or infinite values")
    return values


def _fresh(template: Predictor, seed: int) -> Predictor:
    """A new unfitted predictor with the template's parameters and the run's seed (if it takes one)."""
    params = template.get_params()
    if "random_state" in params:
        params["random_state"] = seed
    return type(template)(**params)


def _run_tags(name: str, dataset: Dataset, split_kind: str, level: str) -> dict[str, str]:
    return {
        "pertbench.level": level,
        "pertbench.predictor": name,
        "pertbench.dataset": dataset.name,
        "pertbench.split_kind": split_kind,
    }


def _provenance(name: str, predictor: Predictor, dataset: Dataset, split_kind: str) -> dict[str, Any]:
    """Params that make a run repeatable: predictor and hyperparameters, data checksum, code version."""
    return {
        "predictor": name,
        "predictor_class": f"{type(predictor).__module__}:{type(predictor).__qualname__}",
        **{f"hp.{k}": v for k, v in predictor.get_params().items()},
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "dataset_source": dataset.source,
        "split_kind": split_kind,
        "pertbench_version": benchmark.__version__,
        "git_commit": tracking.git_commit(),
    }


def _log_summary(
    parent_id: str,
    name: str,
    dataset: Dataset,
    split_kind: str,
    results: list[TargetResult],
    options: RunOptions,
) -> None:
    """Mean metrics on the parent run, and the summary figure of metrics across splits."""
    scored = [r for r in results if r.status == "ok"]
    mlflow.set_tags(
        {
            "pertbench.n_scored": str(len(scored)),
            "pertbench.n_not_applicable": str(len(results) - len(scored)),
        }
    )
    if not scored:
        return
    table = pd.DataFrame([r.metrics for r in scored], index=[f"{r.label} s{r.seed}" for r in scored])
    tracking.log_metrics(
        parent_id,
        {
            f"mean_{k}": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            for k, v in table.items()
        },
    )
    if options.figures:
        with tempfile.TemporaryDirectory() as tmp:
            path = summary_figure(
                table,
                f"{dataset.name} · {split_kind} · {name} · seeds {','.join(map(str, options.seeds))}",
                Path(tmp) / "summary.png",
                directions={k: m.higher_is_better for k, m in METRICS.items()},
            )
            mlflow.log_artifact(str(path), artifact_path="figures")


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
