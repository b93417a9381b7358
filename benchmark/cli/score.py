"""`bench score`: score a predictions file made by any tool exactly as `bench run` scores a predictor."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.args import (
    add_data_arguments,
    add_figure_arguments,
    add_split_argument,
    load_data,
    non_negative_int,
)
from benchmark.cli.output import check_destinations, print_locations, print_table, update_board
from benchmark.core.errors import PertbenchError

NAME = "score"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench score` and its flags."""
    score = subparsers.add_parser(
        NAME, help="score a predictions .h5ad made by any tool, exactly as `bench run` scores a predictor"
    )
    score.add_argument(
        "--predictions", type=Path, required=True, help="h5ad of predicted log-normalized cells"
    )
    score.add_argument(
        "--name", required=True, help="the predictor name its rows get in MLflow and the leaderboard"
    )
    add_data_arguments(score)
    add_split_argument(score)
    score.add_argument("--seed", type=non_negative_int, default=0, help="the split's seed >= 0 (default 0)")
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
    score.add_argument(
        "--profile",
        choices=("default", "vcc2026"),
        default="default",
        help="default: pertbench's scores; vcc2026: also the Virtual Cell Challenge 2026 score (cell-eval2's "
        "vcc2026 profile, needs raw counts for the real cells; see docs/vcc2026.md)",
    )
    add_figure_arguments(score)
    score.add_argument("--tracking-uri", default=None, help="MLflow store (as for `bench run`)")
    score.add_argument(
        "--leaderboard", type=Path, default=None, help="leaderboard .md file to update (as for `bench run`)"
    )
    score.add_argument("--no-leaderboard", action="store_true", help="do not update the leaderboard")
    return score


def cmd_score(args: argparse.Namespace) -> int:
    """Score a predictions file on a split of the real data; log it like `bench run` does."""
    from benchmark.data.splits import SPLIT_KINDS
    from benchmark.execution.options import RunOptions
    from benchmark.execution.score import read_predictions, score_predictions
    from benchmark.tracking import store as tracking

    if not args.name.strip():
        raise PertbenchError("--name must not be empty")
    check_destinations(args)
    dataset = load_data(args)
    if args.profile == "vcc2026":
        from benchmark.execution.vcc2026 import check_applies

        check_applies(dataset)
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
    print_table(result)
    if args.profile == "vcc2026":
        from benchmark.execution.vcc2026 import print_vcc2026, score_vcc2026

        print_vcc2026(score_vcc2026(dataset, kind, args.seed, predictions.groups, result))
    board = update_board(args, dataset.name)
    print_locations(args.tracking_uri, [result.parent_run_id], board, not args.no_figures, predictions=None)
    return 0
