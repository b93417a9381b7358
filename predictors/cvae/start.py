"""The module's starting point from the training cells' pseudobulks: the context control profiles the response
decoder reads, each perturbation gene's mean shift its offset starts at, and the read-out's axes and loadings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from benchmark.core.pseudobulk import group_sums, split_controls
from benchmark.core.task import LOGNORM_LAYER, Task, lognormalize
from predictors.baselines import pca_basis
from predictors.cvae.module import Likelihood, PseudobulkStart


def fit_lognorm(x: Any, train: AnnData, rows: np.ndarray, task: Task, likelihood: Likelihood) -> Any:
    """The fit cells' log-normalized values, from the rows already read (x) where possible: `train` may be a
    view of a backed file, which cannot be indexed again."""
    if likelihood == "gaussian":
        return x[rows]
    if LOGNORM_LAYER in train.layers:
        return task.lognorm(train)[rows]
    return lognormalize(x[rows])


@dataclass(frozen=True)
class PseudobulkStarter:
    """What the start depends on besides the cells: the fitted vocabularies and the read-out's settings."""

    likelihood: Likelihood
    perturbation_genes: list[str]
    contexts: list[str]
    rank: int
    readout_penalty: float

    def start(
        self, x: Any, train: AnnData, rows: np.ndarray, perts: np.ndarray, contexts: np.ndarray, task: Task
    ) -> tuple[PseudobulkStart, torch.Tensor]:
        """The module's start and the context profile table (see pseudobulk) from the fit cells `rows` of x (the
        training data read once); perts and contexts are those rows' labels."""
        lognorm = fit_lognorm(x, train, rows, task, self.likelihood)
        table, shifts, readout = self.pseudobulk(x[rows], lognorm, perts, contexts, task)
        start = PseudobulkStart(
            torch.from_numpy(shifts),
            None if readout is None else tuple(torch.from_numpy(a) for a in readout),
        )
        return start, torch.from_numpy(table)

    def decoder_scale(self, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Pseudobulk profiles (one row per group) on the decoder's output scale: mean log-normalized values, or
        (NB) log expression fractions, with a +0.5 count so that a gene absent from a group stays finite."""
        if self.likelihood == "nb":
            return np.log((sums + 0.5) / np.maximum(sums.sum(axis=1, keepdims=True), 1.0))
        return sums / sizes[:, None]

    def pseudobulk(
        self, x: Any, lognorm: Any, perts: np.ndarray, contexts: np.ndarray, task: Task
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...] | None]:
        """The context control profiles the response reads (contexts order), each single perturbation gene's
        mean shift its offset starts at (perturbation_genes order) and the read-out's axes and starting
        loadings (see readout_start).

        Shifts are on the decoder's output scale (from x, the training data); a context's profile is the mean
        log-normalized profile of its control cells (from lognorm, the same cells log-normalized; for Gaussian
        data x itself), on either likelihood: log pseudobulk fractions of counts would let the genes with few
        counts, whose logs are mostly noise, dominate the profiles' principal axes. A shift is taken against the
        controls of the same context and averaged with equal weight over the gene's contexts (the mean_shift
        baseline's estimate; pooling cells across contexts would add the contexts' own differences to it); zero
        for a gene seen only in combinations. A context without training controls reads the mean profile of all
        training cells.
        """
        groups, sums, sizes = group_sums(x, contexts, perts)
        _, shifts = split_controls(dict(zip(groups, self.decoder_scale(sums, sizes), strict=True)), task)
        if lognorm is not x:  # same cells, same groups in the same order
            sums = group_sums(lognorm, contexts, perts)[1]
        controls, _ = split_controls(dict(zip(groups, sums / sizes[:, None], strict=True)), task)
        overall = sums.sum(axis=0) / sizes.sum()
        table = np.array([controls.get(c, overall) for c in self.contexts], dtype=np.float32)
        starts = np.zeros((len(self.perturbation_genes), x.shape[1]), dtype=np.float32)
        for i, gene in enumerate(self.perturbation_genes):
            per_context = [shift for (_, label), shift in shifts.items() if label == gene]
            if per_context:
                starts[i] = np.mean(per_context, axis=0)
        return table, starts, self.readout_start(controls, shifts)

    def readout_start(self, controls: dict[str, np.ndarray], shifts: dict) -> tuple[np.ndarray, ...] | None:
        """(axes, slopes, anchors), the PseudobulkStart's readout; None with fewer than 2 context profiles.

        axes: the top `rank` principal axes (unit rows) of the training contexts' control profiles, the fixed
        directions the response reads a context's profile along. slopes, anchors: for each single perturbation
        gene seen in at least 3 contexts, the ridge slope of its shifts on those contexts' scores along axes[0]
        and the scores' mean; zero (and the loading starts at zero) otherwise. The ridge penalty is
        readout_penalty x (contexts seen) x the variance of the scores of every context with controls, the
        contexts to predict included: a slope is trusted only as far as the contexts it was fitted on span the
        axis. (A penalty relative to the fitted contexts' own spread extrapolated a slope fitted on three
        contexts with nearly equal scores to a far outlier.)
        """
        if self.rank < 1 or len(controls) < 2:
            return None
        axes = pca_basis(np.array(list(controls.values())), self.rank)[1]
        if len(axes) == 0:  # identical control profiles: nothing to read
            return None
        axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
        slopes = np.zeros((len(self.perturbation_genes), axes.shape[1]), dtype=np.float32)
        anchors = np.zeros(len(self.perturbation_genes), dtype=np.float32)
        spread = float(np.var([c @ axes[0] for c in controls.values()]))  # every context's, targets included
        for i, gene in enumerate(self.perturbation_genes):
            seen = [(controls[t], d) for (t, label), d in shifts.items() if label == gene]
            if len(seen) < 3:
                continue
            scores = np.array([c @ axes[0] for c, _ in seen])
            centred, d = scores - scores.mean(), np.array([d for _, d in seen])
            penalty = self.readout_penalty * len(seen) * spread
            if centred @ centred > 0:
                slopes[i] = centred @ (d - d.mean(axis=0)) / (centred @ centred + penalty)
                anchors[i] = scores.mean()
        return axes.astype(np.float32), slopes, anchors
