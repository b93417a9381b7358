"""The plain linear baseline: one ridge family per task, its penalty chosen from a fixed grid by cross-validation
on the training cells only (never on a test target), and the choice recorded in `selection_`.

For the multi-family selector (41 candidates) see LinearCV in predictors/baselines.py (`linear_cv`).
"""

from __future__ import annotations

import math

import numpy as np
from anndata import AnnData

from benchmark.core.errors import NotApplicable
from benchmark.core.task import Task
from predictors.baselines import _ProfileShiftBaseline
from predictors.params import ValidatedParams, check_positive_grid
from predictors.ridge import multi_hot_design

PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0)
"""The default grid: decades around 1, in the units each ridge below states; infinity is always added."""


def ridge_transfer(c: np.ndarray, d: np.ndarray, c_new: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge of the shifts d (contexts x genes) on the control profiles c (contexts x genes), evaluated at c_new.

    Intercept unpenalized (c and d centred over the rows); the slopes are penalized by penalty x tr(K) / n, K the
    Gram matrix of the centred profiles, so the penalty is relative to the profiles' own spread. Kernel form:
    one n x n solve, n the number of contexts. An infinite penalty, or fewer than 2 contexts, gives the mean shift.
    """
    d_mean = d.mean(axis=0)
    if len(c) < 2 or not math.isfinite(penalty):
        return d_mean
    c_mean = c.mean(axis=0)
    cc = c - c_mean
    gram = cc @ cc.T
    scale = np.trace(gram) / len(gram)
    if scale <= 0:
        return d_mean
    weights = np.linalg.solve(gram + penalty * scale * np.eye(len(gram)), cc @ (c_new - c_mean))
    return d_mean + weights @ (d - d_mean)


def ridge_multi_hot(
    labels: list[list[str]], shifts: np.ndarray, genes: list[str], penalty: float
) -> np.ndarray:
    """Ridge of the label shifts (labels x genes) on their multi-hot gene encodings, evaluated at `genes`.

    Unpenalized intercept; each gene's coefficient penalized by `penalty` (the design is 0/1, so a gene seen in
    n labels is shrunk by about n / (n + penalty)). Computed as x_new' (D'D + P)^-1 D' Y via one solve of the
    (genes of the vocabulary + 1)-sized system with x_new as right-hand side. An infinite penalty gives the mean
    training shift.
    """
    if not math.isfinite(penalty):
        return shifts.mean(axis=0)
    vocab = sorted({g for label in labels for g in label})
    design = multi_hot_design(labels, vocab)
    x_new = multi_hot_design([genes], vocab)[0]
    penalties = np.r_[1e-10, np.full(len(vocab), penalty)]
    w = np.linalg.solve(design.T @ design + np.diag(penalties), x_new)
    return (design @ w) @ shifts


def choose(grid: list[float], errors: np.ndarray, default: float) -> float:
    """The penalty with the least mean CV error (the grid runs from the largest penalty down, so a tie goes to
    the stronger penalty); `default` without folds."""
    if errors.shape[1] == 0:
        return default
    return grid[int(np.argmin(errors.mean(axis=1)))]


def _name(penalty: float) -> str:
    return f"penalty={penalty:g}"


class Linear(ValidatedParams, _ProfileShiftBaseline):
    """Ridge regression on training pseudobulks, one family per kind of target, the penalty chosen by CV.

    Context transfer (perturbation p seen in training contexts T_p, predicted in context t* from t*'s control
    cells): ridge of the shift vectors d[t, p] on the control profiles c[t] (mean log-normalized control cells of
    t, all genes as features), across t in T_p, evaluated at t*'s control profile (see ridge_transfer). Ridge on
    the whole profile is ridge on all of its principal-component scores, shrinking the low-variance directions
    most, so no rank needs choosing; the infinite penalty is the mean_shift baseline. The penalty (one for all
    perturbations) is chosen from {inf} + `penalties` by leave-one-training-context-out CV: each training context
    t in turn is held out, and every shift d[t, p] whose perturbation keeps >= 2 other training contexts is
    predicted from those contexts (a fold's error: the mean squared error over its shifts); least mean error over
    folds wins, ties to the stronger penalty. Without any such fold the penalty is infinite (mean shift).

    Labels never seen in training (combinations of genes seen in other labels): ridge of every training label's
    shift (averaged over its contexts, as in MeanShift) on its multi-hot gene encoding (see ridge_multi_hot). The
    penalty is chosen from the same grid by leave-one-training-combination-out CV over the training combinations
    whose genes all appear in other training labels; without any, it is the grid's smallest penalty (closest to
    additive). NotApplicable when a gene of p was never seen in training.

    Deterministic (no random_state): every fold is used. After fit, `selection_` (JSON-serializable) records for
    both kinds of target the protocol, the chosen penalty, the mean CV error of every penalty and the folds.
    """

    #: Nothing for `bench tune` to search: the penalty is already chosen by the inner CV above (an empty space is
    #: evaluated once, so a config records linear's validation score under the same protocol as the others).
    search_space: dict[str, tuple] = {}

    def __init__(self, penalties: tuple[float, ...] = PENALTIES):
        self.penalties = penalties
        self._validate()

    def _validate(self) -> None:
        """The grid: finite penalties > 0 (the infinite one is always added)."""
        check_positive_grid("penalties", self.penalties)

    def _grid(self) -> list[float]:
        """inf, then the given penalties from the largest down (so that ties go to the stronger penalty)."""
        return [math.inf, *sorted({float(p) for p in self.penalties}, reverse=True)]

    # -- fit ------------------------------------------------------------------------------------------------

    def fit(self, train: AnnData, task: Task) -> Linear:
        """Learn the pseudobulk state and choose both penalties by cross-validation on the training cells."""
        super().fit(train, task)
        grid = self._grid()
        folds, errors = self._transfer_cv(grid)
        self.transfer_penalty_ = choose(grid, errors, math.inf)
        combo_folds, combo_errors = self._combo_cv(grid)
        self.combo_penalty_ = choose(grid, combo_errors, grid[-1])
        self.selection_ = {
            "transfer": self._record(
                "leave-one-training-context-out", self.transfer_penalty_, grid, errors, folds
            ),
            "combination": self._record(
                "leave-one-training-combination-out", self.combo_penalty_, grid, combo_errors, combo_folds
            ),
        }
        return self

    @staticmethod
    def _record(
        protocol: str, chosen: float, grid: list[float], errors: np.ndarray, folds: list[str]
    ) -> dict:
        """One entry of selection_: plain strings, floats and lists only."""
        cv_error = (
            {_name(p): float(e) for p, e in zip(grid, errors.mean(axis=1), strict=True)} if folds else {}
        )
        return {"protocol": protocol, "chosen": _name(chosen), "cv_error": cv_error, "folds": folds}

    def _training_pairs(self, perturbation: str, exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Control profiles and shifts of the training contexts of `perturbation`, optionally minus one context."""
        contexts = [t for t in self._contexts_seen(perturbation) if t != exclude]
        controls = np.array([self.control_means_[t] for t in contexts])
        return controls, np.array([self.shifts_[(t, perturbation)] for t in contexts])

    def _transfer_cv(self, grid: list[float]) -> tuple[list[str], np.ndarray]:
        """Leave-one-training-context-out errors (penalties x folds) and the contexts used as folds."""
        folds, columns = [], []
        for t in sorted(self.control_means_):
            perts = [p for (s, p) in sorted(self.shifts_) if s == t and len(self._contexts_seen(p)) >= 3]
            if not perts:
                continue
            column = np.zeros(len(grid))
            for p in perts:
                c, d = self._training_pairs(p, exclude=t)
                truth = self.shifts_[(t, p)]
                column += [
                    np.mean((ridge_transfer(c, d, self.control_means_[t], lam) - truth) ** 2) for lam in grid
                ]
            folds.append(t)
            columns.append(column / len(perts))
        return folds, np.array(columns).T.reshape(len(grid), len(folds))

    def _label_shifts(self, leave_out: str | None = None) -> tuple[list[str], list[list[str]], np.ndarray]:
        """Training labels (optionally without one), their genes and their context-averaged shifts."""
        labels = sorted({p for (_, p) in self.shifts_} - {leave_out})
        shifts = np.array([self._mean_shift(p) for p in labels]).reshape(len(labels), len(self.genes_))
        return labels, [self.task_.genes_of(p) for p in labels], shifts

    def _combo_cv(self, grid: list[float]) -> tuple[list[str], np.ndarray]:
        """Leave-one-training-combination-out errors (penalties x folds) and the combinations used as folds."""
        labels, genes, _ = self._label_shifts()
        folds, columns = [], []
        for p, p_genes in zip(labels, genes, strict=True):
            if len(p_genes) < 2:
                continue
            _, others, shifts = self._label_shifts(leave_out=p)
            seen = {g for label in others for g in label}
            if not all(g in seen for g in p_genes):
                continue
            truth = self._mean_shift(p)
            folds.append(p)
            columns.append(
                [np.mean((ridge_multi_hot(others, shifts, p_genes, lam) - truth) ** 2) for lam in grid]
            )
        return folds, np.array(columns).T.reshape(len(grid), len(folds))

    # -- predict --------------------------------------------------------------------------------------------

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """Control cells plus the ridge shift: transfer from p's training contexts, or multi-hot for a new label."""
        return self._profile_shift_output(control, perturbation, context)

    def _transfer_shift(self, perturbation: str, context: str | None, c_new: np.ndarray) -> np.ndarray:
        """Ridge of p's training shifts on their contexts' control profiles, evaluated at `c_new`."""
        c, d = self._training_pairs(perturbation)
        return ridge_transfer(c, d, c_new, self.transfer_penalty_)

    def _combo_shift(self, perturbation: str) -> np.ndarray:
        """Multi-hot ridge prediction for a label never seen in training; NotApplicable if a gene is unseen."""
        labels, genes, shifts = self._label_shifts()
        target = self.task_.genes_of(perturbation)
        seen = {g for label in genes for g in label}
        if not target or not all(g in seen for g in target):
            raise NotApplicable(f"{perturbation!r} was never seen in training, nor were all of its genes")
        return ridge_multi_hot(genes, shifts, target, self.combo_penalty_)
