"""The `bench` command: run a benchmark, score a predictions file, regenerate the leaderboard, list what exists."""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import math
import os
import sys
import warnings
from pathlib import Path

from benchmark.core.allocator import keep_freed_memory
from benchmark.core.errors import PertbenchError
from benchmark.core.files import file_to_write, safe_name
from benchmark.execution.executors import EXECUTORS, is_http

DEFAULT_DATASET = "kang2018"
DEFAULT_CONTROLS = 10_000
"""`bench make-synthetic`'s control cells per context when --controls is not given (Replogle K562: ~10,000)."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors raised as one-line PertbenchErrors instead of usage text and SystemExit."""

    def error(self, message: str):  # type: ignore[override]
        raise PertbenchError(f"{message} (see `{self.prog} --help`)")


def _non_negative_int(text: str) -> int:
    """A seed: an integer >= 0 (numpy and torch seeds cannot be negative)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    """A count that must be at least 1 (e.g. --max-splits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _parse_seeds(text: str) -> tuple[int, ...]:
    """Comma-separated seeds, each an integer >= 0."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must be integers >= 0 separated by commas, got {text!r}"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"seeds must be integers >= 0, got {negative[0]}")
    return seeds


def _parse_param(text: str) -> tuple[str, object]:
    """`key=value` with value read as a Python literal when it is one (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param takes key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The real data: a dataset card, or any h5ad file with its keys (`bench run` and `bench score`)."""
    parser.add_argument("--dataset", default=None, help=f"dataset card name (default {DEFAULT_DATASET})")
    parser.add_argument("--data", type=Path, help="any .h5ad file instead of a dataset card")
    parser.add_argument("--perturbation-key", help="obs column of perturbation labels (with --data)")
    parser.add_argument("--control", help="control label in that column (with --data)")
    parser.add_argument("--context-key", help="obs column of contexts, e.g. cell type (with --data)")
    parser.add_argument(
        "--expression", choices=["lognorm", "counts"], default="lognorm", help="what X holds (with --data)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Benchmark single-cell perturbation-response predictors.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="benchmark a predictor on every split of a kind")
    run.add_argument(
        "--predictor",
        required=True,
        help="registered name (see `bench list`) or module:Class (imports that module, which runs its code)",
    )
    _add_data_arguments(run)
    run.add_argument(
        "--split",
        default=None,
        help="a split kind (`bench list` shows them), or all (default: the dataset's)",
    )
    seeds = run.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_non_negative_int, default=None, help="one seed >= 0 (default 0)")
    seeds.add_argument("--seeds", type=_parse_seeds, default=None, help="several seeds >= 0, e.g. 0,1,2")
    run.add_argument("--perturbation", action="append", help="only hold out this perturbation (repeatable)")
    run.add_argument(
        "--param", action="append", type=_parse_param, default=[], help="hyperparameter key=value"
    )
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a `bench tune` config: each split's hyperparameters from it (--param on top)",
    )
    run.add_argument(
        "--save-predictions",
        action="store_true",
        help="store predicted cells as h5ad artifacts, and each target's real and predicted cells in "
        "cell-eval's input layout (cell_eval/real.h5ad, cell_eval/pred.h5ad)",
    )
    run.add_argument("--no-figures", action="store_true", help="skip the per-split and summary figures")
    run.add_argument(
        "--embedding", choices=["umap", "pca"], default="umap", help="embedding of the figure's cells"
    )
    run.add_argument(
        "--max-splits",
        type=_positive_int,
        default=None,
        help="run only the first N >= 1 splits (quick looks)",
    )
    run.add_argument(
        "--cache-dir", type=Path, default=None, help="fitted-model cache (default .pertbench/models)"
    )
    run.add_argument(
        "--no-cache", action="store_true", help="always refit, never read or write the model cache"
    )
    run.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    run.add_argument(
        "--leaderboard",
        type=Path,
        default=None,
        help="leaderboard .md file to update after the run (default .pertbench/LEADERBOARD.md)",
    )
    run.add_argument("--no-leaderboard", action="store_true", help="do not update the leaderboard")

    tune = sub.add_parser(
        "tune", help="choose hyperparameters on validation splits of training cells only; write a config"
    )
    tune.add_argument("--predictor", required=True, help="a predictor that declares a search_space")
    tune.add_argument("--dataset", default=None, help=f"dataset card name (default {DEFAULT_DATASET})")
    tune.add_argument("--data", type=Path, help="any .h5ad file instead of a dataset card")
    tune.add_argument("--perturbation-key", help="obs column of perturbation labels (with --data)")
    tune.add_argument("--control", help="control label in that column (with --data)")
    tune.add_argument("--context-key", help="obs column of contexts (with --data)")
    tune.add_argument("--expression", choices=["lognorm", "counts"], default="lognorm")
    tune.add_argument(
        "--split", default=None, help="a split kind (`bench list` shows them; default: the dataset's)"
    )
    tune.add_argument(
        "--trials", type=_positive_int, default=None, help="Optuna trials per block (default 20)"
    )
    tune.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of splits and sampler (default 0)"
    )
    tune.add_argument(
        "--objective", default=None, help="metric to optimize, direction from its registry (default r)"
    )
    tune.add_argument(
        "--folds", type=_positive_int, default=None, help="holdout_combo: blocks of combinations (default 5)"
    )
    tune.add_argument(
        "--max-validation-splits",
        type=_positive_int,
        default=None,
        help="fits per trial and block, a seeded subset (default 20)",
    )
    tune.add_argument(
        "--storage",
        default=None,
        help="Optuna storage (default PERTBENCH_OPTUNA_STORAGE or .pertbench/optuna.db)",
    )
    tune.add_argument(
        "--output", type=Path, default=None, help="config file (default .pertbench/configs/P_D_SPLIT.toml)"
    )

    score = sub.add_parser(
        "score", help="score a predictions .h5ad made by any tool, exactly as `bench run` scores a predictor"
    )
    score.add_argument(
        "--predictions", type=Path, required=True, help="h5ad of predicted log-normalized cells"
    )
    score.add_argument(
        "--name", required=True, help="the predictor name its rows get in MLflow and the leaderboard"
    )
    _add_data_arguments(score)
    score.add_argument(
        "--split", default=None, help="a split kind (`bench list` shows them; default: the dataset's)"
    )
    score.add_argument("--seed", type=_non_negative_int, default=0, help="the split's seed >= 0 (default 0)")
    score.add_argument(
        "--prediction-perturbation-key",
        default=None,
        help="obs column of the file's perturbation labels (default perturbation, else cell-eval's target_gene)",
    )
    score.add_argument(
        "--prediction-context-key",
        default=None,
        help="obs column of the file's contexts (default context, else the dataset's context column)",
    )
    score.add_argument("--no-figures", action="store_true", help="skip the per-split and summary figures")
    score.add_argument(
        "--embedding", choices=["umap", "pca"], default="umap", help="embedding of the figure's cells"
    )
    score.add_argument("--tracking-uri", default=None, help="MLflow store (as for `bench run`)")
    score.add_argument(
        "--leaderboard", type=Path, default=None, help="leaderboard .md file to update (as for `bench run`)"
    )
    score.add_argument("--no-leaderboard", action="store_true", help="do not update the leaderboard")

    board = sub.add_parser("leaderboard", help="regenerate the markdown leaderboard from the MLflow store")
    board.add_argument(
        "--output",
        type=Path,
        default=None,
        help="leaderboard .md file (default .pertbench/LEADERBOARD.md for the default store, "
        ".pertbench/boards/<store>.md for another; `make leaderboard` writes the committed leaderboard/LEADERBOARD.md)",
    )
    board.add_argument("--tracking-uri", default=None)
    board.add_argument(
        "--no-figures", action="store_true", help="do not copy figures next to the leaderboard"
    )
    board.add_argument("--readme", type=Path, default=None, help="also regenerate this file's results block")
    board.add_argument(
        "--force",
        action="store_true",
        help="replace --output (and same-named figures) even when bench did not write them",
    )

    sweep = sub.add_parser(
        "sweep",
        help="run a grid (predictors x datasets x split kinds x seeds x params) from a TOML/YAML file",
    )
    sweep.add_argument("file", type=Path, help="the sweep file (.toml, .yaml or .yml)")
    sweep.add_argument(
        "--executor",
        choices=list(EXECUTORS),
        default="serial",
        help="where tasks run: a registered executor (default serial)",
    )
    sweep.add_argument("--address", default=None, help="Ray cluster to join (default: start one here)")
    sweep.add_argument(
        "--max-splits", type=_positive_int, default=None, help="only the first N >= 1 splits of each seed"
    )
    sweep.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: the file's store, else as `bench run`)"
    )
    sweep.add_argument("--no-leaderboard", action="store_true", help="do not regenerate the leaderboard")
    sweep.add_argument("--dry-run", action="store_true", help="check the file and list its parent runs only")

    sub.add_parser("list", help="show predictors, datasets, split kinds and metrics")
    from benchmark.envs.command import add_parser as add_env_parser

    add_env_parser(sub)

    synth = sub.add_parser("make-synthetic", help="write a large synthetic count .h5ad, chunk by chunk")
    synth.add_argument("--cells", type=int, required=True, help="total cells (controls included)")
    synth.add_argument("--genes", type=int, required=True)
    synth.add_argument("--perturbations", type=int, required=True, help="perturbations per context")
    synth.add_argument(
        "--controls",
        type=int,
        default=None,
        help=f"control cells per context (default {DEFAULT_CONTROLS:,}, at most a tenth of the context's cells)",
    )
    synth.add_argument("--contexts", type=int, default=1)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True, help="the .h5ad file to write")
    return parser


def cmd_list(_: argparse.Namespace) -> int:
    from benchmark.data.datasets import list_cards
    from benchmark.data.splits import SPLIT_KINDS
    from benchmark.scoring.metrics import METRICS
    from predictors.registry import available_predictors

    print("predictors:")
    for name, spec in available_predictors().items():
        print(f"  {name:<14} {spec.summary}  [{spec.target}{' ' + str(spec.params) if spec.params else ''}]")
    print("datasets:")
    for card in list_cards():
        print(f"  {card.name:<16} {card.expression:<8} default split {card.default_split:<16} {card.summary}")
    print(
        "  synthetic        counts   default split holdout_context  NB counts made in code with known effects"
    )
    print("split kinds:")
    for kind in SPLIT_KINDS.values():
        print(f"  {kind.name:<16} {kind.description}")
    print("metrics (↑ higher is better, ↓ lower is better, →0 best at 0):")
    for metric in METRICS.values():
        arrow = {True: "↑", False: "↓", None: "→0"}[metric.higher_is_better]
        print(f"  {metric.name:<22} {arrow:<2} {metric.kind:<12} {metric.description}")
    return 0


def _load(args: argparse.Namespace):
    from benchmark.data.datasets import load_dataset, load_h5ad

    if args.data is not None:
        if args.dataset:
            raise PertbenchError("give either --dataset or --data, not both")
        if not args.perturbation_key or not args.control:
            raise PertbenchError("--data needs --perturbation-key and --control")
        return load_h5ad(args.data, args.perturbation_key, args.control, args.context_key, args.expression)
    return load_dataset(args.dataset or DEFAULT_DATASET)


def _check_board_path(path: Path | None, flag: str, force: bool = False) -> None:
    """A leaderboard path must name a file: a directory is a one-line error (nothing is written into it)."""
    if path is not None:
        from benchmark.reports.leaderboard import check_board_path

        check_board_path(path, force=force, what=flag)


def _build_predictor(name: str, params: dict) -> None:
    """Build the predictor once to fail fast on an unknown name, a missing optional extra or a bad hyperparameter:
    its constructor checks every value (e.g. device=cuda on a CPU-only torch) and the registry turns a rejection
    into one line."""
    from predictors.registry import check_installed, make_predictor

    check_installed(name)
    make_predictor(name, **params)


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.data.splits import SPLIT_KINDS, SplitNotApplicable
    from benchmark.execution.model_cache import default_cache_dir
    from benchmark.execution.options import RunOptions
    from benchmark.execution.runner import run_benchmark
    from benchmark.reports.leaderboard import default_board_path, write_leaderboard
    from benchmark.tracking import store as tracking

    params = dict(args.param)
    config = None
    if args.config is not None:
        from benchmark.selection.tuning import load_config

        config = load_config(args.config, args.predictor)
    _build_predictor(args.predictor, {**(config or {}).get("params", {}), **params})
    tracking.check_uri(tracking.tracking_uri(args.tracking_uri))
    if not args.no_leaderboard:
        _check_board_path(args.leaderboard, "--leaderboard")
    dataset = _load(args)
    tuned = (config or {}).get("tuning", {})
    if config is not None and tuned.get("dataset_checksum", dataset.checksum) != dataset.checksum:
        raise PertbenchError(
            f"config {args.config} was tuned on dataset {tuned.get('dataset', '?')} with other cells "
            f"(checksum {str(tuned.get('dataset_checksum'))[:12]}…), not on {dataset.name}"
        )
    kinds = (
        SPLIT_KINDS
        if args.split == "all"
        else (args.split or tuned.get("split_kind") or dataset.default_split,)
    )
    unknown = [k for k in kinds if k not in SPLIT_KINDS]
    if unknown:
        raise PertbenchError(f"unknown split kind {unknown[0]!r}; known kinds: {', '.join(SPLIT_KINDS)}, all")
    tracking.use_store(args.tracking_uri)
    tracking.reap_dead_runs()
    seeds = args.seeds or ((args.seed,) if args.seed is not None else (0,))
    options = RunOptions(
        seeds=seeds,
        params=params,
        perturbations=tuple(args.perturbation) if args.perturbation else None,
        save_predictions=args.save_predictions,
        figures=not args.no_figures,
        embedding=args.embedding,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
        max_splits=args.max_splits,
        config=config,
        config_source=str(args.config.resolve()) if args.config is not None else "",
    )
    parents, scored, declined = [], 0, []
    for kind in kinds:
        try:
            result = run_benchmark(args.predictor, dataset, kind, options)
        except SplitNotApplicable as exc:
            print(f"split {kind} does not apply to dataset {dataset.name}: {exc} (not run)")
            continue
        parents.append(result.parent_run_id)
        scored += sum(r.status == "ok" for r in result.results)
        declined += [f"{r.label}: {r.reason}" for r in result.results if r.reason]
        _print_table(result)
    board = None
    if parents and not args.no_leaderboard:
        board = write_leaderboard(
            args.leaderboard or default_board_path(args.tracking_uri), args.tracking_uri
        )
        print(f"leaderboard updated: {board}")
    if parents:
        _print_locations(
            args.tracking_uri, parents, board, not args.no_figures, predictions=args.save_predictions
        )
    if parents and not scored:  # an all-NaN row is not a result
        why = f"; e.g. {declined[0]}" if declined else ""
        raise PertbenchError(
            f"{args.predictor} scored no target on {dataset.name}: every target was declined{why}"
        )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score a predictions file on a split of the real data; log it like `bench run` does."""
    from benchmark.data.splits import SPLIT_KINDS
    from benchmark.execution.options import RunOptions
    from benchmark.execution.score import read_predictions, score_predictions
    from benchmark.reports.leaderboard import default_board_path, write_leaderboard
    from benchmark.tracking import store as tracking

    if not args.name.strip():
        raise PertbenchError("--name must not be empty")
    tracking.check_uri(tracking.tracking_uri(args.tracking_uri))
    if not args.no_leaderboard:
        _check_board_path(args.leaderboard, "--leaderboard")
    dataset = _load(args)
    kind = args.split or dataset.default_split
    if kind not in SPLIT_KINDS:
        raise PertbenchError(f"unknown split kind {kind!r}; known kinds: {', '.join(SPLIT_KINDS)}")
    predictions = read_predictions(
        args.predictions, dataset, args.prediction_perturbation_key, args.prediction_context_key, args.seed
    )
    tracking.use_store(args.tracking_uri)
    tracking.reap_dead_runs()
    options = RunOptions(seeds=(args.seed,), figures=not args.no_figures, embedding=args.embedding)
    result = score_predictions(predictions, args.name, dataset, kind, args.seed, options)
    _print_table(result)
    board = None
    if not args.no_leaderboard:
        board = write_leaderboard(
            args.leaderboard or default_board_path(args.tracking_uri), args.tracking_uri
        )
        print(f"leaderboard updated: {board}")
    _print_locations(args.tracking_uri, [result.parent_run_id], board, not args.no_figures, predictions=None)
    return 0


def _absolute_uri(uri: str) -> str:
    """A SQLite store URI with an absolute path, so the printed `mlflow ui` command works from any folder."""
    from benchmark.tracking.store import sqlite_path

    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return uri.replace(str(path), str(path.resolve()), 1)


def _print_locations(
    tracking_uri: str | None,
    parent_ids: list[str],
    board: Path | None,
    figures: bool = True,
    predictions: bool | None = False,
) -> None:
    """Where the run went: the MLflow store, the figures and predictions (artifacts of the parent and split runs),
    the leaderboard, and the command that opens the MLflow UI on the experiment's runs."""

    import mlflow

    from benchmark.tracking import schema
    from benchmark.tracking import store as tracking

    uri = _absolute_uri(tracking.tracking_uri(tracking_uri))
    print("\nwhere it went:")
    print(f"  MLflow store:  {uri}")
    experiments = []
    for parent_id in parent_ids:
        parent = mlflow.get_run(parent_id)
        experiments.append(parent.info.experiment_id)
        artifacts = _local(parent.info.artifact_uri)
        runs = artifacts.rsplit("/", 2)[0] if artifacts.endswith("/artifacts") else f"{artifacts}/.."
        split_artifacts = f"{runs}/<split_run_id>/artifacts"
        tags = parent.data.tags
        n = sum(int(tags.get(t, 0)) for t in (schema.TAG_N_SCORED, schema.TAG_N_NOT_APPLICABLE))
        print(f"  parent run:    {tags.get(schema.TAG_RUN_NAME, '')} ({parent_id})")
        print(
            f"  artifacts:     {artifacts} (parent run: each split once in {schema.SPLITS_DIR}/<split digest>.npz)"
        )
        print(f"  split runs:    {split_artifacts} ({n} split run{'' if n == 1 else 's'})")
        if figures:
            print(f"  figures:       {artifacts}/{schema.FIGURES_DIR}/{schema.SUMMARY_FIGURE} (summary)")
            print(
                f"                 {split_artifacts}/{schema.FIGURES_DIR}/{schema.COMPOSITE_FIGURE} (each split)"
            )
        else:
            print("  figures:       (none: --no-figures)")
        if predictions:
            print(f"  predictions:   {split_artifacts}/{schema.PREDICTIONS_DIR}/*.h5ad (each split)")
            print(
                f"  cell-eval:     {split_artifacts}/{schema.CELL_EVAL_DIR}/{{real,pred}}.h5ad (each split)"
            )
        elif predictions is not None:
            print("  predictions:   (not saved; add --save-predictions)")
    print(f"  leaderboard:   {Path(board).resolve() if board is not None else '(not updated)'}")
    pages = [schema.runs_page_path(e) for e in dict.fromkeys(experiments)]
    if is_http(uri):
        for page in pages:
            print(f"  browse:        {uri.rstrip('/')}{page}")
    else:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        command = str(mlflow_bin) if mlflow_bin.is_file() else "mlflow"
        print(f"  browse:        {command} ui --backend-store-uri {uri} --port {UI_PORT}")
        for page in pages:
            print(f"                 then open http://127.0.0.1:{UI_PORT}{page}")


UI_PORT = 5000
"""The port of the printed `mlflow ui` command (MLflow's default)."""


def _local(uri: str) -> str:
    """A file:// URI as a plain path (other URIs unchanged)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _print_table(result) -> None:
    import pandas as pd

    from benchmark.tracking.schema import headline_metrics

    table = result.table()
    shown = [c for c in ("split", "seed", "status", *headline_metrics()) if c in table]
    print(
        f"\n{result.predictor} on {result.dataset} · {result.split_kind} (MLflow parent run {result.parent_run_id})"
    )
    with pd.option_context(
        "display.width", 200, "display.max_rows", 500, "display.float_format", "{:.3f}".format
    ):
        print(table[shown].to_string(index=False))
        scored = table[table["status"] == "ok"]
        if len(scored):
            means = {c: scored[c].mean() for c in shown[3:]}
            print(
                "mean   "
                + "  ".join(f"{k}={'NaN' if math.isnan(v) else f'{v:.3f}'}" for k, v in means.items())
            )
    n_na = int((table["status"] != "ok").sum())
    if n_na:
        print(f"{n_na} target(s) not applicable to {result.predictor} (reasons in the table's MLflow runs)")


def cmd_tune(args: argparse.Namespace) -> int:
    """Search the predictor's space on validation splits of training cells only and write the config."""
    from benchmark.core import progress as bars
    from benchmark.selection import tuning

    tuning.search_space(args.predictor)  # fail fast: unknown or not tunable
    objective = args.objective or tuning.DEFAULT_OBJECTIVE
    tuning.direction(objective)
    dataset = _load(args)
    kind = args.split or dataset.default_split
    stem = safe_name(f"{args.predictor}_{dataset.name}_{kind}")
    output = file_to_write(
        args.output or Path(".pertbench/configs") / f"{stem}.toml", "--output", ".toml file"
    )
    config = tuning.tune(
        args.predictor,
        dataset,
        kind,
        trials=args.trials or tuning.DEFAULT_TRIALS,
        seed=args.seed,
        objective=objective,
        storage=args.storage,
        folds=args.folds or tuning.DEFAULT_FOLDS,
        max_validation=args.max_validation_splits or tuning.MAX_VALIDATION_SPLITS,
        progress=bars.write,  # lines above the CVAE's epoch bar
    )
    path = tuning.write_config(config, output)
    print(f"config written: {path} ({len(config['blocks'])} block(s), protocol {tuning.PROTOCOL})")
    print(f"bench run --predictor {args.predictor} --config {path}" + _data_hint(args, dataset))
    return 0


def _data_hint(args: argparse.Namespace, dataset) -> str:
    """The data arguments of the tune command, for the printed `bench run` line."""
    from benchmark.execution.provenance import dataset_cli_args

    return " " + " ".join(dataset_cli_args(dataset)) + (f" --seed {args.seed}" if args.seed else "")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep file's grid (benchmark.execution.sweep, benchmark.execution.sweep_run) on the chosen executor."""
    from benchmark.execution.sweep import load_sweep
    from benchmark.execution.sweep_run import run_sweep, summary_table

    sweep = load_sweep(args.file, import_code=not args.dry_run)
    if args.dry_run:
        for group in sweep.groups:
            print(f"{group.label()} · seeds {','.join(map(str, group.seeds))}")
        print(f"{len(sweep.groups)} parent run(s)")
        return 0
    result = run_sweep(
        sweep,
        args.executor,
        args.address,
        args.tracking_uri,
        args.max_splits,
        leaderboard=not args.no_leaderboard,
    )
    print(summary_table(result))
    if result.board is not None:
        print(f"leaderboard updated: {result.board}")
    for outcome in result.failed:
        print(f"failed: {outcome.key}: {outcome.error}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.reports.leaderboard import default_board_path, write_leaderboard
    from benchmark.tracking import store as tracking

    _check_board_path(args.output, "--output", force=args.force)
    tracking.use_store(args.tracking_uri)
    try:
        tracking.reap_dead_runs()
    except Exception as exc:  # a read-only store: reading a board needs no write
        if tracking.store_write_error(exc) is None:
            raise
        print(
            "bench: note: the store is read-only; runs of dead processes are left as recorded",
            file=sys.stderr,
        )
    path = write_leaderboard(
        args.output or default_board_path(args.tracking_uri),
        args.tracking_uri,
        figures=not args.no_figures,
        readme=args.readme,
        force=args.force,
    )
    print(f"leaderboard written: {path}")
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    """Write a synthetic screen of about --cells cells and print how to benchmark it."""
    from benchmark.data.splits import MIN_CELLS, RANDOM_TEST_FRACTION
    from benchmark.data.synthetic import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, write_synthetic

    if args.controls is None:  # a Replogle-like screen: many controls, capped for small files
        args.controls = max(1, min(DEFAULT_CONTROLS, args.cells // (10 * max(args.contexts, 1))))
    for name in ("cells", "genes", "perturbations", "controls", "contexts"):
        if getattr(args, name) < 1:
            raise PertbenchError(f"--{name} must be at least 1, got {getattr(args, name)}")
    per_group = (args.cells - args.contexts * args.controls) // (args.contexts * args.perturbations)
    if per_group < 1:
        raise PertbenchError(
            f"--cells {args.cells} leaves no cells for {args.perturbations} perturbations in {args.contexts}"
            f" context(s) after {args.controls} controls each"
        )
    if args.out.suffix != ".h5ad":
        raise PertbenchError(f"--out must end in .h5ad, got {args.out}")
    path = write_synthetic(
        args.out,
        n_genes=args.genes,
        n_contexts=args.contexts,
        n_perturbations=args.perturbations,
        cells_per_group=per_group,
        n_controls=args.controls,
        seed=args.seed,
    )
    n_cells = args.contexts * (args.controls + args.perturbations * per_group)
    print(
        f"wrote {path}: {n_cells} cells x {args.genes} genes ({per_group} cells per perturbation), "
        f"{path.stat().st_size / 1e6:.1f} MB"
    )
    context = f" --context-key {CONTEXT_KEY}" if args.contexts > 1 else " --split random"
    print(
        f"bench run --predictor mean_shift --data {path} --perturbation-key {PERTURBATION_KEY}"
        f" --control {CONTROL}{context} --expression counts"
    )
    held_out = round(RANDOM_TEST_FRACTION * per_group)
    if args.contexts == 1 and held_out < MIN_CELLS:
        print(
            f"note: the random split holds out {held_out} of {per_group} cells per perturbation, fewer than the "
            f"{MIN_CELLS} a target needs: use more --cells or fewer --perturbations",
            file=sys.stderr,
        )
    return 0


def _report(exc: BaseException, args: argparse.Namespace | None) -> int:
    """Print one line for an exception that is not a PertbenchError; return the exit code."""
    try:
        from benchmark.tracking import store as tracking
    except Exception:  # noqa: BLE001 - e.g. a broken MLflow install: still one line
        text = " ".join(str(exc).split())[:300]
        print(
            f"bench: error: {type(exc).__name__}: {text} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    if isinstance(exc, tracking.Terminated):
        print("bench: terminated by SIGTERM; the run in progress was marked KILLED", file=sys.stderr)
        return 143
    if tracking.server_unreachable(exc):
        uri = tracking.tracking_uri(getattr(args, "tracking_uri", None))
        print(
            f"bench: error: the MLflow tracking server {uri} did not answer ({tracking.one_line(exc, 200)}); "
            "check that it runs, or raise MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES",
            file=sys.stderr,
        )
        return 1
    written = tracking.store_write_error(exc)
    if written is not None:
        uri = tracking.tracking_uri(getattr(args, "tracking_uri", None))
        print(
            f"bench: error: the MLflow store {uri} refused a write ({written}); the write was rolled back; "
            "free disk space or make the store writable, then rerun",
            file=sys.stderr,
        )
        return 1
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"bench: error: {exc.strerror}{where} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    print(
        f"bench: error: {type(exc).__name__}: {tracking.one_line(exc)} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bench` console script; errors print one line unless --debug.

    Exit codes: 0 done, 2 bad input (PertbenchError), 1 any other failure (store, disk, server, a bug),
    130 Ctrl-C, 143 SIGTERM (the run is marked KILLED).
    """
    from benchmark.core.redact import RedactingStream

    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)  # no password printed
    try:
        return _main(argv)
    finally:
        for wrapped in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                wrapped.flush()
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> int:
    """`main` inside the redacting streams."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore", category=FutureWarning)
    keep_freed_memory()  # large per-target arrays are reused instead of re-faulted (benchmark.core.allocator)
    args = None
    try:
        args = build_parser().parse_args(argv)
        handlers = {
            "run": cmd_run,
            "tune": cmd_tune,
            "score": cmd_score,
            "leaderboard": cmd_leaderboard,
            "sweep": cmd_sweep,
            "list": cmd_list,
            "make-synthetic": cmd_make_synthetic,
        }
        if args.command == "env":  # no MLflow store involved
            return args.env_handler(args)
        if args.command in ("list", "make-synthetic"):  # no MLflow store involved
            return handlers[args.command](args)
        from benchmark.tracking import store as tracking

        if args.debug:
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.ERROR)
        with tracking.sigterm_raises():
            return handlers[args.command](args)
    except PertbenchError as exc:
        if args is not None and args.debug:
            raise
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        if args is not None and args.debug and type(exc).__name__ != "Terminated":
            raise
        return _report(exc, args)


if __name__ == "__main__":
    sys.exit(main())
