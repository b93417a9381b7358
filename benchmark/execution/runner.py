"""Runs one predictor over every split of a kind and seed, scores it with the engine, logs it to MLflow.

Per split: fit on the training cells only (or load the cached fit), predict each held-out target from the
control cells of its context, and hand the cells to `benchmark.scoring.evaluate` (metrics, noise ceiling, reference
baseline, mean oracle, normalized scores); log everything under the names of `benchmark.tracking.schema`, and draw the
composite figure. The parent run records the configuration (predictor, hyperparameters, data checksum, split
set, whether the splits were restricted) and the `bench run` arguments that reproduce it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from anndata import AnnData

import benchmark
from benchmark.core import progress as bars
from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.files import safe_name
from benchmark.core.protocol import Predictor
from benchmark.core.pseudobulk import group_profiles
from benchmark.core.task import Positions, dense, take
from benchmark.data import export
from benchmark.data.datasets import SYNTHETIC, Dataset, get_card
from benchmark.data.export import cell_eval_pair, saved_prediction
from benchmark.data.splits import MIN_CELLS, Split, Target, make_splits, scored_test_cells
from benchmark.execution.model_cache import cache_key, fit_or_load
from benchmark.reports.figures import composite_figure, summary_figure
from benchmark.scoring.embedding import PCAEmbedding, fit_embedding_cells
from benchmark.scoring.evaluate import (
    OtherDeltas,
    TargetResult,
    TargetScores,
    checked_prediction,
    evaluate_target,
)
from benchmark.scoring.metrics import METRICS, EvalData
from benchmark.scoring.references import ReferenceShifts, reference_predictions
from benchmark.selection.tuning import CHOOSE_DEFAULTS_PROTOCOL, config_digest, dump_toml, split_params
from benchmark.tracking import schema
from benchmark.tracking import store as tracking
from predictors.registry import CHOSEN_DEFAULTS, available_predictors, leave_out_choice, make_predictor

__all__ = [
    "ParentRecord",
    "RunOptions",
    "RunResult",
    "SplitScorer",
    "TargetResult",
    "parent_record",
    "plan_splits",
    "run_benchmark",
    "run_split",
    "saved_prediction",
]


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
    config: dict[str, Any] | None = None
    """A `bench tune` config (benchmark.selection.tuning): each split's parameters come from it, `params` on top."""
    config_source: str = ""
    score_threads: int | None = None
    """Targets the engine scores at once (None: `score_threads`' default); results do not depend on it."""


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
    bars.write(message)


def run_benchmark(
    predictor_name: str,
    dataset: Dataset,
    split_kind: str,
    options: RunOptions | None = None,
    progress: Progress = _stderr,
) -> RunResult:
    """Benchmark one predictor on every split of `split_kind` and seed; log a parent run with child runs."""
    options = options or RunOptions()
    score_threads(options)  # a bad PERTBENCH_SCORE_THREADS fails here, before any fit
    splits_by_seed, truncated = plan_splits(dataset, split_kind, options)
    skipped = next(iter(splits_by_seed.values()))[0].skipped
    record = parent_record(predictor_name, dataset, split_kind, options, splits_by_seed, truncated)
    display_name, template, templates = record.display_name, record.template, record.templates
    for note in skipped:
        progress(f"skipped {note}")

    tracking.experiment_for(dataset.name)
    positions = Positions(dataset.adata.obs_names)
    profiles = group_profiles(dataset.adata, dataset.task)  # real Δ of every group, for `others`
    results: list[TargetResult] = []
    total = sum(len(v) for v in splits_by_seed.values())
    with tracking.parent_run(record.run_name) as parent:
        parent_id = parent.info.run_id
        mlflow.set_tags(record.tags)
        tracking.log_params(parent_id, record.params)
        tracking.log_dataset(dataset.name, dataset.checksum, dataset.source)
        if options.config is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / schema.CONFIG_ARTIFACT
                path.write_text(dump_toml(options.config), encoding="utf-8")
                mlflow.log_artifact(str(path))
        done = 0
        embeddings: dict[str, PCAEmbedding] = {}  # by split digest
        with bars.bar(total, "splits", "splits") as bar:
            for seed, splits in splits_by_seed.items():
                for split in splits:
                    done += 1
                    progress(f"[{done}/{total}] seed {seed} split {split.name}: fitting {display_name}")
                    results += _run_split(
                        display_name,
                        templates.get(split.digest(), template),
                        dataset,
                        split,
                        seed,
                        positions,
                        options,
                        progress,
                        embeddings,
                        profiles,
                    )
                    bar.update(1)
        log_summary(parent_id, display_name, dataset, split_kind, results, options)
    return RunResult(display_name, dataset.name, split_kind, parent_id, results, skipped)


def plan_splits(
    dataset: Dataset, split_kind: str, options: RunOptions
) -> tuple[dict[int, list[Split]], bool]:
    """The splits of every seed (the first --max-splits of each), and whether --max-splits left some out."""
    splits_by_seed = {
        seed: make_splits(
            dataset.adata, dataset.task, split_kind, seed=seed, perturbations=options.perturbations
        )
        for seed in options.seeds
    }
    truncated = options.max_splits is not None and any(
        len(v) > options.max_splits for v in splits_by_seed.values()
    )
    if options.max_splits is not None:
        splits_by_seed = {s: v[: options.max_splits] for s, v in splits_by_seed.items()}
    return splits_by_seed, truncated


@dataclass
class ParentRecord:
    """What a parent run records (name, tags, params) and the predictors its split runs start from."""

    display_name: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any]
    template: Predictor
    templates: dict[str, Predictor]
    """Per split digest, the predictor a `bench tune` config assigns to it ({} without a config)."""


def parent_record(
    predictor_name: str,
    dataset: Dataset,
    split_kind: str,
    options: RunOptions,
    splits_by_seed: dict[int, list[Split]],
    truncated: bool,
) -> ParentRecord:
    """The parent run of `bench run` (and of `bench sweep`, which logs the same one) for these splits."""
    common = dict(options.config.get("params", {})) if options.config else {}
    key = (dataset.name, dataset.checksum)
    display_name, template = make_predictor(predictor_name, key, **{**common, **options.params})
    templates = _split_templates(predictor_name, key, options, splits_by_seed)
    total = sum(len(v) for v in splits_by_seed.values())
    config = _configuration(
        predictor_name, display_name, template, dataset, split_kind, options, splits_by_seed
    )
    config[schema.PARAM_PARTIAL] = schema.TRUE if truncated or _restricted(dataset, options) else schema.FALSE
    config.update(_config_record(predictor_name, key, template, templates, options))
    tags = {
        **run_tags(display_name, dataset, split_kind, level=schema.LEVEL_PARENT),
        schema.TAG_PARTIAL: config[schema.PARAM_PARTIAL],
        schema.TAG_CONFIG: _config_digest(display_name, template, dataset, split_kind, config),
        schema.TAG_RUN_NAME: _run_name(display_name, split_kind, options, config),
    }
    params = {
        **_provenance(display_name, template, dataset, split_kind),
        schema.PARAM_SEEDS: ",".join(map(str, options.seeds)),
        schema.PARAM_N_SPLITS: total,
        **config,
    }
    run_name = f"{display_name} · {split_kind}"
    return ParentRecord(display_name, run_name, tags, params, template, templates)


def run_split(
    predictor_name: str,
    dataset: Dataset,
    split: Split,
    seed: int,
    options: RunOptions,
    parent_run_id: str,
    progress: Progress = _stderr,
    profiles: tuple[dict, dict] | None = None,
) -> list[TargetResult]:
    """One split of a parent run logged elsewhere (`bench sweep`'s tasks): fit, then predict, score and log
    each target as a child run of `parent_run_id`, exactly as `run_benchmark` does for that split."""
    common = dict(options.config.get("params", {})) if options.config else {}
    key = (dataset.name, dataset.checksum)
    display_name, template = make_predictor(predictor_name, key, **{**common, **options.params})
    template = _split_templates(predictor_name, key, options, {seed: [split]}).get(split.digest(), template)
    tracking.experiment_for(dataset.name)
    positions = Positions(dataset.adata.obs_names)
    if profiles is None:
        profiles = group_profiles(dataset.adata, dataset.task)
    return _run_split(
        display_name,
        template,
        dataset,
        split,
        seed,
        positions,
        options,
        progress,
        {},
        profiles,
        parent_run_id=parent_run_id,
    )


def _run_split(
    name: str,
    template: Predictor,
    dataset: Dataset,
    split: Split,
    seed: int,
    positions: Positions,
    options: RunOptions,
    progress: Progress,
    embeddings: dict[str, PCAEmbedding],
    profiles: tuple[dict, dict],
    parent_run_id: str | None = None,
) -> list[TargetResult]:
    """Fit once on the split's training cells, then predict and score each of its targets in a child run (of the
    active run, or of `parent_run_id`)."""
    train = dataset.adata[positions.of(split.train_cells)]  # a view: predictors read it, nothing is copied
    scorer = SplitScorer.prepare(
        name, dataset, split, seed, train, positions, profiles, embeddings, options, progress, parent_run_id
    )
    predictor = _fresh(template, seed)
    started = time.perf_counter()
    fit_error: NotApplicable | None = None
    cache = "off"
    key = cache_key(predictor, dataset.checksum, split.digest(), seed)
    declined = _declined_targets(predictor, train, dataset.task, split)
    try:
        if len(declined) == len(split.targets):  # nothing to predict: skip the fit
            raise next(iter(declined.values()))
        predictor, cache = fit_or_load(predictor, train, dataset.task, key, options.cache_dir)
    except NotApplicable as exc:
        fit_error = exc
    fit_seconds = time.perf_counter() - started
    selection = getattr(predictor, "selection_", None) if fit_error is None else None
    history = getattr(predictor, "history_", None)

    def predictor_for(target: Target) -> PredictFn:
        error = declined.get((target.perturbation, target.context), fit_error)

        def predict(control: AnnData) -> AnnData:
            if error is not None:
                raise error
            return predictor.predict(control, target.perturbation, target.context)

        return predict

    return scorer.log_targets(
        ((target, predictor_for(target)) for target in split.targets),
        params={**_provenance(name, predictor, dataset, split.kind), schema.PARAM_MODEL_CACHE_KEY: key},
        tags={schema.TAG_MODEL_CACHE: cache},
        fit_seconds=fit_seconds,
        note=f" (fit {fit_seconds:.1f}s, cache {cache})",
        selection=selection,
        history=history if isinstance(history, list) and history else None,
    )


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


PredictFn = Callable[[AnnData], AnnData]
"""Given a target's control cells, the predicted cells (an AnnData), or NotApplicable."""


@dataclass
class SplitScorer:
    """Scores and logs the targets of one split, identically for `bench run` (a predictor's output) and
    `bench score` (cells read from a file): one child run per target with its metrics, noise ceiling, reference
    baseline (fit on the split's training cells), mean oracle, normalized scores and composite figure."""

    name: str
    dataset: Dataset
    split: Split
    seed: int
    embed: PCAEmbedding
    references: ReferenceShifts
    profiles: tuple[dict, dict]
    positions: Positions
    options: RunOptions
    progress: Progress
    parent_run_id: str | None = None
    """The parent of the child runs; None: the active run (a sweep's task has no active parent run)."""
    _split_logged: bool = field(default=False, init=False, repr=False)
    _others: OtherDeltas | None = field(default=None, init=False, repr=False)
    _figures: int = field(default=0, init=False, repr=False)
    _per_context: Counter | None = field(default=None, init=False, repr=False)
    _control_blocks: dict[str, tuple[np.ndarray, AnnData | None]] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def prepare(
        cls,
        name: str,
        dataset: Dataset,
        split: Split,
        seed: int,
        train: AnnData,
        positions: Positions,
        profiles: tuple[dict, dict],
        embeddings: dict[str, PCAEmbedding],
        options: RunOptions,
        progress: Progress,
        parent_run_id: str | None = None,
    ) -> SplitScorer:
        """The split's scoring state from its training cells: the PCA embedding (shared by splits with the same
        training cells through `embeddings`) and the reference shifts."""
        task = dataset.task
        if (
            split.digest() not in embeddings
        ):  # same training cells (a holdout split under another seed): same PCA
            embeddings[split.digest()] = fit_embedding_cells(train, task)
        return cls(
            name,
            dataset,
            split,
            seed,
            embeddings[split.digest()],
            ReferenceShifts.fit(train, task),
            profiles,
            positions,
            options,
            progress,
            parent_run_id,
        )

    def log_targets(
        self,
        targets: Iterable[tuple[Target, PredictFn]],
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
        fit_seconds: float | None = None,
        note: str = "",
        selection: Any = None,
        history: list[dict] | None = None,
    ) -> list[TargetResult]:
        """Predict each target (its `predict`), score it with the engine and log it as a child run, in order.

        `params` and `tags` are the caller's provenance (predictor, model cache or predictions file); NotApplicable
        from `predict` becomes a recorded status; `fit_seconds` is logged when known. The engine scores up to
        `score_threads()` targets at once in threads while this thread reads cells, predicts and logs (MLflow and
        the predictor stay on this thread). The engine is deterministic and each target's scores depend only on
        its own cells, so the results are those of one target at a time; at most 2 x threads targets' cells are
        held."""
        job = _TargetLog(params, tags, fit_seconds, note, selection, history)
        threads = score_threads(self.options)
        pool = ThreadPoolExecutor(threads, thread_name_prefix="score") if threads > 1 else None
        pending: deque[_Scoring] = deque()
        out: list[TargetResult] = []
        try:
            for target, predict in targets:
                scoring = self._predict(target, predict)
                if scoring.cells is not None:
                    scoring.scores = (
                        pool.submit(self._evaluate, scoring)
                        if pool is not None
                        else _finished(self._evaluate(scoring))
                    )
                pending.append(scoring)
                while pending and (len(pending) > 2 * threads or _ready(pending[0])):
                    out.append(self._log(pending.popleft(), job))
            while pending:
                out.append(self._log(pending.popleft(), job))
        except Exception:
            while pending:  # targets already predicted are logged before the error surfaces
                out.append(self._log(pending.popleft(), job))
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        return out

    def _predict(self, target: Target, predict: PredictFn) -> _Scoring:
        """Read a target's cells and predict it (NotApplicable becomes a recorded status); nothing is logged."""
        adata, task, split, seed = self.dataset.adata, self.dataset.task, self.split, self.seed
        result = TargetResult(split.name, seed, target.perturbation, target.context, schema.STATUS_OK)
        if self._others is None:  # one comparison pool per context, not one per target
            self._others = OtherDeltas(*self.profiles, task.control_label, split.kind)
        others = self._others(target.perturbation, target.context, MIN_CELLS)
        scoring = _Scoring(target, result, others)
        control = self._controls(target)
        test_positions = self.positions.of(scored_test_cells(target.test_cells))
        real = dense(task.lognorm(take(adata, test_positions)))
        control_x = dense(task.lognorm(control))
        started = time.perf_counter()
        try:
            predicted = predict(control)
        except NotApplicable as exc:
            result.status, result.reason = schema.STATUS_NOT_APPLICABLE, str(exc) or type(exc).__name__
            return scoring
        result.seconds = time.perf_counter() - started
        pred_x = checked_prediction(self.name, predicted, control)
        refs = reference_predictions(self.references, control_x, target.perturbation)
        scoring.cells = _TargetCells(control, control_x, real, pred_x, predicted, test_positions, refs)
        return scoring

    def _controls(self, target: Target) -> AnnData:
        """The target's control cells in memory. From a backed file, when the split holds several targets of its
        context, the context's controls are read once (when at most CONTROL_BLOCK_CELLS) and each target's sample
        is taken from them: reading a 500-cell sample from disk cost 0.08 s a target on the 310k screen, a row
        at a time. Same cells, same values."""
        adata, positions = self.dataset.adata, self.positions.of(target.control_cells)
        if not adata.isbacked or self._targets_in(target.context) < 2:
            return take(adata, positions)
        if target.context not in self._control_blocks:
            task = self.dataset.task
            rows = np.flatnonzero(task.is_control(adata) & (task.contexts(adata) == target.context))
            block = take(adata, rows) if rows.size <= CONTROL_BLOCK_CELLS else None
            self._control_blocks = {target.context: (rows, block)}  # one context at a time
        rows, block = self._control_blocks[target.context]
        at = np.minimum(np.searchsorted(rows, positions), max(rows.size - 1, 0))
        if block is None or rows.size == 0 or not np.array_equal(rows[at], positions):
            return take(adata, positions)
        return block[at].copy()

    def _targets_in(self, context: str) -> int:
        """How many of the split's targets are in `context`."""
        if self._per_context is None:
            self._per_context = Counter(t.context for t in self.split.targets)
        return self._per_context[context]

    def _evaluate(self, scoring: _Scoring) -> TargetScores:
        """The engine's scores of a predicted target (pure: runs on a scoring thread)."""
        cells = scoring.cells
        assert cells is not None
        return evaluate_target(
            cells.control_x,
            cells.real,
            cells.pred_x,
            self.embed,
            cells.refs,
            others=scoring.others,
            seed=self.seed,
        )

    def _log(self, scoring: _Scoring, job: _TargetLog) -> TargetResult:
        """Log one target as a child run (tags, params, scores, figure, saved predictions); its scores first."""
        split, seed, target, result = self.split, self.seed, scoring.target, scoring.result
        if scoring.scores is not None:
            result.add_scores(scoring.scores.result())
        if not self._split_logged:
            self._log_split()  # once per split, on the parent run
        with mlflow.start_run(
            run_name=f"{self.name} · {split.name} · seed {seed}",
            nested=True,
            parent_run_id=self.parent_run_id,
        ) as child:
            run_id = child.info.run_id
            mlflow.set_tags(
                {
                    **run_tags(self.name, self.dataset, split.kind, level=schema.LEVEL_SPLIT),
                    schema.TAG_SPLIT: split.name,
                    schema.TAG_SEED: str(seed),
                    schema.TAG_CONTEXT: target.context,
                    schema.TAG_PERTURBATION: target.perturbation,
                    **(job.tags or {}),
                }
            )
            tracking.log_dataset(self.dataset.name, self.dataset.checksum, self.dataset.source)
            others = scoring.others
            logged = {
                **job.params,
                schema.PARAM_SEED: seed,
                schema.PARAM_SPLIT: split.name,
                schema.PARAM_SPLIT_DIGEST: split.digest(),
                schema.PARAM_N_TRAIN: len(split.train_cells),
                schema.PARAM_N_TEST: len(target.test_cells),
                schema.PARAM_N_CONTROL: len(target.control_cells),
                schema.PARAM_N_OTHERS: 0 if others is None else len(others),
            }
            if job.selection is not None:
                logged[schema.PARAM_SELECTION] = _json(job.selection, compact=True)[
                    : schema.SELECTION_PARAM_CHARS
                ]
            tracking.log_params(run_id, logged)
            if not self._split_logged:  # no parent run: the split goes with its first target instead
                self._log_split()
            if job.selection is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / schema.SELECTION_ARTIFACT
                    path.write_text(_json(job.selection))
                    mlflow.log_artifact(str(path))
            if job.history:
                tracking.log_history(run_id, job.history)
            if scoring.cells is not None:
                self._log_artifacts(scoring)
            result.run_id = run_id
            result.seconds = (job.fit_seconds or 0.0) + result.seconds
            mlflow.set_tag(schema.TAG_STATUS, result.status)
            if result.status == schema.STATUS_NOT_APPLICABLE:
                mlflow.set_tag(schema.TAG_REASON, result.reason[:5000])
                self.progress(f"    {target.context}/{target.perturbation}: not applicable ({result.reason})")
            else:
                if result.reference_name:
                    tracking.log_params(run_id, {schema.PARAM_REFERENCE: result.reference_name})
                flat = {
                    **result.metrics,
                    **schema.prefixed(schema.CEILING_PREFIX, result.ceiling),
                    **schema.prefixed(schema.REFERENCE_PREFIX, result.reference),
                    **schema.prefixed(schema.ORACLE_PREFIX, result.oracle),
                    **schema.prefixed(schema.NORM_PREFIX, result.normalized),
                }
                if job.fit_seconds is not None:
                    flat[schema.FIT_SECONDS] = job.fit_seconds
                tracking.log_metrics(run_id, flat)
                self.progress(
                    f"    {target.context}/{target.perturbation}: "
                    + ", ".join(f"{k}={result.metrics[k]:.3f}" for k in schema.headline_metrics())
                    + job.note
                )
        return result

    def _log_split(self) -> None:
        """Log the split (integer positions, schema.SPLITS_DIR) to its parent run, once per SplitScorer."""
        active = mlflow.active_run()
        parent = self.parent_run_id or (active.info.run_id if active is not None else None)
        if parent is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.split.save(Path(tmp) / f"{self.split.digest()}.npz", self.dataset.adata.obs_names)
                mlflow.MlflowClient().log_artifact(parent, str(path), artifact_path=schema.SPLITS_DIR)
        self._split_logged = True

    def _log_artifacts(self, scoring: _Scoring) -> None:
        """The target's composite figure and saved predictions, as artifacts of the active child run."""
        adata, task, split, seed, options = (
            self.dataset.adata,
            self.dataset.task,
            self.split,
            self.seed,
            self.options,
        )
        cells, target, result = scoring.cells, scoring.target, scoring.result
        assert cells is not None
        with tempfile.TemporaryDirectory() as tmp:
            if options.figures and self._figures < FIGURES_PER_SPLIT:
                self._figures += 1
                title = f"{self.dataset.name} · {split.kind} {split.name} · {self.name} · seed {seed}"
                path = composite_figure(
                    EvalData(control=cells.control_x, real=cells.real, pred=cells.pred_x, embed=self.embed),
                    result.metrics,
                    result.reference or None,
                    title,
                    Path(tmp) / schema.COMPOSITE_FIGURE,
                    embedding=options.embedding,
                    seed=seed,
                )
                mlflow.log_artifact(str(path), artifact_path=schema.FIGURES_DIR)
            if options.save_predictions:
                control = cells.control
                saved = saved_prediction(
                    cells.pred_x, cells.predicted, control, task, target, split.name, seed
                )
                pred_file = (
                    Path(tmp) / f"predictions_{safe_name(split.name)}_{safe_name(target.context)}.h5ad"
                )
                saved.write_h5ad(pred_file)
                mlflow.log_artifact(str(pred_file), artifact_path=schema.PREDICTIONS_DIR)
                test = take(adata, cells.test_positions)
                pair = cell_eval_pair(control, cells.control_x, test, cells.real, saved, target)
                for file, part in zip((export.REAL_FILE, export.PRED_FILE), pair, strict=True):
                    part.write_h5ad(Path(tmp) / file)
                    mlflow.log_artifact(str(Path(tmp) / file), artifact_path=schema.CELL_EVAL_DIR)


FIGURES_PER_SPLIT = 25
"""Most composite figures one split draws: its first targets'. A split of a screen holds thousands of targets,
and each figure embeds its cells (UMAP by default); every committed dataset's splits hold fewer."""

CONTROL_BLOCK_CELLS = 50_000
"""Most control cells of one context that `SplitScorer` keeps in memory when reading a backed file."""

SCORE_THREADS_ENV = "PERTBENCH_SCORE_THREADS"
"""Environment variable overriding how many targets the engine scores at once (1: one at a time, no threads)."""


def score_threads(options: RunOptions) -> int:
    """Targets scored at once: RunOptions.score_threads, else $PERTBENCH_SCORE_THREADS, else the usable cores (at
    most 4: the engine's arrays are per target, so more threads mostly add memory)."""
    if options.score_threads is not None:
        return max(1, options.score_threads)
    value = os.environ.get(SCORE_THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise PertbenchError(f"{SCORE_THREADS_ENV} must be a whole number >= 1, got {value!r}")
        return int(value)
    return max(
        1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


@dataclass
class _TargetLog:
    """What every target of one `log_targets` call logs alike: provenance, fit time, selection, history."""

    params: dict[str, Any]
    tags: dict[str, str] | None
    fit_seconds: float | None
    note: str
    selection: Any
    history: list[dict] | None


@dataclass
class _TargetCells:
    """A predicted target's cells: control (AnnData and log-normalized), real, scored prediction, references."""

    control: AnnData
    control_x: np.ndarray
    real: np.ndarray
    pred_x: np.ndarray
    predicted: AnnData
    test_positions: np.ndarray
    refs: dict[str, np.ndarray]


@dataclass
class _Scoring:
    """One target between its prediction and its child run: the cells, and the engine's scores once ready."""

    target: Target
    result: TargetResult
    others: np.ndarray | None
    cells: _TargetCells | None = None
    scores: Future | None = None


def _finished(value: TargetScores) -> Future:
    """A future already holding `value` (scoring without threads)."""
    future: Future = Future()
    future.set_result(value)
    return future


def _ready(scoring: _Scoring) -> bool:
    """Whether a target can be logged without waiting: not applicable, or its scores are done."""
    return scoring.scores is None or scoring.scores.done()


def _fresh(template: Predictor, seed: int) -> Predictor:
    """A new unfitted predictor with the template's parameters and the run's seed (if it takes one)."""
    params = template.get_params()
    if "random_state" in params:
        params["random_state"] = seed
    return type(template)(**params)


def _split_templates(
    predictor_name: str,
    data_key: tuple[str, str],
    options: RunOptions,
    splits_by_seed: dict[int, list[Split]],
) -> dict[str, Predictor]:
    """Per split digest, the predictor a config assigns to it (its block's params, `params` on top); {} without
    a config. A split the config does not cover is an error raised before anything is logged."""
    if options.config is None:
        return {}
    templates: dict[str, Predictor] = {}
    for splits in splits_by_seed.values():
        for split in splits:
            if split.digest() not in templates:
                params = {**split_params(options.config, split), **options.params}
                templates[split.digest()] = make_predictor(predictor_name, data_key, **params)[1]
    return templates


def _config_record(
    predictor_name: str,
    data_key: tuple[str, str],
    template: Predictor,
    templates: dict[str, Predictor],
    options: RunOptions,
) -> dict[str, Any]:
    """Parent params saying which configuration is in force and how it was chosen; a hyperparameter whose
    value differs between splits (a config's blocks chose differently) reads "per split" (children: the value)."""
    if options.config is None:
        spec = available_predictors().get(predictor_name)
        chosen = spec is not None and spec.chosen is not None
        source = (
            f"defaults chosen in {CHOSEN_DEFAULTS.parent.name}/{CHOSEN_DEFAULTS.name}"
            if chosen
            else "defaults"
        )
        if chosen and leave_out_choice(spec.chosen, data_key) is not None:
            source += f" (the choice without {data_key[0]})"
        return {
            schema.PARAM_CONFIG_SOURCE: source + (" + --param" if options.params else ""),
            schema.PARAM_CONFIG_PROTOCOL: CHOOSE_DEFAULTS_PROTOCOL if chosen else "none",
        }
    tuning = options.config.get("tuning", {})
    record = {
        schema.PARAM_CONFIG_SOURCE: options.config_source + (" + --param" if options.params else ""),
        schema.PARAM_CONFIG_PROTOCOL: str(tuning.get("protocol", "unknown")),
        schema.PARAM_CONFIG_OBJECTIVE: str(tuning.get("objective", "")),
        schema.PARAM_CONFIG_DIGEST: config_digest(options.config),
    }
    params = [p.get_params() for p in templates.values()]
    for key, value in template.get_params().items():
        values = [p[key] for p in params]
        if values and not all(_same(values[0], v) for v in values[1:]):
            record[f"{schema.HP_PREFIX}{key}"] = schema.PER_SPLIT
        elif values and not _same(
            value, values[0]
        ):  # every split run agrees on a value the blocks do not share
            record[f"{schema.HP_PREFIX}{key}"] = values[0]
    return record


def run_tags(name: str, dataset: Dataset, split_kind: str, level: str, source: str = "run") -> dict[str, str]:
    """The tags every run carries (leaderboard and UI read runs back by them); `source` is run or score."""
    return {
        schema.TAG_SOURCE: source,
        schema.TAG_LEVEL: level,
        schema.TAG_PREDICTOR: name,
        schema.TAG_DATASET: dataset.name,
        schema.TAG_SPLIT_KIND: split_kind,
    }


def _provenance(name: str, predictor: Predictor, dataset: Dataset, split_kind: str) -> dict[str, Any]:
    """Params that make a run repeatable: predictor and hyperparameters, data checksum, code version."""
    return {
        schema.PARAM_PREDICTOR: name,
        schema.PARAM_PREDICTOR_CLASS: f"{type(predictor).__module__}:{type(predictor).__qualname__}",
        **{f"{schema.HP_PREFIX}{k}": v for k, v in predictor.get_params().items()},
        **data_provenance(dataset, split_kind),
    }


def data_provenance(dataset: Dataset, split_kind: str) -> dict[str, Any]:
    """Params of every run, whatever made its predictions: the data and its checksum, split kind, code version."""
    return {
        schema.PARAM_DATASET: dataset.name,
        schema.PARAM_DATASET_CHECKSUM: dataset.checksum,
        schema.PARAM_DATASET_SOURCE: dataset.source,
        schema.PARAM_SPLIT_KIND: split_kind,
        schema.PARAM_VERSION: benchmark.__version__,
        schema.PARAM_GIT_COMMIT: tracking.git_commit(),
    }


# ---------------------------------------------------------------------------------------------- configuration


def _configuration(
    predictor_name: str,
    display_name: str,
    template: Predictor,
    dataset: Dataset,
    split_kind: str,
    options: RunOptions,
    splits_by_seed: dict[int, list[Split]],
) -> dict[str, str]:
    """Parent params that identify the run's configuration and the `bench run` arguments that reproduce it."""
    changed = changed_params(predictor_name, template, (dataset.name, dataset.checksum))
    split_set = hashlib.sha256(
        json.dumps([[seed, [s.digest() for s in splits]] for seed, splits in splits_by_seed.items()]).encode()
    ).hexdigest()[:16]
    args = ["--predictor", predictor_name, *dataset_cli_args(dataset), "--split", split_kind]
    if options.config is not None:
        args += ["--config", options.config_source]
    seeds = ",".join(map(str, options.seeds))
    args += ["--seeds", seeds] if len(options.seeds) > 1 else ["--seed", seeds]
    overrides = changed if options.config is None else options.params  # a config brings its own params
    for key, value in overrides.items():
        args += ["--param", f"{key}={param_text(value)}"]
    for pert in options.perturbations or ():
        args += ["--perturbation", pert]
    if options.max_splits is not None:
        args += ["--max-splits", str(options.max_splits)]
    return {
        schema.PARAM_SPLIT_SET: split_set,
        schema.PARAM_CLI: shlex.join(args),
        schema.PARAM_CLI_PARAMS: ", ".join(f"{k}={param_text(v)}" for k, v in changed.items()),
    }


def _config_digest(
    name: str, predictor: Predictor, dataset: Dataset, split_kind: str, config: dict[str, str]
) -> str:
    """Digest of predictor, hyperparameters, data checksum, split kind, split set and partial flag."""
    ident = {
        "predictor": name,
        "hp": {k: repr(v) for k, v in predictor.get_params().items()},
        "checksum": dataset.checksum,
        "split_kind": split_kind,
        **{k: config[k] for k in (schema.PARAM_SPLIT_SET, schema.PARAM_PARTIAL)},
        **({"config": config[schema.PARAM_CONFIG_DIGEST]} if schema.PARAM_CONFIG_DIGEST in config else {}),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _run_name(display_name: str, split_kind: str, options: RunOptions, config: dict[str, str]) -> str:
    """A parent run name that tells configurations apart: predictor, changed params, the `bench tune` config in
    force (its digest, as on the leaderboard), split kind, seeds, and whether the splits were restricted."""
    extra = [config[schema.PARAM_CLI_PARAMS]]
    if schema.PARAM_CONFIG_DIGEST in config:
        extra.append(f"config {config[schema.PARAM_CONFIG_DIGEST][:8]}")
    shown = "; ".join(x for x in extra if x)
    name = f"{display_name}{f' ({shown})' if shown else ''} · {split_kind} · seeds {','.join(map(str, options.seeds))}"
    return name + (" · partial" if config[schema.PARAM_PARTIAL] == schema.TRUE else "")


def changed_params(
    predictor_name: str, predictor: Predictor, data_key: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The predictor's hyperparameters that differ from those its registered name (or class) builds by default
    (on the dataset data_key, see make_predictor)."""
    defaults = make_predictor(predictor_name, data_key)[1].get_params()
    return {k: v for k, v in predictor.get_params().items() if k not in defaults or not _same(defaults[k], v)}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.all(a == b)) and type(a) is type(b)
    except (TypeError, ValueError):
        return repr(a) == repr(b)


def param_text(value: Any) -> str:
    """`--param` text that the CLI parses back to `value` (a string stays bare unless it reads as a literal)."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return repr(value)


def dataset_cli_args(dataset: Dataset) -> list[str]:
    """`--dataset NAME` for a card (or the built-in synthetic) whose checksum matches, else the `--data` arguments."""
    if dataset.name == SYNTHETIC and not Path(dataset.source).suffix == ".h5ad":
        return ["--dataset", dataset.name]
    try:
        card = get_card(dataset.name)
    except PertbenchError:
        card = None
    if card is not None and card.sha256 == dataset.checksum:
        return ["--dataset", dataset.name]
    task = dataset.task
    source = Path(dataset.source)
    args = ["--data", str(source.resolve()) if source.exists() else str(source)]
    args += ["--perturbation-key", task.perturbation_key, "--control", task.control_label]
    if task.context_key is not None:
        args += ["--context-key", task.context_key]
    return args + ["--expression", task.expression]


def _restricted(dataset: Dataset, options: RunOptions) -> bool:
    """Whether --perturbation left out some perturbation label of the dataset."""
    if options.perturbations is None:
        return False
    task = dataset.task
    labels = set(np.unique(task.perturbations(dataset.adata))) - {task.control_label}
    return not labels <= set(options.perturbations)


def _json(value: Any, compact: bool = False) -> str:
    """JSON text of a predictor's `selection_` (numpy numbers and other objects as their Python value or str)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return str(obj)

    if compact:
        return json.dumps(value, default=default, separators=(",", ":"))
    return json.dumps(value, default=default, indent=2)


def log_summary(
    parent_id: str,
    name: str,
    dataset: Dataset,
    split_kind: str,
    results: list[TargetResult],
    options: RunOptions,
) -> None:
    """Mean metrics on the parent run (`mean_<metric>`, and the headline metrics under their plain names, so the
    MLflow UI shows them in the columns of the split runs), and the summary figure of metrics across splits."""
    scored = [r for r in results if r.status == schema.STATUS_OK]
    mlflow.set_tags(
        {
            schema.TAG_N_SCORED: str(len(scored)),
            schema.TAG_N_NOT_APPLICABLE: str(len(results) - len(scored)),
        }
    )
    if not scored:
        return
    table = pd.DataFrame([r.metrics for r in scored], index=[f"{r.label} s{r.seed}" for r in scored])
    means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in table.items()}
    tracking.log_metrics(
        parent_id,
        {
            **schema.prefixed(schema.MEAN_PREFIX, means),
            **{k: means[k] for k in schema.headline_metrics() if k in means},
        },
    )
    if options.figures:
        with tempfile.TemporaryDirectory() as tmp:
            path = summary_figure(
                table,
                f"{dataset.name} · {split_kind} · {name} · seeds {','.join(map(str, options.seeds))}",
                Path(tmp) / schema.SUMMARY_FIGURE,
                directions={k: m.higher_is_better for k, m in METRICS.items()},
            )
            mlflow.log_artifact(str(path), artifact_path=schema.FIGURES_DIR)
