"""The scoring embedding: an exact PCA of a split's training cells, in which the cell-level scores compare cells."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg

from benchmark.core.task import Task, dense, lognorm_batches, take
from benchmark.scoring.metrics import SUBSAMPLE_SEED

EMBED_COMPONENTS = 50
"""Principal components of the scoring embedding (the distribution scores and the figures' PCA)."""
PCA_MAX_CELLS = 20_000
"""Most training cells the scoring PCA (`fit_embedding_cells`) is fit on; a larger training set is represented by
a seeded uniform sample of this many (`pca_rows`). The PCA only places the at most K scored cells of each side, and
20,000 cells pin down its top 50 axes; every committed dataset has fewer training cells, so is fit on all."""

SCATTER_CHUNK_VALUES = 1 << 24
"""Values (cells x genes) of one dense chunk when the PCA scatter matrix is summed chunk by chunk (128 MB)."""

EXACT_PCA_MAX_DIM = 12000
"""Largest min(cells, genes) for the dense eigendecomposition in `fit_embedding`; beyond it, ARPACK."""

DENSE_EIGH_MAX_GENES = 4000
"""Most genes for which the batched PCA's scatter matrix goes to the dense eigensolver; beyond, ARPACK finds its top
components (8,000 genes: the dense solver took 50 s of a 310k-cell screen's fixed cost, ARPACK a few seconds, the
same subspace to machine precision). Every committed dataset is fit in one batch, by `fit_embedding`."""


@dataclass(frozen=True, eq=False)
class PCAEmbedding:
    """A fitted linear projection x -> (x − mean) @ components.T; picklable, accepts dense or sparse cells."""

    mean: np.ndarray
    components: np.ndarray

    def __call__(self, x) -> np.ndarray:
        """Project cells (rows) into the PCA space."""
        if sp.issparse(x):
            return np.asarray(x @ self.components.T, dtype=np.float64) - self.mean @ self.components.T
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T


def fit_embedding(train_x, n_components: int = EMBED_COMPONENTS) -> Callable[[np.ndarray], np.ndarray]:
    """Exact PCA of the training cells (zero-centred), signs fixed; sparse input is never densified.

    The top-k eigenvectors of the smaller of the centred Gram matrix (cells ≤ genes) and the covariance
    matrix (X^T X − n μμ^T), by a dense symmetric eigensolver, so the subspace is the exact one sklearn's
    PCA(svd_solver='full') and scanpy's PCA find; when both sides exceed EXACT_PCA_MAX_DIM, ARPACK on the
    implicit covariance with a fixed start vector (converged to machine precision). Each component's sign makes
    its largest-|loading| gene positive (sklearn's svd_flip rule): deterministic, no seed. `n_components` is
    capped at min(cells − 1, genes) and at the rank.
    """
    x = sp.csr_matrix(train_x, dtype=np.float64) if sp.issparse(train_x) else np.asarray(train_x, np.float64)
    n, p = x.shape
    k = min(n_components, n - 1, p)
    if k < 1:
        raise ValueError(f"cannot fit a PCA embedding on {n} cells x {p} genes")
    mu = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
    if min(n, p) <= EXACT_PCA_MAX_DIM:
        components = _gram_components(x, mu, k) if n <= p else _covariance_components(x, mu, k)
    else:
        components = _arpack_components(x, mu, k)
    return _signed(mu, components)


def pca_rows(n: int) -> np.ndarray:
    """Training cells the scoring PCA is fit on: all n up to PCA_MAX_CELLS, else PCA_MAX_CELLS sorted rows drawn
    uniformly by a generator seeded with (SUBSAMPLE_SEED, n)."""
    if n <= PCA_MAX_CELLS:
        return np.arange(n)
    return np.sort(np.random.default_rng([SUBSAMPLE_SEED, n]).choice(n, size=PCA_MAX_CELLS, replace=False))


def fit_embedding_cells(adata, task: Task, n_components: int = EMBED_COMPONENTS) -> PCAEmbedding:
    """`fit_embedding` of the log-normalized training cells of `adata` (in memory, a view or backed).

    Up to PCA_MAX_CELLS cells, all of them; beyond, the `pca_rows` sample. All cells in one batch (at most
    BATCH_CELLS: the committed datasets) is exactly `fit_embedding(task.lognorm(adata))`. Otherwise, with
    more cells than genes, the mean and the scatter matrix X^T X are summed over dense row chunks (BLAS, O(chunk +
    genes²) memory) and the covariance solver runs on them: the same exact PCA of those cells. With more genes
    than cells (or both past EXACT_PCA_MAX_DIM) the batches are stacked and fit as one matrix.
    """
    sampled = adata.n_obs > PCA_MAX_CELLS
    if sampled:
        adata = take(adata, pca_rows(adata.n_obs))
    batches = lognorm_batches(adata, task)
    first_rows, first = next(batches)
    n, p = adata.n_obs, adata.n_vars
    if first_rows == slice(0, n) and not sampled:
        return fit_embedding(first, n_components=n_components)
    k = min(n_components, n - 1, p)
    if n <= p or min(n, p) > EXACT_PCA_MAX_DIM or k < 1:
        rest = [x for _, x in batches]
        stack = sp.vstack([first, *rest], format="csr") if sp.issparse(first) else np.vstack([first, *rest])
        return fit_embedding(stack, n_components=n_components)
    total, scatter = np.zeros(p), np.zeros((p, p))
    chunk = max(1, SCATTER_CHUNK_VALUES // p)
    for _, x in ((first_rows, first), *batches):
        for start in range(0, x.shape[0], chunk):
            rows = dense(x[start : start + chunk])
            total += rows.sum(axis=0)
            scatter += rows.T @ rows
    mu = total / n
    c = scatter - n * np.outer(mu, mu)
    c = (c + c.T) / 2.0
    components = _top_eigh(c, k)[1].T if p <= DENSE_EIGH_MAX_GENES else _top_eigsh(c, k)
    return _signed(mu, components)


def _signed(mu: np.ndarray, components: np.ndarray) -> PCAEmbedding:
    """The embedding with each component's largest-|loading| gene positive (sklearn's svd_flip rule)."""
    signs = np.sign(components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)])
    return PCAEmbedding(mean=mu, components=components * np.where(signs == 0, 1.0, signs)[:, None])


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def _top_eigh(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenpairs of a symmetric matrix, largest first, dropping numerically zero ones."""
    d = a.shape[0]
    w, v = scipy.linalg.eigh(a, subset_by_index=[d - k, d - 1])
    w, v = w[::-1], v[:, ::-1]
    keep = w > max(float(w[0]), 0.0) * d * np.finfo(np.float64).eps
    if not keep.any():
        raise ValueError("cannot fit a PCA embedding: the training cells do not vary")
    return w[keep], v[:, keep]


def _top_eigsh(a: np.ndarray, k: int) -> np.ndarray:
    """The k leading eigenvectors (rows, largest eigenvalue first) of a symmetric PSD matrix by ARPACK, started
    from a fixed vector and converged to machine precision, so the result is deterministic."""
    d = a.shape[0]
    w, v = scipy.sparse.linalg.eigsh(a, k=k, which="LA", v0=np.ones(d) / np.sqrt(d), tol=0)
    order = np.argsort(-w)
    w, v = w[order], v[:, order]
    keep = w > max(float(w[0]), 0.0) * d * np.finfo(np.float64).eps
    if not keep.any():
        raise ValueError("cannot fit a PCA embedding: the training cells do not vary")
    return v[:, keep].T


def _gram_components(x, mu: np.ndarray, k: int) -> np.ndarray:
    """Components from the centred Gram matrix (X − μ)(X − μ)^T, n x n."""
    g = _dense(x @ x.T).astype(np.float64)
    xm = np.asarray(x @ mu).ravel()
    g = g - xm[:, None] - xm[None, :] + mu @ mu
    w, u = _top_eigh((g + g.T) / 2.0, k)
    comps = (np.asarray(x.T @ u).T - np.outer(u.sum(axis=0), mu)) / np.sqrt(w)[:, None]
    return comps / np.linalg.norm(comps, axis=1, keepdims=True)


def _covariance_components(x, mu: np.ndarray, k: int) -> np.ndarray:
    """Components from the scatter matrix X^T X − n μμ^T, genes x genes."""
    c = _dense(x.T @ x).astype(np.float64) - x.shape[0] * np.outer(mu, mu)
    return _top_eigh((c + c.T) / 2.0, k)[1].T


def _arpack_components(x, mu: np.ndarray, k: int) -> np.ndarray:
    """Components by ARPACK on the implicit scatter matrix (both dimensions too large for a dense solver)."""
    n, p = x.shape

    def matvec(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v).ravel()
        xv = np.asarray(x @ v).ravel() - mu @ v
        return np.asarray(x.T @ xv).ravel() - mu * xv.sum()

    op = scipy.sparse.linalg.LinearOperator((p, p), matvec=matvec, dtype=np.float64)
    w, v = scipy.sparse.linalg.eigsh(op, k=k, which="LA", v0=np.ones(p) / np.sqrt(p), tol=0)
    return v[:, np.argsort(-w)].T
