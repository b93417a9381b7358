"""The provenance record of a run: the parent run's tags and params (configuration, data, how hyperparameters
were chosen), the `bench run` arguments that reproduce it, and the one-line summary."""

from __future__ import annotations

import ast
import hashlib
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import benchmark
from benchmark.core.errors import PertbenchError
from benchmark.core.files import plugin_pythonpath, shown_path
from benchmark.core.protocol import Predictor
from benchmark.data.datasets import SYNTHETIC, Dataset, get_card
from benchmark.data.splits import Split
from benchmark.execution.options import RunOptions
from benchmark.reports.figures import summary_figure
from benchmark.scoring.evaluate import (
    TargetResult,
)
from benchmark.scoring.metrics import METRICS
from benchmark.selection.config import config_digest
from benchmark.selection.tuning import CHOOSE_DEFAULTS_PROTOCOL
from benchmark.tracking import runs, schema
from benchmark.tracking import store as tracking
from predictors.registry import CHOSEN_DEFAULTS, available_predictors, leave_out_choice, make_predictor


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
    split_set = split_set_digest(splits_by_seed)
    args = ["--predictor", predictor_name, *dataset_cli_args(dataset), "--split", split_kind]
    if options.config is not None:
        args += ["--config", shown_path(options.config_source)]
    seeds = ",".join(map(str, options.seeds))
    args += ["--seeds", seeds] if len(options.seeds) > 1 else ["--seed", seeds]
    overrides = changed if options.config is None else options.params  # a config brings its own params
    for key, value in overrides.items():
        args += ["--param", f"{key}={param_text(value)}"]
    for pert in options.perturbations or ():
        args += ["--perturbation", pert]
    if options.max_splits is not None:
        args += ["--max-splits", str(options.max_splits)]
    pythonpath = plugin_pythonpath(predictor_name)
    return {
        schema.PARAM_SPLIT_SET: split_set,
        schema.PARAM_CLI: shlex.join(args),
        schema.PARAM_CLI_PARAMS: ", ".join(f"{k}={param_text(v)}" for k, v in changed.items()),
        **({schema.PARAM_CLI_ENV: f"PYTHONPATH={shlex.quote(pythonpath)}"} if pythonpath else {}),
    }


def split_set_digest(splits_by_seed: dict[int, list[Split]]) -> str:
    """One digest of the splits a run scores, seed by seed (runs of the same split set share it)."""
    payload = [[seed, [s.digest() for s in splits]] for seed, splits in splits_by_seed.items()]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


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
    args = ["--data", shown_path(source) if source.exists() else str(source)]
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
    runs.set_tags(
        {
            schema.TAG_N_SCORED: str(len(scored)),
            schema.TAG_N_NOT_APPLICABLE: str(len(results) - len(scored)),
        },
        parent_id,
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
                references={
                    name: pd.DataFrame([getattr(r, name) for r in scored], index=table.index)
                    for name in ("reference", "oracle", "ceiling")
                    if all(getattr(r, name) for r in scored)
                },
            )
            runs.log_artifact(path, schema.FIGURES_DIR, run_id=parent_id)
