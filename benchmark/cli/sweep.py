"""`bench sweep`: run a grid of predictors, datasets, split kinds, seeds and params from a TOML/YAML file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.args import positive_int
from benchmark.execution.executors import EXECUTORS

NAME = "sweep"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench sweep`; its --executor choices are the executor registry's names."""
    sweep = subparsers.add_parser(
        NAME,
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
        "--max-splits", type=positive_int, default=None, help="only the first N >= 1 splits of each seed"
    )
    sweep.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: the file's store, else as `bench run`)"
    )
    sweep.add_argument("--no-leaderboard", action="store_true", help="do not regenerate the leaderboard")
    sweep.add_argument("--dry-run", action="store_true", help="check the file and list its parent runs only")
    return sweep


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
