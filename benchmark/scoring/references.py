"""The reference baselines that anchor normalized scores, computed by the harness itself from training pseudobulks.

`mean_shift`: the control cells plus the perturbation's training shift, averaged with equal weight over the
training contexts where it was seen. `additive` (combinations 'A+B' never seen as such): the control cells plus
the sum of the singles' mean shifts. The first that applies to a target is its reference. The values equal those
of the `mean_shift` and `additive` predictors (they share `benchmark.core.pseudobulk`), so those predictors score
exactly 0 on the normalized scale, but the harness does not depend on `predictors/`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from benchmark.core.pseudobulk import Group, group_means, split_controls
from benchmark.core.task import Task

REFERENCE_NAMES = ("mean_shift", "additive")
"""In order of preference: a target's reference is the first of these that applies to it."""


@dataclass(frozen=True)
class ReferenceShifts:
    """The training shift of every (context, perturbation) group, and how labels split into singles."""

    shifts: dict[Group, np.ndarray]
    task: Task

    @classmethod
    def fit(cls, train: AnnData, task: Task) -> ReferenceShifts:
        """Pseudobulk shifts of the training cells (perturbed group mean − its context's control mean)."""
        return cls(split_controls(group_means(train, task), task)[1], task)

    def mean_shift(self, perturbation: str) -> np.ndarray | None:
        """The perturbation's shift averaged over its training contexts; None when it was never seen."""
        contexts = sorted(t for (t, p) in self.shifts if p == perturbation)
        if not contexts:
            return None
        return np.mean([self.shifts[(t, perturbation)] for t in contexts], axis=0)

    def additive(self, perturbation: str) -> np.ndarray | None:
        """Sum of the singles' mean shifts for a combination; None for a single or an unseen single."""
        genes = self.task.genes_of(perturbation)
        if len(genes) < 2:
            return None
        parts = [self.mean_shift(g) for g in genes]
        if any(p is None for p in parts):
            return None
        return np.sum(parts, axis=0)

    def shift(self, perturbation: str) -> tuple[str, np.ndarray] | None:
        """The first applicable reference (name, shift) for a perturbation, or None when none applies."""
        for name in REFERENCE_NAMES:
            value = getattr(self, name)(perturbation)
            if value is not None:
                return name, value
        return None


def reference_predictions(
    refs: ReferenceShifts, control_x: np.ndarray, perturbation: str
) -> dict[str, np.ndarray]:
    """{name: predicted cells} of the first applicable reference (empty when none applies).

    The cells are the control cells plus the shift, rounded to float32 as a predictor's AnnData output is, so
    a predictor computing the same values scores identically to its reference.
    """
    found = refs.shift(perturbation)
    if found is None:
        return {}
    name, shift = found
    return {name: (np.asarray(control_x, dtype=np.float64) + shift).astype(np.float32)}
