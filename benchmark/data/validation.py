"""Checks that a dataset fits its task, raising a one-line `PertbenchError` that names the problem.

All checks read sparse matrices through their stored values (`.data`) and never densify a whole dataset.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.task import BATCH_CELLS, Task
from benchmark.data.export import PRED_FILE, SOURCE_CELL
from benchmark.tracking.schema import CELL_EVAL_DIR

MAX_LISTED = 12
"""How many labels an error message lists before eliding the rest."""

COUNTS_LOOKING_MAX = 30.0
"""Log-normalized X cannot exceed this: log1p of a whole cell's 1e4 target sum is 9.2, and even log1p(1e12) is
27.6; a larger value is raw counts or a broken transform, and would put nonsense (e.g. energy 3e28) on the board."""


def validate(adata: AnnData, task: Task, min_cells: int = 1) -> None:
    """Check `adata` against `task`; every context must hold at least `min_cells` control cells."""
    _check_not_empty(adata)
    _check_obs_keys(adata, task)
    _check_control_present(adata, task)
    _check_control_lookalikes(adata, task)
    if adata.isbacked:  # X on disk: check it a batch of cells at a time
        top = max(
            _check_values(adata[start : start + BATCH_CELLS].X, task.expression)
            for start in range(0, adata.n_obs, BATCH_CELLS)
        )
    else:
        top = _check_values(adata.X, task.expression)
    if top <= 0:
        raise PertbenchError(
            f"X is all zeros ({adata.n_obs} cells x {adata.n_vars} genes): nothing to benchmark"
        )
    _check_context_controls(adata, task, min_cells)


def check_label(adata: AnnData, task: Task, perturbation: str) -> None:
    """Raise unless `perturbation` is a label of the dataset's perturbation column."""
    known = np.unique(task.perturbations(adata))
    if perturbation not in set(known):
        raise PertbenchError(
            f"unknown perturbation label {perturbation!r} in obs[{task.perturbation_key!r}]; "
            f"known labels: {format_labels(known)}"
        )


def check_context(adata: AnnData, task: Task, context: str) -> None:
    """Raise unless `context` is a label of the dataset's context column."""
    known = np.unique(task.contexts(adata))
    if context not in set(known):
        where = f"obs[{task.context_key!r}]" if task.context_key else "the dataset (it has no context key)"
        raise PertbenchError(
            f"unknown context label {context!r} in {where}; known labels: {format_labels(known)}"
        )


def check_group_size(n: int, needed: int, what: str) -> None:
    """Raise when a group (`what`, e.g. "context 'B' control") has fewer cells than a split needs."""
    if n < needed:
        raise PertbenchError(
            f"{what} has {n} cell{'s' if n != 1 else ''}, fewer than the {needed} this split needs; "
            "choose another split or held-out group, or lower the minimum group size"
        )


def format_labels(labels: Iterable[object], limit: int = MAX_LISTED) -> str:
    """Sorted, comma-separated labels, elided after `limit` so messages stay one readable line."""
    items = sorted({str(x) for x in labels})
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _check_not_empty(adata: AnnData) -> None:
    """An empty matrix has nothing to benchmark."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise PertbenchError(f"empty data: {adata.n_obs} cells x {adata.n_vars} genes")
    if adata.X is None:
        layers = ", ".join(adata.layers.keys())
        raise PertbenchError(
            "X is empty"
            + (f" (the data are in layers: {layers}); copy the layer to use into X" if layers else "")
        )


def _check_obs_keys(adata: AnnData, task: Task) -> None:
    """The task's perturbation and context keys must be obs columns."""
    for role, key in (("perturbation", task.perturbation_key), ("context", task.context_key)):
        if key is not None and key not in adata.obs.columns:
            raise PertbenchError(
                f"{role} key {key!r} is not an obs column; available: {format_labels(adata.obs.columns)}"
            )
        if key is not None and adata.obs[key].isna().any():
            n = int(adata.obs[key].isna().sum())
            raise PertbenchError(
                f"{role} key {key!r} has {n} cell(s) with a missing label; label or drop them"
            )


def _check_control_present(adata: AnnData, task: Task) -> None:
    """The control label must occur in the perturbation column."""
    if not task.is_control(adata).any():
        labels = np.unique(task.perturbations(adata))
        saved = (
            f"; a saved prediction ({SOURCE_CELL} in obs) holds predicted cells only: run on the cell-eval "
            f"export written beside it ({CELL_EVAL_DIR}/{PRED_FILE}, which adds the control cells), or score it "
            "with `bench score --predictions`"
            if SOURCE_CELL in adata.obs.columns
            else ""
        )
        raise PertbenchError(
            f"control label {task.control_label!r} not found in obs[{task.perturbation_key!r}]; "
            f"labels present: {format_labels(labels)}{saved}"
        )


def _check_control_lookalikes(adata: AnnData, task: Task) -> None:
    """A label equal to the control's but for whitespace or case is a typo that would be benchmarked as a
    perturbation: an error naming both."""
    control = task.control_label
    key = control.strip().casefold()
    labels = pd.unique(np.asarray(adata.obs[task.perturbation_key]).astype(str))
    alike = [str(label) for label in labels if label != control and label.strip().casefold() == key]
    if alike:
        raise PertbenchError(
            f"obs[{task.perturbation_key!r}] holds {alike[0]!r} beside the control label {control!r}: they differ only "
            "in whitespace or case; make them one label"
        )


def _stored_values(x) -> np.ndarray:
    """The explicitly stored values of a matrix: `.data` for sparse, the flattened array for dense."""
    if sp.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x).ravel()


def _check_values(x, expression: str) -> float:
    """X must be finite, non-negative, integer for counts, and not look like raw counts for lognorm; returns its
    largest value (0 for an all-zero matrix)."""
    values = _stored_values(x)
    if values.size == 0:
        return 0.0
    finite = np.isfinite(values)
    if not finite.all():
        bad = values[~finite]
        raise PertbenchError(
            f"X holds {bad.size} NaN or infinite value(s), e.g. {bad[0]}; clean or drop them"
        )
    if values.min() < 0:
        scale = "log-normalized values" if expression == "lognorm" else "counts"
        raise PertbenchError(
            f"X holds negative values (min {values.min():.4g}) where {scale} are expected; "
            "pass log1p of size-normalized expression (not scaled or centered data)"
        )
    integer = values == np.round(values)
    if expression == "counts" and not integer.all():
        example = values[~integer][0]
        raise PertbenchError(
            f"counts expected but X holds non-integer values, e.g. {example:.4g}; "
            "pass raw counts, or use expression='lognorm' for log-normalized data"
        )
    if expression == "lognorm" and values.max() > COUNTS_LOOKING_MAX:
        top = values.max()
        if integer.all():
            raise PertbenchError(
                f"log-normalized values expected but X looks like raw counts (all integers, max {top:.0f}); "
                "use expression='counts'"
            )
        raise PertbenchError(
            f"log-normalized values expected but X holds {int((values > COUNTS_LOOKING_MAX).sum())} value(s) above "
            f"{COUNTS_LOOKING_MAX:g} (max {top:.4g}), impossible for log1p of size-normalized expression; "
            "pass log1p(counts / library size * 1e4), or raw counts with expression='counts'"
        )
    return float(values.max())


def _check_context_controls(adata: AnnData, task: Task, min_cells: int) -> None:
    """Every context needs control cells to predict from."""
    names, codes = np.unique(task.contexts(adata), return_inverse=True)
    counts = np.bincount(
        codes[task.is_control(adata)], minlength=names.size
    )  # one pass, however many contexts
    for context, n in zip(names, counts.tolist(), strict=True):
        if n < min_cells:
            where = f"context {context!r} (obs[{task.context_key!r}])"
            if n == 0:
                raise PertbenchError(
                    f"{where} has no control cells ({task.control_label!r}); drop it or add controls"
                )
            raise PertbenchError(f"{where} has {n} control cells, fewer than the {min_cells} required")
