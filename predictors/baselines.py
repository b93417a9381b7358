"""Simple, honest baselines: no change, mean shift, additive combinations and a multi-family linear selector.

All but NoChange learn the same pseudobulk state in `fit`: the mean log-normalized profile of the control cells
of every training context t, and the shift d[t, p] = mean(cells of (t, p)) - mean(control cells of t) of every
(t, p) group that has both perturbed and control cells in training. Predictions are the given control cells
plus a predicted shift, so the predicted pseudobulk change is exactly that shift. Values are not clipped at 0:
clipping would bias the predicted means, which is what these baselines get right.

The plain ridge baseline `linear` lives in predictors/linear.py; LinearCV here (`linear_cv`) chooses among 41
closed-form ridge models of several families by cross-validation on the training pseudobulks.

The ridge models LinearCV chooses among, their linear algebra and the CV margin live in predictors/ridge.py; their
names are importable from here too.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from anndata import AnnData
from threadpoolctl import threadpool_limits

from benchmark.core.errors import NotApplicable
from benchmark.core.protocol import Predictor, predicted_anndata
from benchmark.core.pseudobulk import group_means, split_controls
from benchmark.core.task import Task, dense
from predictors.params import ValidatedParams, check_float, check_int, check_int_grid, check_positive_grid
from predictors.ridge import (
    MEAN_SHIFT,
    MULTI_HOT_DEFAULT,
    Candidate,
    Group,
    MultiHotRidge,
    TwoWayRidge,
    low_rank_ridge,
    mean_errors,
    multi_hot_design,
    one_hot,
    pca_basis,
    per_gene_ridge,
    ridge_solve,
    select,
    transfer_shift,
)

__all__ = [
    "MEAN_SHIFT",
    "MULTI_HOT_DEFAULT",
    "Additive",
    "Candidate",
    "Group",
    "LinearCV",
    "MeanShift",
    "MultiHotRidge",
    "NoChange",
    "TwoWayRidge",
    "low_rank_ridge",
    "mean_errors",
    "multi_hot_design",
    "one_hot",
    "pca_basis",
    "per_gene_ridge",
    "ridge_solve",
    "select",
    "transfer_shift",
]


# ---------------------------------------------------------------------------------------------------------
# Pseudobulk state shared by the baselines
# ---------------------------------------------------------------------------------------------------------


class _ShiftBaseline(Predictor):
    """Shared fit (pseudobulk control profiles and shifts) and output (control cells + a shift)."""

    def fit(self, train: AnnData, task: Task) -> _ShiftBaseline:
        """Learn the control profile of every training context and the shift of every (context, perturbation)."""
        self.task_ = task
        self.genes_ = pd.Index(train.var_names)
        self.control_means_, self.shifts_ = split_controls(group_means(train, task), task)
        return self

    def _check_fitted(self) -> None:
        """Raise a clear error when predict is called before fit."""
        if not hasattr(self, "shifts_"):
            raise RuntimeError(f"{type(self).__name__} must be fitted before predict")

    def _contexts_seen(self, perturbation: str) -> list[str]:
        """Training contexts where `perturbation` has a shift, in a stable order."""
        return sorted(t for (t, p) in self.shifts_ if p == perturbation)

    def _mean_shift(self, perturbation: str) -> np.ndarray:
        """The perturbation's shift averaged over its training contexts (equal weight per context)."""
        contexts = self._contexts_seen(perturbation)
        if not contexts:
            raise NotApplicable(f"perturbation {perturbation!r} was never seen (with controls) in training")
        return np.mean([self.shifts_[(t, perturbation)] for t in contexts], axis=0)

    def _positions(self, control: AnnData) -> np.ndarray:
        """Position in the training genes of every gene of `control` (which must all be training genes)."""
        self._check_fitted()
        positions = self.genes_.get_indexer(control.var_names)
        if (positions < 0).any():
            missing = list(control.var_names[positions < 0][:5])
            raise ValueError(f"control cells have genes that were not in training, e.g. {missing}")
        return positions

    def _control_values(self, control: AnnData) -> np.ndarray:
        """Dense log-normalized values of the given control cells (a small subset, so densifying is fine)."""
        return dense(self.task_.lognorm(control))

    def _output(self, control: AnnData, shift: np.ndarray, perturbation: str, context: str | None) -> AnnData:
        """The control cells plus `shift` (in training gene order), aligned to the control's genes."""
        values = self._control_values(control) + shift[self._positions(control)]
        return predicted_anndata(values, control, perturbation, context)


class _ProfileShiftBaseline(_ShiftBaseline):
    """A shift baseline whose shift depends on the given control cells' profile (transfer from the contexts where
    the perturbation was seen) or, for a label never seen, on its genes (combination model)."""

    def _transfer_shift(self, perturbation: str, context: str | None, c_new: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - each subclass has its transfer model

    def _combo_shift(self, perturbation: str) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - each subclass has its combination model

    def _profile_shift_output(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """Control cells plus the transfer shift at their mean profile (p seen) or the combination shift."""
        self._check_fitted()
        positions = self._positions(control)
        if len(np.unique(positions)) != len(self.genes_):
            raise ValueError(f"{type(self).__name__} needs the control cells to have every training gene")
        values = self._control_values(control)
        if self._contexts_seen(perturbation):
            c_new = np.empty(len(self.genes_))
            c_new[positions] = values.mean(axis=0)
            shift = self._transfer_shift(perturbation, context, c_new)
        else:
            shift = self._combo_shift(perturbation)
        return predicted_anndata(values + shift[positions], control, perturbation, context)


# ---------------------------------------------------------------------------------------------------------
# NoChange, MeanShift, Additive
# ---------------------------------------------------------------------------------------------------------


class NoChange(Predictor):
    """Fits nothing but the task: predicts the given control cells unchanged (the 'perturbation does nothing' floor)."""

    def fit(self, train: AnnData, task: Task) -> NoChange:
        """Remember the task (to read log-normalized values); there is nothing to learn."""
        self.task_ = task
        return self

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """The control cells' own log-normalized values."""
        if not hasattr(self, "task_"):
            raise RuntimeError("NoChange must be fitted before predict")
        return predicted_anndata(dense(self.task_.lognorm(control)), control, perturbation, context)


class MeanShift(_ShiftBaseline):
    """Fits per-(context, perturbation) pseudobulk shifts; predicts control + the perturbation's shift averaged
    with equal weight over the training contexts where it was seen. NotApplicable if it was never seen."""

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """Control cells plus the context-averaged training shift of `perturbation`."""
        self._check_fitted()
        return self._output(control, self._mean_shift(perturbation), perturbation, context)


class Additive(_ShiftBaseline):
    """Fits per-(context, perturbation) pseudobulk shifts; predicts a combination 'A+B' as control + the sum of
    the single shifts of A and B (each averaged over its training contexts as in MeanShift). NotApplicable for a
    single-gene label (use mean_shift) and when a single of the combination was never seen in training."""

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """Control cells plus the sum of the combination's single-perturbation mean shifts."""
        self._check_fitted()
        genes = self.task_.genes_of(perturbation)
        if len(genes) < 2:
            raise NotApplicable(
                f"additive applies to combinations; {perturbation!r} is not one (use mean_shift)"
            )
        missing = [g for g in genes if not self._contexts_seen(g)]
        if missing:
            raise NotApplicable(
                f"single perturbation(s) {missing} of {perturbation!r} never seen in training"
            )
        shift = np.sum([self._mean_shift(g) for g in genes], axis=0)
        return self._output(control, shift, perturbation, context)


# ---------------------------------------------------------------------------------------------------------
# LinearCV: closed-form ridge models of several families on pseudobulks, and their cross-validation
# ---------------------------------------------------------------------------------------------------------


class LinearCV(ValidatedParams, _ProfileShiftBaseline):
    """Cross-validated choice among closed-form ridge models of the training pseudobulk shifts (in the spirit of
    Ahlmann-Eltze et al. 2025); which model applies depends on the target (t*, p).

    Context transfer (p seen in training contexts T_p, predicted in context t* from t*'s control cells): the shift
    is predicted by one of
      - mean_shift: the mean of d[t, p] over T_p (the infinite-penalty limit of the ridges below);
      - per_gene: per gene g, ridge of d[t, p, g] on c[t, g] - mean over T_p of c[., g], across t in T_p (slope
        penalized by penalty x the mean per-gene sum of squares of the centered c), evaluated at c[t*, g];
      - low_rank: ridge of the shift vector d[t, p] on the scores of c[t] on the top-k principal axes of all
        training pseudobulks (controls and perturbed groups), across t in T_p, in kernel form (penalty x tr K / n);
      - two_way: ridge of every training shift d[t, q] on intercept + one-hot(t) + one-hot(q) (unpenalized
        intercept; context and perturbation effects with separate penalties, an infinite one dropping the
        factor), evaluated at (t*, p); it learns t*'s systematic shift from t*'s other perturbations.
    The model and its penalties (and k) are chosen by leave-one-group-out CV on the training pseudobulks (one
    choice pooled over all perturbations): every training group (t, p) whose perturbation keeps >= 1 other
    training context is predicted from the other groups (PCs recomputed without it). The candidate with the least
    mean squared error is used only if it cuts mean_shift's by more than one paired standard error across folds
    and by at least the fraction min_cv_gain; otherwise, and with fewer than 2 folds, it is mean_shift.

    Labels never seen in training (e.g. combinations whose genes each appear in some training label): ridge
    (intercept unpenalized) of every training label's shift (averaged over its contexts as in MeanShift) on its
    multi-hot gene encoding, at full rank or on the top-k principal axes of those shifts; penalty and k with the
    least mean squared error in leave-one-label-out CV over the training combinations whose genes stay seen
    without them (over all such labels if fewer than 2 combinations qualify; with fewer than 2 folds, penalty 0.1
    at full rank, which is close to additive). NotApplicable when a gene of p was never seen in training.

    After fit, `selection_` records both choices (chosen candidate, every candidate's mean CV error, the folds)
    as a JSON-serializable dict. random_state seeds the subsample of transfer folds when there are more than
    max_cv_folds (the only randomness; with fewer folds the fit does not depend on it).
    """

    #: What `bench tune` searches: how much a ridge model must beat mean_shift in the inner CV to be used.
    search_space: dict[str, tuple] = {"min_cv_gain": ("float", 0.0, 0.5, False)}

    def __init__(
        self,
        penalties: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
        ranks: tuple[int, ...] = (1, 2, 4, 8),
        min_cv_gain: float = 0.1,
        max_cv_folds: int = 200,
        random_state: int = 0,
    ):
        self.penalties = penalties
        self.ranks = ranks
        self.min_cv_gain = min_cv_gain
        self.max_cv_folds = max_cv_folds
        self.random_state = random_state
        self._validate()

    def _validate(self) -> None:
        """Penalties finite and > 0 (the mean_shift limit is always a candidate), ranks >= 1, and so on."""
        check_positive_grid("penalties", self.penalties)
        check_int_grid("ranks", self.ranks, 1)
        check_float("min_cv_gain", self.min_cv_gain, 0.0)
        check_int("max_cv_folds", self.max_cv_folds, 1)
        check_int("random_state", self.random_state, 0)

    # -- fit ------------------------------------------------------------------------------------------------

    def fit(self, train: AnnData, task: Task) -> LinearCV:
        """Learn the pseudobulk state, choose the transfer and multi-hot models by CV, and fit the chosen ones."""
        super().fit(train, task)
        self.basis_ = pca_basis(self._pseudobulks(), self._max_rank())
        with threadpool_limits(limits=1, user_api="blas"):  # many tiny solves: threads only add overhead
            self.transfer_model_, self.transfer_cv_ = self._select_transfer()
            self.combo_model_, self.combo_cv_ = self._select_combo()
        self.two_way_ = None
        if self.transfer_model_.family == "two_way":
            self.two_way_ = TwoWayRidge.fit(*self._shift_table(), self.transfer_model_)
        labels, shifts = self._label_shifts()
        self.combo_ridge_ = MultiHotRidge.fit(labels, shifts, self.combo_model_) if labels else None
        self.selection_ = {
            "transfer": {
                "protocol": "leave-one-training-group-out",
                "chosen": str(self.transfer_model_),
                "cv_error": self.transfer_cv_,
                "folds": [list(g) for g in self._transfer_folds()],
            },
            "combination": {
                "protocol": "leave-one-training-label-out",
                "chosen": str(self.combo_model_),
                "cv_error": self.combo_cv_,
                "folds": self._combo_folds() if self.combo_cv_ else [],
            },
        }
        return self

    def _max_rank(self) -> int:
        """The largest rank of the grid (1 if the grid is empty)."""
        return max(self.ranks, default=1)

    def _pseudobulks(self, leave_out: Group | None = None) -> np.ndarray:
        """All training control profiles and perturbed-group profiles, optionally without one perturbed group."""
        rows = list(self.control_means_.values())
        rows += [self.control_means_[g[0]] + d for g, d in self.shifts_.items() if g != leave_out]
        return np.array(rows)

    def _shift_table(self, leave_out: Group | None = None) -> tuple[list[Group], np.ndarray]:
        """Every training group and its shift, optionally without one group."""
        groups = [g for g in sorted(self.shifts_) if g != leave_out]
        return groups, np.array([self.shifts_[g] for g in groups])

    def _training_pairs(self, perturbation: str, exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Control profiles and shifts of the training contexts of `perturbation`, optionally minus one context."""
        contexts = [t for t in self._contexts_seen(perturbation) if t != exclude]
        controls = np.array([self.control_means_[t] for t in contexts])
        return controls, np.array([self.shifts_[(t, perturbation)] for t in contexts])

    def _transfer_candidates(self) -> list[Candidate]:
        """mean_shift first (it wins ties), then the per-gene, low-rank and two-way ridges."""
        cands = [MEAN_SHIFT] + [Candidate("per_gene", lam) for lam in self.penalties]
        cands += [Candidate("low_rank", lam, k) for k in self.ranks for lam in self.penalties]
        pert_penalties = (*self.penalties, np.inf)
        return cands + [Candidate("two_way", lp, None, lt) for lp in pert_penalties for lt in self.penalties]

    def _transfer_folds(self) -> list[Group]:
        """Training groups whose perturbation has another training context (at most max_cv_folds, seeded)."""
        folds = [(t, p) for (t, p) in sorted(self.shifts_) if len(self._contexts_seen(p)) >= 2]
        if len(folds) > self.max_cv_folds:
            keep = np.random.default_rng(self.random_state).choice(
                len(folds), self.max_cv_folds, replace=False
            )
            folds = [folds[i] for i in sorted(keep)]
        return folds

    def _fold_predictions(self, cands: list[Candidate], fold: Group) -> list[np.ndarray]:
        """Every candidate's prediction of the shift of `fold` from the training groups other than it."""
        t, p = fold
        c, d = self._training_pairs(p, exclude=t)
        basis = pca_basis(self._pseudobulks(leave_out=fold), self._max_rank())
        table = self._shift_table(leave_out=fold)
        preds = []
        for cand in cands:
            if cand.family == "two_way":
                preds.append(TwoWayRidge.fit(*table, cand).predict(t, p))
            else:
                preds.append(transfer_shift(c, d, self.control_means_[t], basis, cand))
        return preds

    def _select_transfer(self) -> tuple[Candidate, dict[str, float]]:
        """Leave-one-group-out CV of the transfer candidates; the choice and the mean errors by name."""
        cands, folds = self._transfer_candidates(), self._transfer_folds()
        errors = np.zeros((len(cands), len(folds)))
        for j, fold in enumerate(folds):
            truth = self.shifts_[fold]
            errors[:, j] = [np.mean((pred - truth) ** 2) for pred in self._fold_predictions(cands, fold)]
        return cands[select(errors, reference=0, min_gain=self.min_cv_gain)], mean_errors(cands, errors)

    def _label_shifts(self, leave_out: str | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Gene lists and context-averaged shifts of the training labels, optionally without one label."""
        labels = sorted({p for (_, p) in self.shifts_} - {leave_out})
        return [self.task_.genes_of(p) for p in labels], np.array([self._mean_shift(p) for p in labels])

    def _combo_candidates(self) -> list[Candidate]:
        """Multi-hot ridges: every penalty, at full rank and at every rank of the grid."""
        return [Candidate("multi_hot", lam, k) for k in (None, *self.ranks) for lam in self.penalties]

    def _combo_folds(self) -> list[str]:
        """Training combinations whose genes all still appear in another training label (all such labels if
        fewer than 2 combinations qualify)."""
        labels = sorted({p for (_, p) in self.shifts_})
        counts = Counter(g for p in labels for g in set(self.task_.genes_of(p)))
        folds = [p for p in labels if all(counts[g] >= 2 for g in self.task_.genes_of(p))]
        combos = [p for p in folds if len(self.task_.genes_of(p)) >= 2]
        return combos if len(combos) >= 2 else folds

    def _select_combo(self) -> tuple[Candidate, dict[str, float]]:
        """Leave-one-label-out CV of the multi-hot ridges; the least mean squared error wins."""
        cands, folds = self._combo_candidates(), self._combo_folds()
        if len(folds) < 2:
            return MULTI_HOT_DEFAULT, {}
        errors = np.zeros((len(cands), len(folds)))
        for j, p in enumerate(folds):
            labels, shifts = self._label_shifts(leave_out=p)
            truth, genes = self._mean_shift(p), self.task_.genes_of(p)
            axes = pca_basis(shifts, self._max_rank())[1]
            preds = [MultiHotRidge.fit(labels, shifts, c, axes).predict(genes) for c in cands]
            errors[:, j] = [np.mean((pred - truth) ** 2) for pred in preds]
        return cands[int(np.argmin(errors.mean(axis=1)))], mean_errors(cands, errors)

    # -- predict --------------------------------------------------------------------------------------------

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """Control cells plus the shift of the chosen transfer model (p seen) or of the multi-hot model."""
        return self._profile_shift_output(control, perturbation, context)

    def _transfer_shift(self, perturbation: str, context: str | None, c_new: np.ndarray) -> np.ndarray:
        """The chosen transfer model's shift for `perturbation` in a context with control profile `c_new`."""
        if self.two_way_ is not None:
            return self.two_way_.predict("all" if context is None else context, perturbation)
        c, d = self._training_pairs(perturbation)
        return transfer_shift(c, d, c_new, self.basis_, self.transfer_model_)

    def _combo_shift(self, perturbation: str) -> np.ndarray:
        """Multi-hot ridge prediction for a label never seen in training; NotApplicable if a gene is unseen."""
        genes = self.task_.genes_of(perturbation)
        if self.combo_ridge_ is None or not self.combo_ridge_.covers(genes):
            raise NotApplicable(f"{perturbation!r} was never seen in training, nor were all of its genes")
        return self.combo_ridge_.predict(genes)
