"""What `bench run --save-predictions` writes per target: the saved prediction, and the target's real and predicted
cells in cell-eval's input layout, so cell-eval can cross-check bench's scores.

The saved prediction (`saved_prediction`) holds the predicted cells as scored: X the log-normalized values
(float32; non-negative under the engine's clip rule, `evaluate.CLIP_NEGATIVE_PREDICTIONS`), var the dataset's
var, obs the source control cell's id (obs name and `source_cell`), its obs columns, and bench's labels.

cell-eval 0.8 (`cell-eval run -ar real.h5ad -ap pred.h5ad --pert-col target_gene --control-pert non-targeting`,
or `cell_eval.MetricsEvaluator`) reads two AnnData with the same genes in the same order, each holding the
control cells under the control label. Here real = the target's control cells + its held-out real cells, and
pred = the same control cells + the predicted cells, both as the log-normalized values bench scored (so deltas
against the control agree: cell-eval's `pearson_delta` is bench's `r`, its `mse` bench's `mse_mean`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.utils import make_index_unique

from benchmark.core.task import Task
from benchmark.data.splits import Target

PERT_COL = "target_gene"
"""cell-eval's default perturbation column (`cell-eval run --pert-col`)."""
CONTROL = "non-targeting"
"""cell-eval's default control label (`cell-eval run --control-pert`); the dataset's control cells get it."""
CONTEXT_COL = "context"
REAL_FILE, PRED_FILE = "real.h5ad", "pred.h5ad"
PRED_SUFFIX = "-pred"
"""Appended to predicted rows' names, which are their source control cells' ids (obs names stay unique)."""
SOURCE_CELL = "source_cell"
"""obs column of a saved prediction: the id of the control cell each predicted cell was predicted from."""


def saved_prediction(
    values: np.ndarray,
    predicted: AnnData,
    control: AnnData,
    task: Task,
    target: Target,
    split_name: str,
    seed: int,
) -> AnnData:
    """The predicted cells as saved: X = the values scored (float32), var = the dataset's var.

    When the predictor returned one cell per control cell (the protocol's default), each predicted cell keeps its
    control cell's id as obs name and in `source_cell`, and that cell's obs columns from the dataset, with the
    perturbation column set to the predicted perturbation. Bench's own columns `perturbation`, `context`,
    `split` and `seed` label every cell (what `bench score` reads by default).
    """
    if predicted.n_obs == control.n_obs:
        obs = control.obs.copy()
        obs[SOURCE_CELL] = control.obs_names.astype(str)
        if task.perturbation_key in obs:
            obs[task.perturbation_key] = target.perturbation
    else:  # a predictor that samples its own number of cells: no link to a control cell
        obs = predicted.obs.copy()
        obs[SOURCE_CELL] = ""
        if task.context_key is not None:
            obs[task.context_key] = target.context
        obs[task.perturbation_key] = target.perturbation
    obs["perturbation"] = target.perturbation
    obs["context"] = target.context
    obs["split"] = split_name
    obs["seed"] = seed
    for key in (task.perturbation_key, task.context_key, "perturbation", "context", "split"):
        if key is not None and key in obs:
            obs[key] = pd.Categorical(obs[key].astype(str))
    obs.index = make_index_unique(obs.index.astype(str))  # a sampling predictor's own names may repeat
    return AnnData(X=np.asarray(values, dtype=np.float32), obs=obs, var=control.var.copy())


def cell_eval_pair(
    control: AnnData,
    control_x: np.ndarray,
    real: AnnData,
    real_x: np.ndarray,
    saved: AnnData,
    target: Target,
) -> tuple[AnnData, AnnData]:
    """(real, pred) for cell-eval: `control` / `real` are the dataset's cells (their obs is kept) with their
    log-normalized values; `saved` is the prediction as saved (`saved_prediction`)."""
    columns = [c for c in control.obs.columns if c not in (PERT_COL, CONTEXT_COL, SOURCE_CELL)]
    control_obs = _obs(control.obs, columns, CONTROL, target.context, control.obs_names)
    real_obs = _obs(real.obs, columns, target.perturbation, target.context, None)
    pred_obs = _obs(saved.obs, columns, target.perturbation, target.context, saved.obs[SOURCE_CELL])
    pred_obs.index = saved.obs_names.astype(str) + PRED_SUFFIX
    var = control.var.copy()

    def adata(obs: list[pd.DataFrame], x: list[np.ndarray]) -> AnnData:
        matrix = sp.csr_matrix(np.vstack(x), dtype=np.float32)
        return AnnData(X=matrix, obs=_categorical(pd.concat(obs)), var=var.copy())

    real_pair = adata(
        [control_obs.drop(columns=SOURCE_CELL), real_obs.drop(columns=SOURCE_CELL)], [control_x, real_x]
    )
    pred_pair = adata([control_obs, pred_obs], [control_x, np.asarray(saved.X)])
    return real_pair, pred_pair


def _obs(obs: pd.DataFrame, columns: list[str], label: str, context: str, source) -> pd.DataFrame:
    """The layout's columns (target_gene, context, source_cell) followed by the dataset's obs columns."""
    out = obs.reindex(columns=columns).copy()
    out.index = obs.index.astype(str)
    out.insert(0, SOURCE_CELL, "" if source is None else np.asarray(source, dtype=str))
    out.insert(0, CONTEXT_COL, context)
    out.insert(0, PERT_COL, label)
    return out


def _categorical(obs: pd.DataFrame) -> pd.DataFrame:
    """String columns as categoricals (what h5ad writes cleanly and scanpy expects)."""
    for column in obs.columns:
        values = obs[column]
        if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype):
            obs[column] = pd.Categorical(values.astype(object).where(values.isna(), values.astype(str)))
    return obs
