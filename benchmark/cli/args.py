"""Argument types and argument groups that several `bench` commands share, each defined once."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable
from pathlib import Path

from benchmark.core.errors import PertbenchError

DEFAULT_DATASET = "kang2018"


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors raised as one-line PertbenchErrors instead of usage text and SystemExit."""

    def error(self, message: str):  # type: ignore[override]
        raise PertbenchError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(minimum: int, doc: str) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, else a message that names the bound and the value given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__doc__ = doc
    return parse


non_negative_int = _int_at_least(0, "A seed: an integer >= 0 (numpy and torch seeds cannot be negative).")
positive_int = _int_at_least(1, "A count that must be at least 1 (e.g. --max-splits).")


def parse_seeds(text: str) -> tuple[int, ...]:
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


def parse_param(text: str) -> tuple[str, object]:
    """`key=value` with value read as a Python literal when it is one (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param takes key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The real data: a dataset card, or any h5ad file with its keys (`bench run`, `score` and `tune`)."""
    parser.add_argument("--dataset", default=None, help=f"dataset card name (default {DEFAULT_DATASET})")
    parser.add_argument("--data", type=Path, help="any .h5ad file instead of a dataset card")
    parser.add_argument("--perturbation-key", help="obs column of perturbation labels (with --data)")
    parser.add_argument("--control", help="control label in that column (with --data)")
    parser.add_argument("--context-key", help="obs column of contexts, e.g. cell type (with --data)")
    parser.add_argument(
        "--expression", choices=["lognorm", "counts"], default="lognorm", help="what X holds (with --data)"
    )


def load_data(args: argparse.Namespace):
    """The dataset that add_data_arguments' flags name: --data with its keys, else the card (default kang2018)."""
    from benchmark.data.datasets import load_dataset, load_h5ad

    if args.data is not None:
        if args.dataset:
            raise PertbenchError("give either --dataset or --data, not both")
        if not args.perturbation_key or not args.control:
            raise PertbenchError("--data needs --perturbation-key and --control")
        return load_h5ad(args.data, args.perturbation_key, args.control, args.context_key, args.expression)
    return load_dataset(args.dataset or DEFAULT_DATASET)


def add_split_argument(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """--split: one split kind, the dataset's own by default (`extra` names further values, e.g. run's all)."""
    help_text = (
        f"a split kind (`bench list` shows them), {extra} (default: the dataset's)"
        if extra
        else "a split kind (`bench list` shows them; default: the dataset's)"
    )
    parser.add_argument("--split", default=None, help=help_text)


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    """--no-figures and --embedding: the figures `bench run` and `bench score` draw of each split."""
    parser.add_argument("--no-figures", action="store_true", help="skip the per-split and summary figures")
    parser.add_argument(
        "--embedding", choices=["umap", "pca"], default="umap", help="embedding of the figure's cells"
    )
