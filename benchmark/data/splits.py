"""The split manager: named, seeded train/test splits saved as cell ids so a run can be repeated exactly.

Kinds:
- `holdout_context`: for perturbation p and context t, train on everything except the (t, p) cells and predict
  (t, p) from the (t, control) cells. One split per (t, p) where p is also seen in another context.
- `holdout_combo`: each combination `A+B` is held out; its singles, the control and other combinations train.
- `random`: a seeded fraction of every perturbed group is held out (an in-distribution check).
A kind that does not apply to a dataset raises SplitNotApplicable, which the harness reports instead of running.

This module groups a dataset's cells, samples the control and scored cells of a target, and makes the splits;
the split record lives in `split_record`, the kinds' builders in `split_builders` and their registry in
`split_kinds`, all importable from here.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data.split_builders import RANDOM_TEST_FRACTION, SplitNotApplicable
from benchmark.data.split_kinds import (
    SPLIT_KINDS,
    SplitKind,
    default_split_kind,
    has_combinations,
    joined_labels,
    register_split_kind,
    split_kind,
)
from benchmark.data.split_record import SPLIT_FORMAT, Split, Target, TrainingCells, _digest
from benchmark.scoring.metrics import subsample_index

__all__ = [
    "MAX_SCORED_CELLS",
    "MIN_CELLS",
    "MIN_PREDICTED_CELLS",
    "RANDOM_TEST_FRACTION",
    "SPLIT_FORMAT",
    "SPLIT_KINDS",
    "Groups",
    "Split",
    "SplitKind",
    "SplitNotApplicable",
    "Target",
    "TrainingCells",
    "_digest",
    "capped_controls",
    "default_split_kind",
    "has_combinations",
    "joined_labels",
    "make_splits",
    "register_split_kind",
    "scored_test_cells",
    "split_kind",
]

MIN_CELLS = 10
"""Fewest cells a held-out group, or the control group of its context, may have."""
MIN_PREDICTED_CELLS = 500
"""Fewest control cells a target gives its predictor (when its context has them): the control cells of a target
are a seeded sample of its context's controls, as many as the held-out group and at least this many, so a
10k-control context does not cost 10k predicted cells per target. No committed dataset has a context with more
than 278 controls, so there the sample is every control cell."""
MAX_SCORED_CELLS = 10_000
"""Most cells of one target that are scored, and most control cells its predictor is given: a held-out group
larger than this is scored on a seeded uniform sample of this many of its cells (`scored_test_cells`, the same for
every predictor and seed), and its control sample stops at this many. A target's memory is then O(MAX_SCORED_CELLS
x genes) however large the dataset (on the 1M-cell grid a held-out group has 83,000 cells: each dense copy of it
was 1.3 GB). Its means are over 10,000 cells and the cell-level scores already use at most MAX_DISTANCE_CELLS;
no committed dataset has a group this large, so their scores do not move."""


def make_splits(
    adata: AnnData,
    task: Task,
    kind: str,
    seed: int = 0,
    perturbations: Iterable[str] | None = None,
    min_cells: int = MIN_CELLS,
) -> list[Split]:
    """All splits of `kind` for a dataset, optionally restricted to some perturbation labels."""
    builder = split_kind(kind).build
    groups = Groups(adata, task)
    wanted = groups.check_wanted(perturbations)
    splits = builder(groups, wanted, seed, min_cells)
    if not splits:
        raise PertbenchError(
            f"split {kind} has no group with at least {min_cells} held-out cells and {min_cells} control cells"
            + (f" (skipped: {'; '.join(groups.skipped[:5])})" if groups.skipped else "")
        )
    for split in splits:
        split.check_no_leak()
    return splits


class Groups:
    """Cell ids grouped by (context, perturbation), computed once per dataset."""

    def __init__(self, adata: AnnData, task: Task) -> None:
        self.task = task
        self.ids = np.asarray(adata.obs_names, dtype=object)
        self.perts = task.perturbations(adata)
        self.contexts = task.contexts(adata)
        self.skipped: list[str] = []
        self._controls: dict[str, tuple[str, ...]] = {}  # one tuple per context, shared by its targets
        frame = pd.DataFrame({"context": self.contexts, "pert": self.perts})
        self.index: dict[tuple[str, str], np.ndarray] = {
            (str(c), str(p)): np.asarray(idx)
            for (c, p), idx in frame.groupby(["context", "pert"]).indices.items()
        }

    def perturbation_labels(self) -> list[str]:
        """Every non-control label, sorted."""
        return sorted({p for _, p in self.index if p != self.task.control_label})

    def context_labels(self) -> list[str]:
        return sorted({c for c, _ in self.index})

    def check_wanted(self, perturbations: Iterable[str] | None) -> set[str]:
        """The perturbation labels to hold out; an unknown label is an error that lists the known ones."""
        known = self.perturbation_labels()
        if perturbations is None:
            return set(known)
        wanted = set(perturbations)
        unknown = sorted(wanted - set(known))
        if unknown:
            raise PertbenchError(
                f"unknown perturbation label(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
            )
        return wanted

    def cells(self, context: str, pert: str) -> np.ndarray:
        return self.index.get((context, pert), np.empty(0, dtype=int))

    def target(
        self, context: str, pert: str, test_idx: np.ndarray, min_cells: int, seed: int
    ) -> Target | None:
        """A Target for (context, pert), or None (recorded in `skipped`) when a group is too small."""
        control_idx = self.cells(context, self.task.control_label)
        if len(test_idx) < min_cells or len(control_idx) < min_cells:
            self.skipped.append(
                f"{context}/{pert}: {len(test_idx)} held-out and {len(control_idx)} control cells, "
                f"a split needs {min_cells} of each"
            )
            return None
        capped = capped_controls(control_idx, len(test_idx), seed, f"{context}\0{pert}")
        if len(capped) < len(control_idx):  # a sample of its own
            return Target(pert, context, tuple(self.ids[test_idx]), tuple(self.ids[capped]))
        if context not in self._controls:  # every control cell: one tuple shared by the context's targets
            self._controls[context] = tuple(self.ids[control_idx])
        return Target(pert, context, tuple(self.ids[test_idx]), self._controls[context])

    def train_without(self, held_out: np.ndarray) -> TrainingCells:
        return TrainingCells(self.ids, held_out)


def capped_controls(control_idx: np.ndarray, n_test: int, seed: int, key: str) -> np.ndarray:
    """The control positions a target gives its predictor: all of them, or a seeded sorted sample of
    max(n_test, MIN_PREDICTED_CELLS), at most MAX_SCORED_CELLS, when the context has more (the sample depends on
    seed and target only)."""
    n = min(max(n_test, MIN_PREDICTED_CELLS), MAX_SCORED_CELLS)
    if len(control_idx) <= n:
        return control_idx
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return np.sort(rng.choice(control_idx, size=n, replace=False))


def scored_test_cells(test_cells: tuple[str, ...]) -> tuple[str, ...]:
    """The held-out cells a target is scored on: all of them up to MAX_SCORED_CELLS, else that many, sorted, drawn
    uniformly as `metrics.subsample_index` draws them (seeded by SUBSAMPLE_SEED and the group's size)."""
    if len(test_cells) <= MAX_SCORED_CELLS:
        return test_cells
    return tuple(test_cells[i] for i in subsample_index(len(test_cells), MAX_SCORED_CELLS))
