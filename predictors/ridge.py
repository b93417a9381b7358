"""Closed-form ridge models of pseudobulk shifts and the choice among them: LinearCV's candidates (transfer to a
new context, multi-hot for combinations), their linear algebra, and the margin a candidate must clear in CV."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Group = tuple[str, str]  # (context, perturbation)


@dataclass(frozen=True)
class Candidate:
    """One model of LinearCV's CV grid: a family, its ridge penalties and its rank (None: full rank)."""

    family: str  # "mean_shift", "per_gene", "low_rank", "two_way" (context transfer) or "multi_hot" (combinations)
    penalty: float = np.inf  # on the slopes / kernel weights / perturbation effects / multi-hot coefficients
    rank: int | None = None
    context_penalty: float = np.inf  # two_way only: on the context effects

    def __str__(self) -> str:
        if self.family == "mean_shift":
            return self.family
        extra = "" if self.rank is None else f", k={self.rank}"
        extra += "" if self.family != "two_way" else f", context_penalty={self.context_penalty:g}"
        return f"{self.family}(penalty={self.penalty:g}{extra})"


MEAN_SHIFT = Candidate("mean_shift")

MULTI_HOT_DEFAULT = Candidate("multi_hot", 0.1)


def pca_basis(profiles: np.ndarray, max_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal axes (as rows) of a pseudobulks x genes matrix."""
    center = profiles.mean(axis=0)
    centered = profiles - center
    eigval, eigvec = np.linalg.eigh(
        centered @ centered.T
    )  # few pseudobulks, many genes: the small Gram matrix
    order = np.argsort(eigval)[::-1][:max_rank]
    order = order[eigval[order] > 1e-10 * max(eigval.max(initial=0.0), 1e-300)]
    return center, (eigvec[:, order].T @ centered) / np.sqrt(eigval[order])[:, None]


def per_gene_ridge(c_train: np.ndarray, d_train: np.ndarray, c_new: np.ndarray, penalty: float) -> np.ndarray:
    """Per gene, d = a + b (c - c_mean) with ridge on b (penalty x the mean per-gene sum of squares of c)."""
    c_mean, d_mean = c_train.mean(axis=0), d_train.mean(axis=0)
    cc, dc = c_train - c_mean, d_train - d_mean
    ss = (cc**2).sum(axis=0)
    denom = ss + penalty * ss.mean()
    slope = np.divide((cc * dc).sum(axis=0), denom, out=np.zeros_like(denom), where=denom > 0)
    return d_mean + slope * (c_new - c_mean)


def low_rank_ridge(
    c_train: np.ndarray,
    d_train: np.ndarray,
    c_new: np.ndarray,
    basis: tuple[np.ndarray, np.ndarray],
    cand: Candidate,
) -> np.ndarray:
    """Ridge of the whole shift on the control's top-k PC scores, in kernel form (penalty x tr K / n)."""
    center, axes = basis
    z = (c_train - center) @ axes[: cand.rank].T
    z_new = (c_new - center) @ axes[: cand.rank].T
    z_mean, d_mean = z.mean(axis=0), d_train.mean(axis=0)
    zc = z - z_mean
    gram = zc @ zc.T
    scale = np.trace(gram) / len(gram)
    if scale <= 0:
        return d_mean
    weights = np.linalg.solve(gram + cand.penalty * scale * np.eye(len(gram)), zc @ (z_new - z_mean))
    return d_mean + weights @ (d_train - d_mean)


def transfer_shift(
    c_train: np.ndarray,
    d_train: np.ndarray,
    c_new: np.ndarray,
    basis: tuple[np.ndarray, np.ndarray],
    cand: Candidate,
) -> np.ndarray:
    """Shift in a context with control profile c_new, from the (control, shift) pairs of p's training contexts."""
    if cand.family == "mean_shift" or len(c_train) < 2:
        return d_train.mean(axis=0)
    if cand.family == "per_gene":
        return per_gene_ridge(c_train, d_train, c_new, cand.penalty)
    return low_rank_ridge(c_train, d_train, c_new, basis, cand)


def ridge_solve(design: np.ndarray, target: np.ndarray, penalties: np.ndarray) -> np.ndarray:
    """Closed-form ridge coefficients with one penalty per design column (tiny for unpenalized columns)."""
    return np.linalg.solve(design.T @ design + np.diag(np.maximum(penalties, 1e-10)), design.T @ target)


def one_hot(labels: list[str], levels: list[str]) -> np.ndarray:
    """Indicator matrix of `labels` over `levels` (a label outside the levels gives a zero row)."""
    index = {v: i for i, v in enumerate(levels)}
    out = np.zeros((len(labels), len(levels)))
    for row, label in enumerate(labels):
        if label in index:
            out[row, index[label]] = 1.0
    return out


@dataclass(frozen=True)
class TwoWayRidge:
    """A fitted ridge of every training shift on intercept + one-hot(context) + one-hot(perturbation)."""

    contexts: list[str]
    perturbations: list[str]
    coef: np.ndarray  # (1 + contexts + perturbations) x genes

    @classmethod
    def fit(cls, groups: list[Group], shifts: np.ndarray, cand: Candidate) -> TwoWayRidge:
        """Unpenalized intercept; context effects penalized by context_penalty, perturbation effects by penalty
        (an infinite penalty drops that factor)."""
        contexts = sorted({t for t, _ in groups}) if np.isfinite(cand.context_penalty) else []
        perts = sorted({p for _, p in groups}) if np.isfinite(cand.penalty) else []
        design = cls._design(groups, contexts, perts)
        penalties = np.r_[
            0.0, np.full(len(contexts), cand.context_penalty), np.full(len(perts), cand.penalty)
        ]
        return cls(contexts, perts, ridge_solve(design, shifts, penalties))

    @staticmethod
    def _design(groups: list[Group], contexts: list[str], perts: list[str]) -> np.ndarray:
        """Intercept column, then context indicators, then perturbation indicators."""
        ones = np.ones((len(groups), 1))
        return np.hstack(
            [ones, one_hot([t for t, _ in groups], contexts), one_hot([p for _, p in groups], perts)]
        )

    def predict(self, context: str, perturbation: str) -> np.ndarray:
        """Intercept + the context's effect + the perturbation's effect (0 for a level never seen)."""
        return (self._design([(context, perturbation)], self.contexts, self.perturbations) @ self.coef)[0]


def multi_hot_design(labels: list[list[str]], vocab: list[str]) -> np.ndarray:
    """Intercept column, then one 0/1 column per gene of the vocabulary (genes outside it are ignored)."""
    index = {g: i for i, g in enumerate(vocab)}
    design = np.zeros((len(labels), 1 + len(vocab)))
    design[:, 0] = 1.0
    for row, genes in enumerate(labels):
        design[row, [1 + index[g] for g in genes if g in index]] = 1.0
    return design


@dataclass(frozen=True)
class MultiHotRidge:
    """A fitted ridge of label shifts on multi-hot gene encodings, optionally on the shifts' top-k PC axes."""

    vocab: list[str]
    coef: np.ndarray  # (1 + vocab) x (rank or genes)
    center: np.ndarray  # mean training shift
    axes: np.ndarray | None  # rank x genes, or None for the full gene space

    @classmethod
    def fit(
        cls, labels: list[list[str]], shifts: np.ndarray, cand: Candidate, axes: np.ndarray | None = None
    ) -> MultiHotRidge:
        """Ridge (intercept unpenalized) of the centered shifts, or of their scores on the top-k PC axes (`axes`:
        the shifts' principal axes if already computed)."""
        vocab = sorted({g for genes in labels for g in genes})
        center = shifts.mean(axis=0)
        target = shifts - center
        if cand.rank is not None:
            axes = (pca_basis(shifts, cand.rank)[1] if axes is None else axes)[: cand.rank]
            target = target @ axes.T
        else:
            axes = None
        design = multi_hot_design(labels, vocab)
        penalties = np.r_[0.0, np.full(len(vocab), cand.penalty)]
        return cls(vocab, ridge_solve(design, target, penalties), center, axes)

    def covers(self, genes: list[str]) -> bool:
        """Whether every gene of a label appears in the training vocabulary."""
        return bool(genes) and all(g in self.vocab for g in genes)

    def predict(self, genes: list[str]) -> np.ndarray:
        """Predicted shift of the label made of `genes`."""
        scores = (multi_hot_design([genes], self.vocab) @ self.coef)[0]
        return self.center + (scores if self.axes is None else scores @ self.axes)


def select(errors: np.ndarray, reference: int, min_gain: float) -> int:
    """The candidate with the least mean CV error if it cuts the reference's by more than one paired standard
    error across folds and by at least the fraction `min_gain`, else the reference. Picking the best of many
    candidates on few, correlated folds overfits the CV: without the margin, pure noise often beats the reference."""
    n_folds = errors.shape[1]
    if n_folds < 2:
        return reference
    best = int(np.argmin(errors.mean(axis=1)))
    gain = errors[reference] - errors[best]
    threshold = max(gain.std(ddof=1) / np.sqrt(n_folds), min_gain * errors[reference].mean(), 1e-12)
    return best if gain.mean() > threshold else reference


def mean_errors(cands: list[Candidate], errors: np.ndarray) -> dict[str, float]:
    """Mean CV error of every candidate, by name (empty without folds)."""
    return (
        {str(c): float(e) for c, e in zip(cands, errors.mean(axis=1), strict=True)} if errors.shape[1] else {}
    )
