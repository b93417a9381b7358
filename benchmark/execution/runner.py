"""Runs one predictor over every split of a kind and seed, scores it with the engine, logs it to MLflow.

Per split: fit on the training cells only (or load the cached fit), predict each held-out target from the
control cells of its context, and hand the cells to `benchmark.scoring.evaluate` (metrics, noise ceiling, reference
baseline, mean oracle, normalized scores); log everything under the names of `benchmark.tracking.schema`, and draw the
composite figure. The parent run records the configuration (predictor, hyperparameters, data checksum, split
set, whether the splits were restricted) and the `bench run` arguments that reproduce it.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anndata import AnnData

from benchmark.core import progress as bars
from benchmark.core.errors import NotApplicable
from benchmark.core.protocol import Predictor
from benchmark.core.pseudobulk import group_profiles
from benchmark.core.task import Positions
from benchmark.data.datasets import Dataset
from benchmark.data.splits import Split, Target, make_splits
from benchmark.execution.model_cache import cache_key, fit_or_load
from benchmark.execution.options import Progress, RunOptions, RunResult, _stderr
from benchmark.execution.provenance import (
    _config_digest,
    _config_record,
    _configuration,
    _provenance,
    _restricted,
    _run_name,
    log_summary,
    run_tags,
)
from benchmark.execution.scorer import PredictFn, SplitJob, SplitScorer, score_threads
from benchmark.scoring.embedding import PCAEmbedding
from benchmark.scoring.evaluate import (
    TargetResult,
)
from benchmark.selection.config import dump_toml, split_params
from benchmark.tracking import runs, schema
from benchmark.tracking import store as tracking
from predictors.registry import make_predictor


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

    results: list[TargetResult] = []
    total = sum(len(v) for v in splits_by_seed.values())
    with parent_frame(dataset, record.run_name, record.tags, record.params, total) as frame:
        parent_id = frame.parent_id
        if options.config is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / schema.CONFIG_ARTIFACT
                path.write_text(dump_toml(options.config), encoding="utf-8")
                runs.log_artifact(path, run_id=parent_id)
        done = 0
        for seed, splits in splits_by_seed.items():
            for split in splits:
                done += 1
                progress(f"[{done}/{total}] seed {seed} split {split.name}: fitting {display_name}")
                job = frame.job(display_name, dataset, split, seed, options, progress)
                results += _run_split(job, templates.get(split.digest(), template))
                frame.bar.update(1)
        log_summary(parent_id, display_name, dataset, split_kind, results, options)
    return RunResult(display_name, dataset.name, split_kind, parent_id, results, skipped)


@dataclass
class ParentFrame:
    """What the splits of one parent run share: its id, the dataset's positions and group profiles, the PCA
    embeddings by split digest, and the progress bar over the splits."""

    parent_id: str
    positions: Positions
    profiles: tuple[dict, dict]
    bar: Any
    embeddings: dict[str, PCAEmbedding] = field(default_factory=dict)

    def job(
        self, name: str, dataset: Dataset, split: Split, seed: int, options: RunOptions, progress: Progress
    ) -> SplitJob:
        """One split of this parent run."""
        return SplitJob(
            name, dataset, split, seed, self.positions, options, progress, self.profiles, self.embeddings
        )


@contextlib.contextmanager
def parent_frame(
    dataset: Dataset, run_name: str, tags: dict[str, str], params: dict[str, Any], n_splits: int
) -> Iterator[ParentFrame]:
    """The frame of a parent run, the same for `bench run` and `bench score`: the dataset's experiment, the
    parent run with its tags, params and dataset input, and a progress bar over its splits."""
    tracking.experiment_for(dataset.name)
    positions = Positions(dataset.adata.obs_names)
    profiles = group_profiles(dataset.adata, dataset.task)  # real Δ of every group, for `others`
    with tracking.parent_run(run_name) as parent:
        parent_id = parent.info.run_id
        runs.log_batch(parent_id, params=params, tags=tags)
        tracking.log_dataset(dataset.name, dataset.checksum, dataset.source)
        with bars.bar(n_splits, "splits", "splits") as bar:
            yield ParentFrame(parent_id, positions, profiles, bar)


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
    job = SplitJob(
        display_name,
        dataset,
        split,
        seed,
        positions,
        options,
        progress,
        profiles,
        parent_run_id=parent_run_id,
    )
    return _run_split(job, template)


def _run_split(job: SplitJob, template: Predictor) -> list[TargetResult]:
    """Fit once on the split's training cells, then predict and score each of its targets in a child run (of the
    active run, or of `parent_run_id`)."""
    name, dataset, split, seed, options = job.name, job.dataset, job.split, job.seed, job.options
    train = dataset.adata[
        job.positions.of(split.train_cells)
    ]  # a view: predictors read it, nothing is copied
    scorer = SplitScorer.prepare(job, train)
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
