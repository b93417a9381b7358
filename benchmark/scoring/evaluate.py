"""The scoring engine: cells in, scores out; no MLflow, no files, so any caller scores exactly as `bench run` does.

For one held-out target it scores the prediction with every registered metric, computes the target's noise
ceiling, scores the reference baseline (mean_shift, or additive for combinations) and the `mean_oracle` (the
held-out control cells plus the TRUE mean shift of the held-out group: what the mean alone explains), and the
normalized scores (0 = reference, 1 = ceiling). `other_deltas` gives the real Δ of the split's other groups,
which `discrimination` compares the prediction against.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.pseudobulk import Group
from benchmark.core.task import dense
from benchmark.data.splits import split_kind as split_kind_of
from benchmark.scoring.ceiling import noise_ceiling, normalized_score
from benchmark.scoring.metrics import METRICS, EvalData, score

CEILING_REPEATS = 20
MAX_OTHER_GROUPS = 500
"""Most comparison groups `discrimination` ranks a target against: a larger pool (a screen's 1,999 other
perturbations) is cut to a seeded sample of this many, the same for every predictor and seed (`capped_pool`).
Each of a target's 22 discrimination calls (prediction, mean oracle, 20 ceiling halves) is one L1 distance per
group over every gene, so a 2,000-perturbation x 8,000-gene screen spends 0.3 s a target there uncapped. The
sampled fraction has a standard error of at most 0.022 per target; every committed dataset has at most 33 other
groups, so their scores do not move."""
Embedding = Callable[[np.ndarray], np.ndarray] | None

CLIP_NEGATIVE_PREDICTIONS = True
"""The harness's one rule for negative predicted log-normalized values, for every predictor alike: clip at 0.

Log-normalized expression is never negative, so every set of predicted cells the engine scores (the predictor's,
the reference baseline's, the mean oracle's) is clipped at 0, and saved predictions hold the clipped values: what
is saved is what was scored, and a saved prediction is valid input for scanpy, cell-eval and `bench run --data`.
Unclipped, shift baselines held small negative values (51-57% of the entries on kang2018, 10-15% of the absolute
mass, min -0.4 to -1.4). Measured on kang2018 holdout_context (7 splits, seed 0), clipping moves mean_shift's
mean r 0.835 -> 0.839 and energy_distance 2.280 -> 2.195, and the mean oracle's r 1.000 -> 0.979 and
jaccard_100 1.000 -> 0.781 (a valid-expression oracle cannot always hold the true mean). False restores the
old rule (scored and saved as returned) for comparison."""


@dataclass
class TargetScores:
    """Every score of one prediction of one target, by metric name (NaN where undefined)."""

    metrics: dict[str, float]
    ceiling: dict[str, float]
    oracle: dict[str, float]
    reference: dict[str, float] = field(default_factory=dict)
    reference_name: str = ""  # "" when no reference baseline applies to the target
    normalized: dict[str, float] = field(default_factory=dict)


@dataclass
class TargetResult:
    """The outcome for one held-out target of one split and seed."""

    split: str
    seed: int
    perturbation: str
    context: str
    status: str  # schema.STATUS_OK | schema.STATUS_NOT_APPLICABLE
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    ceiling: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    oracle: dict[str, float] = field(default_factory=dict)
    normalized: dict[str, float] = field(default_factory=dict)
    reference_name: str = ""
    run_id: str = ""
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return (
            self.split
            if self.split.endswith(f"{self.context}/{self.perturbation}")
            else (f"{self.split}:{self.context}/{self.perturbation}")
        )

    def add_scores(self, scores: TargetScores) -> TargetResult:
        """Copy an engine result into this record."""
        self.metrics, self.ceiling, self.oracle = scores.metrics, scores.ceiling, scores.oracle
        self.reference, self.reference_name = scores.reference, scores.reference_name
        self.normalized = scores.normalized
        return self


def as_scored(cells: np.ndarray) -> np.ndarray:
    """Predicted cells as the engine scores and saves them: clipped at 0 under CLIP_NEGATIVE_PREDICTIONS."""
    cells = dense(cells)
    return np.maximum(cells, 0.0) if CLIP_NEGATIVE_PREDICTIONS else cells


def checked_prediction(name: str, predicted: AnnData, control: AnnData) -> np.ndarray:
    """The predicted cells as the engine scores them (`as_scored`), after checking the protocol: an AnnData with
    cells, the control's genes in order, finite values. Every caller that scores a predictor's output uses it."""
    if not isinstance(predicted, AnnData):
        raise PertbenchError(f"predictor {name} returned {type(predicted).__name__}, expected an AnnData")
    if predicted.n_obs == 0:
        raise PertbenchError(f"predictor {name} returned no cells")
    if list(predicted.var_names) != list(control.var_names):
        raise PertbenchError(
            f"predictor {name} returned genes that differ from the control's (names or order)"
        )
    values = dense(predicted.X)
    if not np.isfinite(values).all():
        raise PertbenchError(f"predictor {name} returned NaN or infinite values")
    return as_scored(values)


def score_prediction(
    control_x: np.ndarray,
    real_x: np.ndarray,
    pred_x: np.ndarray,
    embed: Embedding,
    others: np.ndarray | None = None,
    metrics: list[str] | None = None,
    shared: EvalData | None = None,
) -> tuple[dict[str, float], EvalData]:
    """One prediction's scores (every registered metric, or `metrics`), the cells passing `as_scored` first; also
    the EvalData, whose real side (`shared`) a second prediction of the same target can reuse."""
    data = EvalData(control=control_x, real=real_x, pred=as_scored(pred_x), embed=embed, others=others)
    if shared is not None:  # the real side (DE test, embedding, variances) is the same for every prediction
        data.sharing_real(shared)
    return score(data, metrics), data


def mean_oracle(control_x: np.ndarray, real_x: np.ndarray) -> np.ndarray:
    """The control cells plus the true mean shift mean(real) − mean(control): a perfect mean, the control's shape."""
    control_x, real_x = dense(control_x), dense(real_x)
    return control_x + (real_x.mean(axis=0) - control_x.mean(axis=0))


def evaluate_target(
    control_x: np.ndarray,
    real_x: np.ndarray,
    pred_x: np.ndarray,
    embed: Embedding,
    references: Mapping[str, np.ndarray],
    others: np.ndarray | None = None,
    seed: int = 0,
    ceiling_repeats: int = CEILING_REPEATS,
) -> TargetScores:
    """Score a prediction, its ceiling, its reference and the mean oracle identically.

    Every set of predicted cells (`pred_x`, the references, the oracle) passes `as_scored` first.
    `references` maps a baseline's name to its predicted cells for this target; the first entry anchors the
    normalized scores (empty: normalized scores are NaN). `others` holds the real Δ of the split's other groups
    (rows), used by `discrimination`. The ceiling's random halves are drawn from `seed`.
    """
    control_x, real_x = dense(control_x), dense(real_x)
    first: list[EvalData] = []

    def scored(cells: np.ndarray) -> dict[str, float]:
        values, data = score_prediction(
            control_x, real_x, cells, embed, others, shared=first[0] if first else None
        )
        if not first:
            first.append(data)
        return values

    metrics = scored(pred_x)
    ceiling = noise_ceiling(
        control_x, real_x, embed, n_repeats=ceiling_repeats, seed=seed, others=others, shared=first[0]
    )
    oracle = scored(mean_oracle(control_x, real_x))
    reference_name, reference = "", {}
    if references:
        reference_name, cells = next(iter(references.items()))
        # A prediction that IS the reference (mean_shift, and linear with one training context, on every target
        # of a screen) has its scores already: the engine is deterministic, so scoring it again gives the same.
        same = np.array_equal(as_scored(cells), first[0].pred)
        reference = dict(metrics) if same else scored(cells)
    normalized = {
        k: normalized_score(v, reference.get(k, np.nan), ceiling.get(k, np.nan), METRICS[k].higher_is_better)
        for k, v in metrics.items()
    }
    return TargetScores(metrics, ceiling, oracle, reference, reference_name, normalized)


def other_deltas(
    means: Mapping[Group, np.ndarray],
    sizes: Mapping[Group, int],
    control_label: str,
    split_kind: str,
    perturbation: str,
    context: str,
    min_cells: int,
) -> np.ndarray | None:
    """Real Δ (group mean − its context's control mean) of the target's comparison groups, one row each.

    A kind that compares contexts (holdout_context): the same perturbation in every other context, so
    `discrimination` tests context specificity. Other kinds: the other perturbations of the target's context. A group counts when it
    and its context's control have at least `min_cells` cells. None when no group qualifies.
    """
    return OtherDeltas(means, sizes, control_label, split_kind)(perturbation, context, min_cells)


def capped_pool(n: int, perturbation: str, context: str) -> np.ndarray:
    """Positions of the comparison groups a target keeps: all n, or a sorted sample of MAX_OTHER_GROUPS seeded by
    the target alone (so every predictor and seed compares against the same groups)."""
    if n <= MAX_OTHER_GROUPS:
        return np.arange(n)
    rng = np.random.default_rng([zlib.crc32(f"{context}\0{perturbation}".encode()), n])
    return np.sort(rng.choice(n, size=MAX_OTHER_GROUPS, replace=False))


class OtherDeltas:
    """`other_deltas` for target after target of one split, each comparison pool built once: the groups of a
    context (or, on holdout_context, the contexts of a perturbation) as one matrix, from which a target takes
    every row but its own (at most MAX_OTHER_GROUPS of them). On a screen with 2,000 perturbations in one context,
    that is one 2,000 x genes matrix per context instead of one per target; the rows and their order are those of
    `other_deltas`."""

    def __init__(
        self,
        means: Mapping[Group, np.ndarray],
        sizes: Mapping[Group, int],
        control_label: str,
        split_kind: str,
    ) -> None:
        self.means, self.sizes, self.control_label, self.split_kind = means, sizes, control_label, split_kind
        self.across = split_kind_of(split_kind).compares_contexts
        self._pool: tuple[str, list[Group], np.ndarray | None] | None = None

    def __call__(self, perturbation: str, context: str, min_cells: int) -> np.ndarray | None:
        """The real Δ of the target's comparison groups, as `other_deltas` returns them."""
        key = perturbation if self.across else context
        if self._pool is None or self._pool[0] != key:
            self._pool = (key, *self._build(perturbation, context, min_cells))
        _, groups, rows = self._pool
        if rows is None:
            return None
        mine = context if self.across else perturbation
        keep = np.flatnonzero([(g[0] if self.across else g[1]) != mine for g in groups])
        keep = keep[capped_pool(keep.size, perturbation, context)]
        return rows[keep] if keep.size else None

    def _build(
        self, perturbation: str, context: str, min_cells: int
    ) -> tuple[list[Group], np.ndarray | None]:
        """Every usable group of the pool (the target's own included), sorted, and their Δ rows."""
        control = self.control_label
        if self.across:
            groups = [(t, p) for (t, p) in self.means if p == perturbation]
        else:
            groups = [(t, p) for (t, p) in self.means if t == context and p != control]
        usable = [
            g
            for g in sorted(groups)
            if self.sizes.get(g, 0) >= min_cells and self.sizes.get((g[0], control), 0) >= min_cells
        ]
        if not usable:
            return [], None
        rows = np.asarray([self.means[g] - self.means[(g[0], control)] for g in usable], dtype=np.float64)
        return usable, rows
