"""The per-target scorer of one split: reads each target's cells, predicts, scores with the engine (in threads),
and logs one MLflow child run per target with its figure and saved predictions; the same for `bench run` and
`bench score`."""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.files import safe_name
from benchmark.core.task import Positions, dense, take
from benchmark.data import export
from benchmark.data.datasets import Dataset
from benchmark.data.export import cell_eval_pair, saved_prediction
from benchmark.data.splits import MIN_CELLS, Split, Target, scored_test_cells
from benchmark.execution.model_cache import cached_embedding
from benchmark.execution.options import Progress, RunOptions
from benchmark.execution.provenance import _json, run_tags
from benchmark.reports.figures import composite_figure
from benchmark.scoring.embedding import PCAEmbedding
from benchmark.scoring.evaluate import (
    OtherDeltas,
    TargetResult,
    TargetScores,
    checked_prediction,
    evaluate_target,
)
from benchmark.scoring.metrics import EvalData
from benchmark.scoring.references import ReferenceShifts, reference_predictions
from benchmark.tracking import runs, schema
from benchmark.tracking import store as tracking

PredictFn = Callable[[AnnData], AnnData]
"""Given a target's control cells, the predicted cells (an AnnData), or NotApplicable."""


@dataclass
class SplitJob:
    """One split to fit (or read) and score: what the runner, `bench score` and the scorer share."""

    name: str
    dataset: Dataset
    split: Split
    seed: int
    positions: Positions
    options: RunOptions
    progress: Progress
    profiles: tuple[dict, dict]
    """The real group means and sizes (`group_profiles`), for discrimination's comparison groups."""
    embeddings: dict[str, PCAEmbedding] = field(default_factory=dict)
    """PCA embeddings by split digest, shared by the splits of one run with the same training cells."""
    parent_run_id: str | None = None
    """The parent of the child runs; None: the active run."""


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
    def prepare(cls, job: SplitJob, train: AnnData) -> SplitScorer:
        """The split's scoring state from its training cells: the PCA embedding (shared by splits with the same
        training cells through `job.embeddings`) and the reference shifts."""
        task, digest = job.dataset.task, job.split.digest()
        if digest not in job.embeddings:  # same training cells (a holdout split under another seed): same PCA
            job.embeddings[digest] = cached_embedding(
                train, task, job.dataset.checksum, digest, job.options.cache_dir
            )
        return cls(
            job.name,
            job.dataset,
            job.split,
            job.seed,
            job.embeddings[digest],
            ReferenceShifts.fit(train, task),
            job.profiles,
            job.positions,
            job.options,
            job.progress,
            job.parent_run_id,
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
        with runs.child_run(f"{self.name} · {split.name} · seed {seed}", self.parent_run_id) as run_id:
            tags = {
                **run_tags(self.name, self.dataset, split.kind, level=schema.LEVEL_SPLIT),
                schema.TAG_SPLIT: split.name,
                schema.TAG_SEED: str(seed),
                schema.TAG_CONTEXT: target.context,
                schema.TAG_PERTURBATION: target.perturbation,
                **(job.tags or {}),
            }
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
            runs.log_batch(run_id, params=logged, tags=tags)  # what the run is, before its artifacts
            if not self._split_logged:  # no parent run: the split goes with its first target instead
                self._log_split()
            if job.selection is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / schema.SELECTION_ARTIFACT
                    path.write_text(_json(job.selection))
                    runs.log_artifact(path)
            if job.history:
                runs.log_history(run_id, job.history)
            if scoring.cells is not None:
                self._log_artifacts(scoring)
            result.run_id = run_id
            result.seconds = (job.fit_seconds or 0.0) + result.seconds
            status = {schema.TAG_STATUS: result.status}
            if result.status == schema.STATUS_NOT_APPLICABLE:
                status[schema.TAG_REASON] = result.reason[:5000]
                runs.set_tags(status, run_id)
                self.progress(f"    {target.context}/{target.perturbation}: not applicable ({result.reason})")
            else:
                reference = {schema.PARAM_REFERENCE: result.reference_name} if result.reference_name else {}
                flat = {
                    **result.metrics,
                    **schema.prefixed(schema.CEILING_PREFIX, result.ceiling),
                    **schema.prefixed(schema.REFERENCE_PREFIX, result.reference),
                    **schema.prefixed(schema.ORACLE_PREFIX, result.oracle),
                    **schema.prefixed(schema.NORM_PREFIX, result.normalized),
                }
                if job.fit_seconds is not None:
                    flat[schema.FIT_SECONDS] = job.fit_seconds
                runs.log_batch(run_id, params=reference, metrics=flat, tags=status)  # its scores at once
                self.progress(
                    f"    {target.context}/{target.perturbation}: "
                    + ", ".join(f"{k}={result.metrics[k]:.3f}" for k in schema.headline_metrics())
                    + job.note
                )
        return result

    def _log_split(self) -> None:
        """Log the split (integer positions, schema.SPLITS_DIR) to its parent run, once per SplitScorer."""
        parent = self.parent_run_id or runs.active_run_id()
        if parent is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.split.save(Path(tmp) / f"{self.split.digest()}.npz", self.dataset.adata.obs_names)
                runs.log_artifact(path, schema.SPLITS_DIR, run_id=parent)
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
                    genes=self.dataset.adata.var_names,
                )
                runs.log_artifact(path, schema.FIGURES_DIR)
            if options.save_predictions:
                control = cells.control
                saved = saved_prediction(
                    cells.pred_x, cells.predicted, control, task, target, split.name, seed
                )
                pred_file = (
                    Path(tmp) / f"predictions_{safe_name(split.name)}_{safe_name(target.context)}.h5ad"
                )
                saved.write_h5ad(pred_file)
                runs.log_artifact(pred_file, schema.PREDICTIONS_DIR)
                test = take(adata, cells.test_positions)
                pair = cell_eval_pair(control, cells.control_x, test, cells.real, saved, target)
                for file, part in zip((export.REAL_FILE, export.PRED_FILE), pair, strict=True):
                    part.write_h5ad(Path(tmp) / file)
                    runs.log_artifact(Path(tmp) / file, schema.CELL_EVAL_DIR)


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
