"""Adversarial predictors that game one aspect of the scoreboard each, so a test can check that it is caught.

All three fit mean_shift's pseudobulk state (control profile per training context, shift per training
(context, perturbation)) and differ only in the cells they return:

* `CollapsedMean`: every cell is mean_shift's mean profile, mean(control) + shift: the right mean with no
  spread at all (caught by distribution scores: var_ratio, energy_distance_shape).
* `InflatedVariance`: mean_shift's cells with their deviations from their mean multiplied by `factor` (2):
  the right mean with too much spread (caught by var_ratio, crps_deg100, energy_distance_shape).
* `WrongContext`: the control cells plus the perturbation's shift from ONE other training context, the one
  whose training control profile is farthest (L2) from the mean of the given control cells. The rule reads only
  training pseudobulks and the given controls, never the held-out cells: it is the response of the least
  similar context, i.e. a prediction that ignores context as badly as a plausible one can (caught by
  context-specificity and correlation scores: discrimination, r).
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from benchmark.core.errors import NotApplicable
from benchmark.core.protocol import predicted_anndata
from predictors.baselines import MeanShift
from predictors.params import ValidatedParams, check_float


class CollapsedMean(MeanShift):
    """mean_shift's mean profile repeated once per control cell: a point mass at the right mean."""

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """One identical row per control cell: mean(control) + the context-averaged training shift."""
        cells = super().predict(control, perturbation, context).X
        profile = np.asarray(cells, dtype=np.float64).mean(axis=0)
        return predicted_anndata(np.tile(profile, (cells.shape[0], 1)), control, perturbation, context)


class InflatedVariance(ValidatedParams, MeanShift):
    """mean_shift's cells spread `factor` times farther around their own mean (same mean, factor² variance)."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor
        self._validate()

    def _validate(self) -> None:
        """factor: a finite number > 0."""
        check_float("factor", self.factor, 0.0, low_open=True)

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """mean + factor * (cell - mean) for every cell of mean_shift's prediction."""
        cells = np.asarray(super().predict(control, perturbation, context).X, dtype=np.float64)
        center = cells.mean(axis=0)
        return predicted_anndata(center + self.factor * (cells - center), control, perturbation, context)


class WrongContext(MeanShift):
    """Control cells + the shift of the training context whose control profile is farthest from theirs."""

    def donor_context(self, control: AnnData, perturbation: str, context: str | None) -> str:
        """The training context lending its shift: farthest (L2) control profile from the given controls' mean,
        excluding the target context itself; ties go to the first in sorted order."""
        self._check_fitted()
        candidates = [t for t in self._contexts_seen(perturbation) if t != context]
        if not candidates:
            raise NotApplicable(f"{perturbation!r} has no training context other than {context!r}")
        positions = self._positions(control)
        given = self._control_values(control).mean(axis=0)
        distances = [np.linalg.norm(self.control_means_[t][positions] - given) for t in candidates]
        return candidates[int(np.argmax(distances))]

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """The given control cells plus the donor context's training shift of `perturbation`."""
        donor = self.donor_context(control, perturbation, context)
        return self._output(control, self.shifts_[(donor, perturbation)], perturbation, context)
