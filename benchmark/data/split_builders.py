"""The split kinds' builders: from the cells grouped by (context, perturbation), the splits of one kind.

Each takes (groups, labels to hold out, seed, min cells) and raises SplitNotApplicable when the data cannot
have that kind; `split_kinds` registers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from benchmark.core.errors import PertbenchError
from benchmark.data.split_record import Split

if TYPE_CHECKING:
    from benchmark.data.splits import Groups

RANDOM_TEST_FRACTION = 0.2
"""Share of every perturbed group that the `random` kind holds out."""


class SplitNotApplicable(PertbenchError):
    """The split kind does not apply to this dataset (e.g. holdout_context with one context)."""


def _holdout_context(groups: Groups, wanted: set[str], seed: int, min_cells: int) -> list[Split]:
    contexts = groups.context_labels()
    if len(contexts) < 2:
        raise SplitNotApplicable(
            f"holdout_context needs at least two contexts; this dataset has {len(contexts)} ({', '.join(contexts)})"
        )
    splits = []
    present: dict[str, int] = {}  # contexts holding each perturbation
    for _, p in groups.index:
        present[p] = present.get(p, 0) + 1
    for context in contexts:
        for pert in sorted(wanted):
            test_idx = groups.cells(context, pert)
            if len(test_idx) == 0:
                continue
            seen_elsewhere = present.get(pert, 0) > 1
            if not seen_elsewhere:
                groups.skipped.append(f"{context}/{pert}: perturbation seen in no other context")
                continue
            target = groups.target(context, pert, test_idx, min_cells, seed)
            if target is not None:
                splits.append(
                    Split(
                        f"{context}/{pert}",
                        "holdout_context",
                        seed,
                        groups.train_without(test_idx),
                        (target,),
                    )
                )
    return _with_skipped(splits, groups)


def _holdout_combo(groups: Groups, wanted: set[str], seed: int, min_cells: int) -> list[Split]:
    combos = [p for p in sorted(wanted) if len(groups.task.genes_of(p)) > 1]
    if not any(len(groups.task.genes_of(p)) > 1 for p in groups.perturbation_labels()):
        raise SplitNotApplicable(
            f"holdout_combo needs combination perturbations (labels joined by "
            f"{groups.task.combo_separator!r}); this dataset has none"
        )
    splits = []
    for pert in combos:
        held_out = np.concatenate([groups.cells(c, pert) for c in groups.context_labels()])
        targets = [
            t
            for c in groups.context_labels()
            if len(groups.cells(c, pert))
            and (t := groups.target(c, pert, groups.cells(c, pert), min_cells, seed)) is not None
        ]
        if targets:
            splits.append(Split(pert, "holdout_combo", seed, groups.train_without(held_out), tuple(targets)))
    return _with_skipped(splits, groups)


def _random(groups: Groups, wanted: set[str], seed: int, min_cells: int) -> list[Split]:
    rng = np.random.default_rng(seed)
    held_out, targets = [], []
    for context in groups.context_labels():
        for pert in sorted(wanted):
            idx = groups.cells(context, pert)
            if len(idx) == 0:
                continue
            n_test = int(round(RANDOM_TEST_FRACTION * len(idx)))
            test_idx = np.sort(rng.choice(idx, size=n_test, replace=False))
            target = groups.target(context, pert, test_idx, min_cells, seed)
            if target is not None:
                held_out.append(test_idx)
                targets.append(target)
    if not targets:
        return []
    split = Split(
        f"random_{seed}", "random", seed, groups.train_without(np.concatenate(held_out)), tuple(targets)
    )
    return _with_skipped([split], groups)


def _with_skipped(splits: list[Split], groups: Groups) -> list[Split]:
    """Attach the list of skipped groups to every split so the run can report them."""
    skipped = tuple(groups.skipped)
    return [Split(s.name, s.kind, s.seed, s.train_cells, s.targets, skipped) for s in splits]
