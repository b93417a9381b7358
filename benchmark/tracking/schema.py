"""The MLflow record of a benchmark run, in one place: tag, param and metric names that runner and leaderboard share.

A `bench run` logs one parent run per (predictor, dataset, split kind) with one child run per held-out target
and seed. Child runs carry the metrics under their registry names plus prefixed companions (the target's noise
ceiling, reference baseline, mean oracle and normalized score); the parent carries each metric's mean over its
children (`mean_<metric>`, and the headline metrics under their plain names too, so the MLflow UI shows parent
and child runs in the same columns), the run's configuration (predictor, `hp.*` hyperparameters, data checksum,
split set) and the command-line arguments that reproduce it. Every run logs the dataset as an MLflow input
(name, digest, source), which fills the UI's Dataset column.
"""

from __future__ import annotations

from benchmark.scoring.metrics import METRICS

EXPERIMENT_PREFIX = "pertbench"
"""Experiments are named `pertbench/<dataset>`."""

# -- experiment tags the MLflow UI reads -----------------------------------------------------------------------

TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3 UIs that read the experiment kind open such an experiment on its training runs (not on GenAI traces)."""
UI_WORKFLOW_QUERY = "workflowType=machine_learning"
"""MLflow 3.17's UI ignores the kind tag and picks its pages from a global GenAI / Model training switch (GenAI by
default); this URL query turns it to Model training."""
VIEW_KEY = "pertbench"
TAG_SHARED_VIEW = f"mlflow.sharedViewState.{VIEW_KEY}"
"""A shared runs-table view stored on the experiment (MLflow's "share view" format): the Dataset column and the
headline metrics; opened by the `viewStateShareKey` URL query (see runs_page_path)."""

# -- tags ----------------------------------------------------------------------------------------------------

TAG_LEVEL = "pertbench.level"
TAG_PREDICTOR = "pertbench.predictor"
TAG_DATASET = "pertbench.dataset"
TAG_SPLIT_KIND = "pertbench.split_kind"
TAG_SPLIT = "pertbench.split"
TAG_SEED = "pertbench.seed"
TAG_CONTEXT = "pertbench.context"
TAG_PERTURBATION = "pertbench.perturbation"
TAG_MODEL_CACHE = "pertbench.model_cache"
TAG_STATUS = "pertbench.status"
TAG_REASON = "pertbench.reason"
TAG_N_SCORED = "pertbench.n_scored"
TAG_N_NOT_APPLICABLE = "pertbench.n_not_applicable"
TAG_PARTIAL = "pertbench.partial"
"""'true' on a parent run whose splits were restricted (--max-splits, --perturbation), else 'false'."""
TAG_CONFIG = "pertbench.config"
"""Digest of predictor, hyperparameters, data checksum, split kind and split set: runs with equal digests are
repeats of one configuration."""
TAG_HOST, TAG_PID, TAG_PROC_START = "pertbench.host", "pertbench.pid", "pertbench.proc_start"
"""Where the parent run's process lives, so a later command can mark the runs of a dead process KILLED."""
TAG_SOURCE = "pertbench.source"
"""Where the predicted cells came from: 'run' (a predictor fitted by `bench run`) or 'score' (a predictions file
scored by `bench score`); runs without the tag are 'run'."""
SOURCE_RUN, SOURCE_SCORE = "run", "score"
TAG_SWEEP_KEY = "pertbench.sweep_key"
"""On a parent run made by `bench sweep`: the digest of its grid entry, so a restarted sweep finds and resumes it."""
TAG_RUN_NAME = "mlflow.runName"
TAG_PARENT_RUN = "mlflow.parentRunId"

LEVEL_PARENT, LEVEL_SPLIT = "parent", "split"
STATUS_OK, STATUS_NOT_APPLICABLE = "ok", "not_applicable"
TRUE, FALSE = "true", "false"

# -- params --------------------------------------------------------------------------------------------------

PARAM_PREDICTOR = "predictor"
PARAM_PREDICTOR_CLASS = "predictor_class"
HP_PREFIX = "hp."
"""Hyperparameters as the predictor's get_params() reports them: `hp.<name>`."""
PARAM_DATASET = "dataset"
PARAM_DATASET_CHECKSUM = "dataset_checksum"
PARAM_DATASET_SOURCE = "dataset_source"
PARAM_SPLIT_KIND = "split_kind"
PARAM_VERSION = "pertbench_version"
PARAM_GIT_COMMIT = "git_commit"
PARAM_SEEDS = "seeds"
PARAM_N_SPLITS = "n_splits"
PARAM_SPLIT_SET = "split_set"
"""Digest of every (seed, split digest) the parent run covered."""
PARAM_PARTIAL = "partial"
PARAM_CLI = "cli_args"
"""The arguments that reproduce the parent run: of `bench run` (data arguments, non-default --param, seeds), or
of `bench score` when the run's source tag is 'score'."""
PARAM_PREDICTIONS_FILE = "predictions_file"
PARAM_PREDICTIONS_CHECKSUM = "predictions_checksum"
"""A `bench score` run's predictions file and its SHA-256."""
PARAM_CLI_PARAMS = "cli_params"
PARAM_CLI_ENV = "cli_env"
"""The environment a Reproduce line needs before `bench` (the PYTHONPATH of a module:Class plug-in), if any."""
"""The hyperparameters that differ from the registered defaults, as `k=v` joined by ', ' (row labels)."""
PARAM_SEED = "seed"
PARAM_SPLIT = "split"
PARAM_SPLIT_DIGEST = "split_digest"
PARAM_MODEL_CACHE_KEY = "model_cache_key"
PARAM_N_TRAIN, PARAM_N_TEST, PARAM_N_CONTROL = "n_train_cells", "n_test_cells", "n_control_cells"
PARAM_N_OTHERS = "n_other_groups"
PARAM_REFERENCE = "reference"
"""The reference baseline that anchors the normalized scores of a target (mean_shift, or additive)."""
PARAM_SELECTION = "selection"
"""A short form of the predictor's `selection_` (how its configuration was chosen), when it has one."""
PARAM_CONFIG_SOURCE = "config.source"
"""Where the run's configuration came from: a `bench tune` config file, or "defaults" (+ " + --param")."""
PARAM_CONFIG_PROTOCOL = "config.protocol"
"""How that configuration was chosen (benchmark.selection.tuning.PROTOCOL), or "none" for the registered defaults."""
PARAM_CONFIG_OBJECTIVE = "config.objective"
PARAM_CONFIG_DIGEST = "config.digest"
PER_SPLIT = "per split"
"""A parent's `hp.*` value when a config gives the splits different values (each child logs its own)."""
CONFIG_ARTIFACT = "config.toml"
SELECTION_ARTIFACT = "selection.json"
SPLITS_DIR = "splits"
"""Parent-run artifact folder holding each split once, as `<split digest>.npz` (benchmark.data.splits.Split.save)."""


def split_artifact(digest: str) -> str:
    """The parent-run artifact path of the split with this digest (its children log the digest as a param)."""
    return f"{SPLITS_DIR}/{digest}.npz"


FIGURES_DIR = "figures"
COMPOSITE_FIGURE, SUMMARY_FIGURE = "composite.png", "summary.png"
"""Under FIGURES_DIR: each split run's composite figure, the parent run's summary figure."""
PREDICTIONS_DIR = "predictions"
CELL_EVAL_DIR = "cell_eval"
"""A child run's real.h5ad and pred.h5ad in cell-eval's input layout (benchmark.data.export), with --save-predictions."""
SELECTION_PARAM_CHARS = 250

# -- dataset input ------------------------------------------------------------------------------------------

DATASET_CONTEXT = "benchmark"
"""The `mlflow.data.context` of the logged dataset: it gives both the training and the held-out cells."""
DATASET_DIGEST_CHARS = 16
"""The dataset input's digest: the first characters of the data checksum (MLflow stores at most 36)."""

# -- metrics -------------------------------------------------------------------------------------------------

CEILING_PREFIX = "ceiling_"
REFERENCE_PREFIX = "reference_"
ORACLE_PREFIX = "oracle_"
NORM_PREFIX = "norm_"
MEAN_PREFIX = "mean_"
FIT_SECONDS = "fit_seconds"

ORACLE = "mean_oracle"
"""The reference row 'held-out control cells + the true mean shift': what the mean alone explains."""
CEILING = "noise ceiling"

HEADLINE_METRICS = (
    "r",
    "jaccard_100",
    "energy_distance",
    "energy_distance_shape",
    "crps_deg100",
    "discrimination",
    "var_ratio",
)
"""The metrics shown where space is short (CLI table, progress line, README block), those registered."""


def headline_metrics() -> list[str]:
    """HEADLINE_METRICS that are registered, in that order (the registry decides what exists)."""
    return [m for m in HEADLINE_METRICS if m in METRICS]


def shared_view_state() -> dict:
    """The runs-table view of TAG_SHARED_VIEW: columns Dataset and the headline metrics, in that order."""
    columns = ["attributes.`Dataset`", *(f"metrics.`{m}`" for m in headline_metrics())]
    return {"selectedColumns": columns, "columnOrder": columns}


def runs_page_path(experiment_id: str) -> str:
    """The MLflow UI route (after the server address) of an experiment's runs table in the pertbench view."""
    return f"/#/experiments/{experiment_id}/runs?{UI_WORKFLOW_QUERY}&viewStateShareKey={VIEW_KEY}"


def prefixed(prefix: str, scores: dict[str, float]) -> dict[str, float]:
    """Scores renamed `<prefix><metric>` for logging."""
    return {f"{prefix}{k}": v for k, v in scores.items()}


def unprefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """Each registered metric's value under `<prefix><metric>` (NaN when absent)."""
    return {m: metrics.get(f"{prefix}{m}", float("nan")) for m in METRICS}


def parent_filter() -> str:
    """MLflow search filter for the finished parent runs."""
    return f"tags.`{TAG_LEVEL}` = '{LEVEL_PARENT}' and attributes.status = 'FINISHED'"


def children_filter(parent_id: str, status: str | None = None) -> str:
    """MLflow search filter for a parent's child runs (optionally with one status)."""
    text = f"tags.`{TAG_PARENT_RUN}` = '{parent_id}'"
    return text if status is None else f"{text} and tags.`{TAG_STATUS}` = '{status}'"
