"""The split kind registry: each kind's builder and every rule that depends on it, registered in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data.split_builders import _holdout_combo, _holdout_context, _random
from benchmark.data.split_record import Split

if TYPE_CHECKING:
    from benchmark.data.splits import Groups


def _by_context(splits: list[Split], seed: int, folds: int) -> list[str]:
    return [f"context={s.targets[0].context}" for s in splits]


def _by_fold(splits: list[Split], seed: int, folds: int) -> list[str]:
    n = min(folds, len(splits))
    order = np.random.default_rng(seed).permutation(len(splits))
    fold_of = {int(i): pos % n for pos, i in enumerate(order)}
    return [f"fold={fold_of[i] + 1}/{n}" for i in range(len(splits))]


def _by_split(splits: list[Split], seed: int, folds: int) -> list[str]:
    return [s.name for s in splits]


def _several_contexts(adata: AnnData, task: Task) -> bool:
    return task.context_key is not None and np.unique(task.contexts(adata)).size > 1


def has_combinations(adata: AnnData, task: Task) -> bool:
    """Some label combines perturbations that each occur alone (a '+' inside one name is not a combination)."""
    labels = set(np.unique(task.perturbations(adata)).astype(str))
    return any(len(genes) > 1 and set(genes) <= labels for genes in map(task.genes_of, labels))


def joined_labels(adata: AnnData, task: Task) -> list[str]:
    """Labels that hold the combination separator although their parts are not all labels: names, not combos."""
    labels = set(np.unique(task.perturbations(adata)).astype(str))
    return sorted(p for p in labels if len(genes := task.genes_of(p)) > 1 and not set(genes) <= labels)


@dataclass(frozen=True)
class SplitKind:
    """A split kind and every rule that depends on it, so adding one touches one place (`register_split_kind`)."""

    name: str
    build: Callable[[Groups, set[str], int, int], list[Split]]
    """(groups, labels to hold out, seed, min cells) -> the splits; SplitNotApplicable when the data cannot."""
    description: str
    compares_contexts: bool
    """`discrimination`'s comparison groups: the same perturbation in the other contexts (True, context
    specificity), or the other perturbations of the target's context (False)."""
    tuning_blocks: Callable[[list[Split], int, int], list[str]]
    """(outer splits, seed, folds) -> each split's tuning block (`bench tune` tunes a block once)."""
    applies: Callable[[AnnData, Task], bool]
    """Whether the kind can be the default of a card-less dataset (kinds are tried in registration order)."""


SPLIT_KINDS: dict[str, SplitKind] = {}
"""Registered split kinds by name, in the order a card-less dataset's default is guessed."""


def register_split_kind(kind: SplitKind) -> SplitKind:
    """Add a split kind; the CLI, tuning, the engine's comparison pool and the default guess all read it here."""
    if kind.name in SPLIT_KINDS or kind.name in ("all", "default"):
        raise ValueError(f"split kind {kind.name!r} is already registered or reserved")
    SPLIT_KINDS[kind.name] = kind
    return kind


def split_kind(name: str) -> SplitKind:
    """The registered kind `name`; an unknown name is a one-line error listing the known ones."""
    if name not in SPLIT_KINDS:
        raise PertbenchError(f"unknown split kind {name!r}; known kinds: {', '.join(SPLIT_KINDS)}")
    return SPLIT_KINDS[name]


def default_split_kind(adata: AnnData, task: Task) -> str:
    """The first registered kind that applies to the data (contexts, else combinations, else random)."""
    return next(k.name for k in SPLIT_KINDS.values() if k.applies(adata, task))


register_split_kind(
    SplitKind(
        "holdout_context",
        _holdout_context,
        "each (context, perturbation) held out in turn; predicted from that context's controls",
        compares_contexts=True,
        tuning_blocks=_by_context,
        applies=_several_contexts,
    )
)
register_split_kind(
    SplitKind(
        "holdout_combo",
        _holdout_combo,
        "each combination A+B held out in every context; its singles stay in training",
        compares_contexts=False,
        tuning_blocks=_by_fold,
        applies=has_combinations,
    )
)
register_split_kind(
    SplitKind(
        "random",
        _random,
        "a seeded fraction of every perturbed group held out, one split per seed",
        compares_contexts=False,
        tuning_blocks=_by_split,
        applies=lambda adata, task: True,
    )
)
