"""The scoreboard: a registry of named metrics, each with a direction, scored on one held-out context.

Definitions (Δ_true = mean(real) − mean(control), Δ_pred = mean(pred) − mean(control), per gene):

* Top-K genes rank genes by |Δ| descending; ties are broken by gene order (the lower column index wins, a
  stable sort), so the set is always well defined. When every |Δ| is equal (e.g. a constant Δ_pred, such as
  predicting the control cells themselves), the ranking carries no information and top-K metrics are NaN;
  `jaccard_K` is also NaN when there are no more than K genes (every gene would be selected, J = 1 trivially).
  `r_deg100` and `r2_mean_deg100` use all genes when there are fewer than 100.
* Pearson correlations are NaN (no warning) when either side is constant.
* Distribution metrics (`energy_distance`, `mmd_rbf`) compare pred and real cells in the `embed` space (a PCA
  fitted on the split's training cells), or on the raw genes when `embed` is None. Both are biased
  V-statistics, exactly 0 for identical samples.
* `mmd_rbf` uses k(x, y) = exp(−‖x − y‖² / h) with h the median squared distance between distinct pairs of
  *real* cells (so every predictor on a split is scored with the same kernel); if that is 0 or undefined, the
  pooled pred+real sample is used, then h = 1.
* `var_ratio` is the median over genes of log((var_pred + ε) / (var_real + ε)), ε = 1e-6, with per-gene
  sample variances (ddof=1); a prediction with a single cell has variance 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from benchmark.errors import PertbenchError
from benchmark.task import dense

VAR_EPS = 1e-6
"""Added to both per-gene variances in `var_ratio` so genes with zero variance give finite logs."""

DEG_K = 100
"""Number of top true-Δ genes used by the `*_deg100` metrics."""

_CONSTANT_RTOL = 1e-12
_PCA_OVERSAMPLES = 10
_PCA_POWER_ITERS = 5


@dataclass(frozen=True, eq=False)
class EvalData:
    """The cells one prediction is scored on: real control, real perturbed and predicted perturbed cells.

    Arrays are cells x genes, log-normalized, with the same genes in the same order; they are stored as dense
    float64. Derived quantities (means, Δs, embeddings) are computed once and cached on the instance.
    """

    control: np.ndarray
    real: np.ndarray
    pred: np.ndarray
    embed: Callable[[np.ndarray], np.ndarray] | None = None
    others: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("control", "real", "pred"):
            value = dense(getattr(self, name))
            if value.ndim != 2 or value.shape[0] == 0:
                raise ValueError(
                    f"EvalData.{name} must be a non-empty cells x genes matrix, got {value.shape}"
                )
            object.__setattr__(self, name, value)
        genes = {self.control.shape[1], self.real.shape[1], self.pred.shape[1]}
        if len(genes) != 1:
            raise ValueError(
                f"control, real and pred have different gene counts: "
                f"{self.control.shape[1]}, {self.real.shape[1]}, {self.pred.shape[1]}"
            )

    def with_embedded(self, real_z: np.ndarray, pred_z: np.ndarray) -> EvalData:
        """Seed the cached embeddings (e.g. row subsets of cells embedded once) so they are not recomputed."""
        self.__dict__["real_z"], self.__dict__["pred_z"] = real_z, pred_z
        return self

    @cached_property
    def mean_control(self) -> np.ndarray:
        return self.control.mean(axis=0)

    @cached_property
    def mean_real(self) -> np.ndarray:
        return self.real.mean(axis=0)

    @cached_property
    def mean_pred(self) -> np.ndarray:
        return self.pred.mean(axis=0)

    @cached_property
    def delta_true(self) -> np.ndarray:
        return self.mean_real - self.mean_control

    @cached_property
    def delta_pred(self) -> np.ndarray:
        return self.mean_pred - self.mean_control

    @cached_property
    def real_z(self) -> np.ndarray:
        """Real perturbed cells in the embedding space (raw genes when there is no embedding)."""
        return _embed(self.embed, self.real)

    @cached_property
    def pred_z(self) -> np.ndarray:
        """Predicted cells in the embedding space (raw genes when there is no embedding)."""
        return _embed(self.embed, self.pred)

    @cached_property
    def deg_index(self) -> np.ndarray | None:
        """Indices of the top-100 genes by |Δ_true| (all genes if fewer); None when the ranking is undefined."""
        return top_k_genes(self.delta_true, min(DEG_K, self.delta_true.size))


@dataclass(frozen=True)
class Metric:
    """A named metric: its function, direction (None = best at 0) and whether it compares means or cells."""

    name: str
    fn: Callable[[EvalData], float]
    higher_is_better: bool | None
    description: str
    kind: str


METRICS: dict[str, Metric] = {}
"""All registered metrics, by name, in registration order."""


def register_metric(
    name: str, higher_is_better: bool | None, kind: str, description: str
) -> Callable[[Callable[[EvalData], float]], Callable[[EvalData], float]]:
    """Decorator adding a metric function to METRICS under `name`."""
    if kind not in ("mean", "distribution"):
        raise ValueError(f"metric kind must be 'mean' or 'distribution', got {kind!r}")

    def decorate(fn: Callable[[EvalData], float]) -> Callable[[EvalData], float]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, higher_is_better, description, kind)
        return fn

    return decorate


def score(data: EvalData, names: Iterable[str] | None = None) -> dict[str, float]:
    """Every requested metric (all by default) on `data`, as floats (NaN where undefined)."""
    names = list(METRICS) if names is None else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise PertbenchError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {n: float(METRICS[n].fn(data)) for n in names}


# ---------------------------------------------------------------------------------------------- helpers


def _embed(embed: Callable[[np.ndarray], np.ndarray] | None, x: np.ndarray) -> np.ndarray:
    """Apply the embedding (identity when None) and return dense float64."""
    return x if embed is None else np.asarray(embed(x), dtype=np.float64)


def is_constant(x: np.ndarray) -> bool:
    """Whether a vector has no spread beyond float rounding (so correlations and rankings are undefined)."""
    if x.size == 0:
        return True
    scale = max(1.0, float(np.max(np.abs(x))))
    return float(np.ptp(x)) <= _CONSTANT_RTOL * scale


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN (silently) when either vector is constant or has fewer than 2 entries."""
    if x.size < 2 or is_constant(x) or is_constant(y):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    r = float(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)))
    return float(np.clip(r, -1.0, 1.0))


def top_k_genes(delta: np.ndarray, k: int) -> np.ndarray | None:
    """Indices of the k largest |delta|, ties to the lower index; None when all |delta| are equal."""
    magnitude = np.abs(delta)
    if is_constant(magnitude):
        return None
    return np.argsort(-magnitude, kind="stable")[:k]


def jaccard_top_k(data: EvalData, k: int) -> float:
    """Jaccard index of the top-k genes by |Δ_true| and by |Δ_pred|; NaN when undefined."""
    if data.delta_true.size <= k:
        return float("nan")
    true_top, pred_top = top_k_genes(data.delta_true, k), top_k_genes(data.delta_pred, k)
    if true_top is None or pred_top is None:
        return float("nan")
    a, b = set(true_top.tolist()), set(pred_top.tolist())
    return len(a & b) / len(a | b)


def energy_distance_v(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| as a V-statistic (diagonals included)."""
    xy = cdist(x, y).mean()
    xx = cdist(x, x).mean()
    yy = cdist(y, y).mean()
    return float(2.0 * xy - xx - yy)


def median_sq_distance(x: np.ndarray) -> float:
    """Median squared Euclidean distance over distinct pairs of rows (NaN with fewer than 2 rows)."""
    if x.shape[0] < 2:
        return float("nan")
    d2 = cdist(x, x, "sqeuclidean")
    return float(np.median(d2[np.triu_indices(x.shape[0], k=1)]))


def rbf_bandwidth(real: np.ndarray, pred: np.ndarray) -> float:
    """The RBF scale h: median squared real-real distance, else pooled, else 1 (see module docstring)."""
    for sample in (real, np.vstack([real, pred])):
        h = median_sq_distance(sample)
        if np.isfinite(h) and h > 0:
            return h
    return 1.0


def mmd_rbf_v(x: np.ndarray, y: np.ndarray, h: float) -> float:
    """Squared MMD, biased V-statistic, with kernel exp(−‖a − b‖² / h)."""
    kxx = np.exp(-cdist(x, x, "sqeuclidean") / h).mean()
    kyy = np.exp(-cdist(y, y, "sqeuclidean") / h).mean()
    kxy = np.exp(-cdist(x, y, "sqeuclidean") / h).mean()
    return float(kxx + kyy - 2.0 * kxy)


def gene_variance(x: np.ndarray) -> np.ndarray:
    """Per-gene sample variance (ddof=1); zeros for a single cell."""
    if x.shape[0] < 2:
        return np.zeros(x.shape[1])
    return x.var(axis=0, ddof=1)


# ---------------------------------------------------------------------------------------------- metrics


@register_metric("r", True, "mean", "Pearson correlation of Δ_pred and Δ_true over all genes")
def _r(data: EvalData) -> float:
    return pearson(data.delta_true, data.delta_pred)


@register_metric("jaccard_25", True, "mean", "Jaccard overlap of the top-25 genes by |Δ| (true vs pred)")
def _jaccard_25(data: EvalData) -> float:
    return jaccard_top_k(data, 25)


@register_metric("jaccard_50", True, "mean", "Jaccard overlap of the top-50 genes by |Δ| (true vs pred)")
def _jaccard_50(data: EvalData) -> float:
    return jaccard_top_k(data, 50)


@register_metric("jaccard_100", True, "mean", "Jaccard overlap of the top-100 genes by |Δ| (true vs pred)")
def _jaccard_100(data: EvalData) -> float:
    return jaccard_top_k(data, 100)


@register_metric("r_deg100", True, "mean", "Pearson of Δ_pred and Δ_true on the top-100 genes by |Δ_true|")
def _r_deg100(data: EvalData) -> float:
    idx = data.deg_index
    return float("nan") if idx is None else pearson(data.delta_true[idx], data.delta_pred[idx])


@register_metric(
    "r2_mean_deg100",
    True,
    "mean",
    "Squared Pearson of mean(pred) and mean(real) on the top-100 genes by |Δ_true|",
)
def _r2_mean_deg100(data: EvalData) -> float:
    idx = data.deg_index
    return float("nan") if idx is None else pearson(data.mean_real[idx], data.mean_pred[idx]) ** 2


@register_metric(
    "mse_mean", False, "mean", "Mean squared error between mean(pred) and mean(real) over all genes"
)
def _mse_mean(data: EvalData) -> float:
    return float(np.mean((data.mean_pred - data.mean_real) ** 2))


@register_metric(
    "energy_distance",
    False,
    "distribution",
    "Energy distance (V-statistic) between pred and real cells, embedded",
)
def _energy_distance(data: EvalData) -> float:
    return energy_distance_v(data.pred_z, data.real_z)


@register_metric(
    "mmd_rbf", False, "distribution", "Squared MMD (RBF, median-heuristic bandwidth on real cells), embedded"
)
def _mmd_rbf(data: EvalData) -> float:
    return mmd_rbf_v(data.pred_z, data.real_z, rbf_bandwidth(data.real_z, data.pred_z))


@register_metric(
    "var_ratio", None, "distribution", "Median over genes of log(var_pred / var_real); 0 best, < 0 collapsed"
)
def _var_ratio(data: EvalData) -> float:
    # Genes constant in both samples (on sparse data: most genes, all zero) say nothing about dispersion and
    # would pull the median to 0, so only genes that vary in the real or the predicted cells count.
    pred_var, real_var = gene_variance(data.pred), gene_variance(data.real)
    varying = (pred_var > VAR_EPS) | (real_var > VAR_EPS)
    if not varying.any():
        return 0.0
    return float(np.median(np.log((pred_var[varying] + VAR_EPS) / (real_var[varying] + VAR_EPS))))


# ---------------------------------------------------------------------------------------------- embedding


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


def fit_embedding(train_x, n_components: int = 50, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """PCA of the training cells, deterministic for a seed; sparse input stays sparse (implicit centring).

    Randomized SVD (Halko et al.) of the centred matrix, applied as X @ M − 1 (μ @ M), so a 6,000 x 7,000
    sparse matrix is never densified. `n_components` is capped at min(cells − 1, genes).
    """
    x = sp.csr_matrix(train_x) if sp.issparse(train_x) else np.asarray(train_x, dtype=np.float64)
    k = min(n_components, x.shape[0] - 1, x.shape[1])
    if k < 1:
        raise ValueError(f"cannot fit a PCA embedding on {x.shape[0]} cells x {x.shape[1]} genes")
    mu = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
    components = _randomized_components(x, mu, k, np.random.default_rng(seed))
    return PCAEmbedding(mean=mu, components=components)


def _randomized_components(x, mu: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Top-k right singular vectors of x − μ by a randomized range finder; signs fixed for determinism."""

    def right(m: np.ndarray) -> np.ndarray:  # (x − μ) @ m
        return np.asarray(x @ m) - (mu @ m)[None, :]

    def left(m: np.ndarray) -> np.ndarray:  # (x − μ).T @ m
        return np.asarray(x.T @ m) - np.outer(mu, m.sum(axis=0))

    width = min(k + _PCA_OVERSAMPLES, min(x.shape))
    q = rng.standard_normal((x.shape[1], width))
    for _ in range(_PCA_POWER_ITERS):  # LU keeps the power iterations stable and is cheaper than QR
        q = scipy.linalg.lu(right(q), permute_l=True)[0]
        q = scipy.linalg.lu(left(q), permute_l=True)[0]
    q = np.linalg.qr(right(q))[0]
    vt = np.linalg.svd(left(q).T, full_matrices=False)[2][:k]
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    return vt * np.where(signs == 0, 1.0, signs)[:, None]
