"""`bench leaderboard`: regenerate the markdown leaderboard (and optionally a README block) from the MLflow store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.output import check_board_path, print_verdicts

NAME = "leaderboard"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench leaderboard` and its flags."""
    board = subparsers.add_parser(NAME, help="regenerate the markdown leaderboard from the MLflow store")
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
    return board


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Reap runs of dead processes where the store is writable, then write the leaderboard."""
    from benchmark.reports.leaderboard import default_board_path, write_leaderboard
    from benchmark.tracking import store as tracking

    check_board_path(args.output, "--output", force=args.force)
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
        report=print_verdicts,
    )
    print(f"leaderboard written: {path}")
    return 0
