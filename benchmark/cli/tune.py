"""`bench tune`: choose hyperparameters on validation splits of training cells only, and write a config."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.args import (
    add_data_arguments,
    add_split_argument,
    load_data,
    non_negative_int,
    positive_int,
)
from benchmark.core.files import file_to_write, safe_name

NAME = "tune"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench tune` and its flags."""
    tune = subparsers.add_parser(
        NAME, help="choose hyperparameters on validation splits of training cells only; write a config"
    )
    tune.add_argument("--predictor", required=True, help="a predictor that declares a search_space")
    add_data_arguments(tune)
    add_split_argument(tune)
    tune.add_argument(
        "--trials", type=positive_int, default=None, help="Optuna trials per block (default 20)"
    )
    tune.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of splits and sampler (default 0)"
    )
    tune.add_argument(
        "--objective", default=None, help="metric to optimize, direction from its registry (default r)"
    )
    tune.add_argument(
        "--folds", type=positive_int, default=None, help="holdout_combo: blocks of combinations (default 5)"
    )
    tune.add_argument(
        "--max-validation-splits",
        type=positive_int,
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
    return tune


def cmd_tune(args: argparse.Namespace) -> int:
    """Search the predictor's space on validation splits of training cells only and write the config."""
    from benchmark.core import progress as bars
    from benchmark.selection import tuning

    tuning.search_space(args.predictor)  # fail fast: unknown or not tunable
    objective = args.objective or tuning.DEFAULT_OBJECTIVE
    tuning.direction(objective)
    dataset = load_data(args)
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
