"""`bench run`: benchmark a predictor on every split of a kind, log to MLflow, update the leaderboard."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.args import (
    add_data_arguments,
    add_figure_arguments,
    add_split_argument,
    load_data,
    non_negative_int,
    parse_param,
    parse_seeds,
    positive_int,
)
from benchmark.cli.output import check_destinations, print_locations, print_table, update_board
from benchmark.core.errors import PertbenchError

NAME = "run"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench run` and its flags."""
    run = subparsers.add_parser(NAME, help="benchmark a predictor on every split of a kind")
    run.add_argument(
        "--predictor",
        required=True,
        help="registered name (see `bench list`) or module:Class (imports that module, which runs its code)",
    )
    add_data_arguments(run)
    add_split_argument(run, extra="or all")
    seeds = run.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=non_negative_int, default=None, help="one seed >= 0 (default 0)")
    seeds.add_argument("--seeds", type=parse_seeds, default=None, help="several seeds >= 0, e.g. 0,1,2")
    run.add_argument("--perturbation", action="append", help="only hold out this perturbation (repeatable)")
    run.add_argument(
        "--param", action="append", type=parse_param, default=[], help="hyperparameter key=value"
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
    add_figure_arguments(run)
    run.add_argument(
        "--max-splits",
        type=positive_int,
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
    return run


def _build_predictor(name: str, params: dict) -> None:
    """Build the predictor once to fail fast on an unknown name, a missing optional extra or a bad hyperparameter:
    its constructor checks every value (e.g. device=cuda on a CPU-only torch) and the registry turns a rejection
    into one line."""
    from predictors.registry import check_installed, make_predictor

    check_installed(name)
    make_predictor(name, **params)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the predictor on each chosen split kind, print each parent run's table and where the results went."""
    from benchmark.data.splits import SPLIT_KINDS, SplitNotApplicable
    from benchmark.execution.model_cache import default_cache_dir
    from benchmark.execution.options import RunOptions
    from benchmark.execution.runner import run_benchmark
    from benchmark.tracking import store as tracking

    params = dict(args.param)
    config = None
    if args.config is not None:
        from benchmark.selection.config import load_config

        config = load_config(args.config, args.predictor)
    _build_predictor(args.predictor, {**(config or {}).get("params", {}), **params})
    check_destinations(args)
    dataset = load_data(args)
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
            if args.split != "all":  # the one split asked for cannot run: bad input, not a result
                raise PertbenchError(f"split {kind} does not apply to dataset {dataset.name}: {exc}") from exc
            print(f"split {kind} does not apply to dataset {dataset.name}: {exc} (not run)")
            continue
        parents.append(result.parent_run_id)
        scored += sum(r.status == "ok" for r in result.results)
        declined += [f"{r.label}: {r.reason}" for r in result.results if r.reason]
        print_table(result)
    board = update_board(args, dataset.name) if parents else None
    if parents:
        print_locations(
            args.tracking_uri, parents, board, not args.no_figures, predictions=args.save_predictions
        )
    if parents and not scored:  # an all-NaN row is not a result
        why = f"; e.g. {declined[0]}" if declined else ""
        raise PertbenchError(
            f"{args.predictor} scored no target on {dataset.name}: every target was declined{why}"
        )
    return 0
