"""Tuning blocks: the outer splits tuned together, the cells all of them train on, and the validation splits
made from those cells alone (the protocol is described in benchmark.selection.tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.core.errors import PertbenchError
from benchmark.core.task import take
from benchmark.data.datasets import Dataset
from benchmark.data.splits import Split, make_splits, split_kind

DEFAULT_FOLDS = 5
"""holdout_combo: most blocks the combinations are dealt into (each block is one tuning)."""

MAX_VALIDATION_SPLITS = 20
"""Most validation splits (fits) per trial and block; a seeded subset, the same for every trial."""


@dataclass(frozen=True)
class Block:
    """Outer splits tuned together, and the cells that are training cells in every one of them."""

    name: str
    outer: tuple[Split, ...]
    tuning_cells: tuple[str, ...]

    def test_cells(self) -> set[str]:
        """Every held-out cell of the block's outer splits."""
        return {c for s in self.outer for t in s.targets for c in t.test_cells}


def outer_blocks(dataset: Dataset, kind: str, seed: int = 0, folds: int = DEFAULT_FOLDS) -> list[Block]:
    """The outer splits `bench run` scores, grouped into blocks that are tuned once each (see the module doc)."""
    splits = make_splits(dataset.adata, dataset.task, kind, seed=seed)
    keys = split_kind(kind).tuning_blocks(splits, seed, folds)
    ids = np.asarray(dataset.adata.obs_names, dtype=object)
    blocks = []
    for key in dict.fromkeys(keys):
        outer = tuple(s for s, k in zip(splits, keys, strict=True) if k == key)
        held = {c for s in outer for t in s.targets for c in t.test_cells}
        common = set.intersection(*(set(s.train_cells) for s in outer)) - held
        blocks.append(Block(key, outer, tuple(c for c in ids if c in common)))
    return blocks


def validation_splits(
    dataset: Dataset, block: Block, kind: str, seed: int = 0, max_splits: int = MAX_VALIDATION_SPLITS
) -> list[Split]:
    """Splits of `kind` made from the block's tuning cells only (a seeded subset of at most max_splits)."""
    sub = _subset(dataset, block.tuning_cells)
    try:
        splits = make_splits(sub, dataset.task, kind, seed=seed)
    except PertbenchError as exc:
        raise PertbenchError(
            f"block {block.name}: no validation split of kind {kind} can be made from its training cells ({exc})"
        ) from exc
    if len(splits) > max_splits:
        keep = np.sort(np.random.default_rng(seed).choice(len(splits), size=max_splits, replace=False))
        splits = [splits[i] for i in keep]
    return splits


def _subset(dataset: Dataset, cells) -> Any:
    positions = dataset.adata.obs_names.get_indexer(list(cells))
    return take(dataset.adata, positions)  # in memory, also from a backed file
