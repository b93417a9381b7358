"""The `bench` command: run a benchmark, regenerate the leaderboard, list what is available."""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import warnings
from pathlib import Path

from benchmark.errors import PertbenchError

DEFAULT_DATASET = "kang2018"


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must be integers separated by commas, got {text!r}"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Benchmark single-cell perturbation-response predictors."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="benchmark a predictor on every split of a kind")
    run.add_argument("--predictor", required=True, help="registered name (see `bench list`) or module:Class")
    run.add_argument("--dataset", default=None, help=f"dataset card name (default {DEFAULT_DATASET})")
    run.add_argument("--data", type=Path, help="any .h5ad file instead of a dataset card")
    run.add_argument("--perturbation-key", help="obs column of perturbation labels (with --data)")
    run.add_argument("--control", help="control label in that column (with --data)")
    run.add_argument("--context-key", help="obs column of contexts, e.g. cell type (with --data)")
    run.add_argument(
        "--expression", choices=["lognorm", "counts"], default="lognorm", help="what X holds (with --data)"
    )
    run.add_argument(
        "--split",
        default=None,
        help="holdout_context | holdout_combo | random | all (default: the dataset's)",
    )
    seeds = run.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="one seed (default 0)")
    seeds.add_argument("--seeds", type=_parse_seeds, default=None, help="several seeds, e.g. 0,1,2")
    run.add_argument("--perturbation", action="append", help="only hold out this perturbation (repeatable)")
    run.add_argument(
        "--param", action="append", type=_parse_param, default=[], help="hyperparameter key=value"
    )
    run.add_argument(
        "--save-predictions", action="store_true", help="store predicted cells as h5ad artifacts"
    )
    run.add_argument("--no-figures", action="store_true", help="skip the per-split and summary figures")
    run.add_argument(
        "--embedding", choices=["umap", "pca"], default="umap", help="embedding of the figure's cells"
    )
    run.add_argument("--max-splits", type=int, default=None, help="run only the first N splits (quick looks)")
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
        help="leaderboard file to update after the run (default .pertbench/LEADERBOARD.md)",
    )
    run.add_argument("--no-leaderboard", action="store_true", help="do not update the leaderboard")

    board = sub.add_parser("leaderboard", help="regenerate the markdown leaderboard from the MLflow store")
    board.add_argument("--output", type=Path, default=None, help="default leaderboard/LEADERBOARD.md")
    board.add_argument("--tracking-uri", default=None)
    board.add_argument(
        "--no-figures", action="store_true", help="do not copy figures next to the leaderboard"
    )
    board.add_argument("--readme", type=Path, default=None, help="also regenerate this file's results block")

    sub.add_parser("list", help="show predictors, datasets, split kinds and metrics")

    synth = sub.add_parser("make-synthetic", help="write a large synthetic count .h5ad, chunk by chunk")
    synth.add_argument("--cells", type=int, required=True, help="total cells (controls included)")
    synth.add_argument("--genes", type=int, required=True)
    synth.add_argument("--perturbations", type=int, required=True, help="perturbations per context")
    synth.add_argument("--controls", type=int, required=True, help="control cells per context")
    synth.add_argument("--contexts", type=int, default=1)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True, help="the .h5ad file to write")
    return parser


def cmd_list(_: argparse.Namespace) -> int:
    from benchmark.datasets import list_cards
    from benchmark.metrics import METRICS
    from benchmark.splits import SPLIT_KINDS
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
    for kind in SPLIT_KINDS:
        print(f"  {kind}")
    print("metrics (↑ higher is better, ↓ lower is better, →0 best at 0):")
    for metric in METRICS.values():
        arrow = {True: "↑", False: "↓", None: "→0"}[metric.higher_is_better]
        print(f"  {metric.name:<22} {arrow:<2} {metric.kind:<12} {metric.description}")
    return 0


def _load(args: argparse.Namespace):
    from benchmark.datasets import load_dataset, load_h5ad

    if args.data is not None:
        if args.dataset:
            raise PertbenchError("give either --dataset or --data, not both")
        if not args.perturbation_key or not args.control:
            raise PertbenchError("--data needs --perturbation-key and --control")
        return load_h5ad(args.data, args.perturbation_key, args.control, args.context_key, args.expression)
    return load_dataset(args.dataset or DEFAULT_DATASET)


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark import tracking
    from benchmark.leaderboard import RUN_PATH, write_leaderboard
    from benchmark.model_cache import default_cache_dir
    from benchmark.runner import RunOptions, run_benchmark
    from benchmark.splits import SPLIT_KINDS, SplitNotApplicable
    from predictors.registry import make_predictor

    make_predictor(args.predictor, **dict(args.param))  # fail fast on an unknown predictor or parameter
    dataset = _load(args)
    kinds = SPLIT_KINDS if args.split == "all" else (args.split or dataset.default_split,)
    unknown = [k for k in kinds if k not in SPLIT_KINDS]
    if unknown:
        raise PertbenchError(f"unknown split kind {unknown[0]!r}; known kinds: {', '.join(SPLIT_KINDS)}, all")
    tracking.use_store(args.tracking_uri)
    seeds = args.seeds or ((args.seed,) if args.seed is not None else (0,))
    options = RunOptions(
        seeds=seeds,
        params=dict(args.param),
        perturbations=tuple(args.perturbation) if args.perturbation else None,
        save_predictions=args.save_predictions,
        figures=not args.no_figures,
        embedding=args.embedding,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
        max_splits=args.max_splits,
    )
    ran = 0
    for kind in kinds:
        try:
            result = run_benchmark(args.predictor, dataset, kind, options)
        except SplitNotApplicable as exc:
            print(f"split {kind} does not apply to dataset {dataset.name}: {exc} (not run)")
            continue
        ran += 1
        _print_table(result)
    if ran and not args.no_leaderboard:
        path = write_leaderboard(args.leaderboard or RUN_PATH, args.tracking_uri)
        print(f"leaderboard updated: {path}")
    return 0


def _print_table(result) -> None:
    import pandas as pd

    table = result.table()
    shown = [
        c
        for c in (
            "split",
            "seed",
            "status",
            "r",
            "jaccard_25",
            "jaccard_50",
            "jaccard_100",
            "energy_distance",
        )
        if c in table
    ]
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


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import DEFAULT_PATH, write_leaderboard

    path = write_leaderboard(
        args.output or DEFAULT_PATH, args.tracking_uri, figures=not args.no_figures, readme=args.readme
    )
    print(f"leaderboard written: {path}")
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    """Write a synthetic screen of about --cells cells and print how to benchmark it."""
    from benchmark.synthetic import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, write_synthetic

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
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bench` console script; errors print one line unless --debug."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "leaderboard": cmd_leaderboard, "list": cmd_list}
    handlers["make-synthetic"] = cmd_make_synthetic
    try:
        return handlers[args.command](args)
    except PertbenchError as exc:
        if args.debug:
            raise
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
