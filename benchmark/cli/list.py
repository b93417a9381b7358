"""`bench list`: show the registered predictors, dataset cards, split kinds and metrics."""

from __future__ import annotations

import argparse

NAME = "list"
USES_STORE = False


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench list` (no flags)."""
    return subparsers.add_parser(NAME, help="show predictors, datasets, split kinds and metrics")


def cmd_list(_: argparse.Namespace) -> int:
    """Print one line per predictor, dataset, split kind and metric."""
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
