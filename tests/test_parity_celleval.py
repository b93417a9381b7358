"""Parity with cell-eval (pinned test dependency, the `celleval` extra) and scanpy on kang2018's CD8T split.

Where a definition coincides, cell-eval's own code computes the reference value:
- `r` is cell-eval's `pearson_delta` (same control cells for real and predicted Δ);
- `discrimination` ranks the same L1 distances as `discrimination_score_l1`, which divides by the number of
  groups including the target: with k others, cell-eval = 1 − (1 − ours)·k / (k + 1);
- the DE test is pdex's Wilcoxon (cell-eval's DE engine): our BH q-values equal its `fdr`; `de_overlap_100` and
  `de_direction` are cell-eval's `overlap_at_100` and `de_direction_match` applied to those DE tables with |Δ|
  (log-space mean difference) as the ranking key instead of |log2 fold change| (see benchmark.scoring.metrics).
The energy and MMD distances are reproduced from scanpy's PCA of the training cells, as the README says.
"""

from __future__ import annotations

# Imported, not skipped: the dev extra installs cell-eval (pinned in constraints.txt), so a missing one fails.
import cell_eval  # noqa: F401
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial.distance import cdist

from benchmark.scoring.embedding import fit_embedding
from benchmark.scoring.metrics import EvalData, score


@pytest.fixture(scope="module")
def kang(shared_data_dir):
    """CD8T split: training cells, CD8T controls, real and linear-predicted cells, other contexts' real cells."""
    from benchmark.core.task import dense
    from benchmark.data.datasets import load_dataset
    from benchmark.data.splits import make_splits
    from predictors.registry import make_predictor

    dataset = load_dataset("kang2018", data_dir=shared_data_dir)
    adata, task = dataset.adata, dataset.task
    splits = make_splits(adata, task, "holdout_context", seed=0)
    split = next(s for s in splits if s.targets[0].context == "CD8T")
    pos = adata.obs_names.get_indexer
    target = split.targets[0]
    train = adata[pos(list(split.train_cells))].copy()
    control = adata[pos(list(target.control_cells))].copy()
    linear = make_predictor("linear")[1].fit(train, task)
    pred = dense(linear.predict(control, target.perturbation, target.context).X)
    others = {
        s.targets[0].context: dense(task.lognorm(adata[pos(list(s.targets[0].test_cells))]))
        for s in splits
        if s is not split
    }
    return {
        "train": sp.csr_matrix(task.lognorm(train), dtype=np.float64),
        "control": dense(task.lognorm(control)),
        "real": dense(task.lognorm(adata[pos(list(target.test_cells))])),
        "pred": np.maximum(pred, 0.0),  # pdex reads log1p values: no negative predictions
        "others": others,
        "genes": list(adata.var_names),
    }


def _pair(kang):
    """cell-eval's PerturbationAnndataPair: groups control, CD8T and the other contexts, real and predicted."""
    from cell_eval._types import PerturbationAnndataPair

    def adata(blocks: dict[str, np.ndarray]) -> AnnData:
        x = np.vstack(list(blocks.values())).astype(np.float32)
        labels = np.concatenate([[name] * len(block) for name, block in blocks.items()])
        obs = pd.DataFrame({"group": labels}, index=[f"c{i}" for i in range(len(labels))])
        return AnnData(X=x, obs=obs, var=pd.DataFrame(index=kang["genes"]))

    real = adata({"control": kang["control"], "CD8T": kang["real"], **kang["others"]})
    pred = adata({"control": kang["control"], "CD8T": kang["pred"], **kang["others"]})
    return PerturbationAnndataPair(real=real, pred=pred, pert_col="group", control_pert="control")


def _ours(kang) -> tuple[EvalData, dict[str, float]]:
    c = kang["control"].astype(np.float32).astype(np.float64)  # the precision cell-eval reads
    others = np.array(
        [o.astype(np.float32).astype(np.float64).mean(0) - c.mean(0) for o in kang["others"].values()]
    )
    data = EvalData(c, kang["real"].astype(np.float32), kang["pred"].astype(np.float32), others=others)
    return data, score(data, ["r", "discrimination", "de_overlap_100", "de_direction"])


def test_r_and_discrimination_match_cell_eval(kang):
    from cell_eval.metrics._anndata import discrimination_score, pearson_delta

    pair = _pair(kang)
    _, ours = _ours(kang)
    assert ours["r"] == pytest.approx(pearson_delta(pair)["CD8T"], abs=1e-6)
    k = len(kang["others"])
    theirs = discrimination_score(pair, metric="l1")["CD8T"]
    assert theirs == pytest.approx(1 - (1 - ours["discrimination"]) * k / (k + 1), abs=1e-9)


def test_de_scores_match_cell_eval_on_pdex_tables(kang):
    import polars as pl
    from cell_eval._evaluator import _build_de_comparison
    from cell_eval._types import initialize_de_comparison
    from cell_eval.metrics._de import DEDirectionMatch, de_overlap_metric

    data, ours = _ours(kang)
    de = _build_de_comparison(anndata_pair=_pair(kang), num_threads=1)
    index = {g: i for i, g in enumerate(kang["genes"])}

    def table(frame: pl.DataFrame, delta: np.ndarray) -> pl.DataFrame:
        frame = frame.filter(pl.col("target") == "CD8T")
        d = delta[[index[g] for g in frame["feature"].to_list()]]
        return frame.with_columns(
            pl.Series("log2_fold_change", d), pl.Series("abs_log2_fold_change", np.abs(d))
        )

    real_table, pred_table = table(de.real.data, data.delta_true), table(de.pred.data, data.delta_pred)
    for frame, ours_q in ((real_table, data.de_real), (pred_table, data.de_pred)):
        fdr = frame["fdr"].to_numpy()[np.argsort([index[g] for g in frame["feature"].to_list()])]
        np.testing.assert_allclose(fdr, ours_q, rtol=1e-6, atol=1e-30)  # pdex reports float32
    comparison = initialize_de_comparison(real=real_table, pred=pred_table)
    assert de_overlap_metric(comparison, k=100)["CD8T"] == pytest.approx(ours["de_overlap_100"], abs=1e-12)
    assert DEDirectionMatch()(comparison)["CD8T"] == pytest.approx(ours["de_direction"], abs=1e-12)
    assert np.isfinite(ours["de_overlap_100"]) and (data.de_real < 0.05).sum() > 20  # 33 on CD8T


def test_distances_reproduce_with_scanpy_pca(kang):
    """README recipe: sc.pp.pca(train, n_comps=50, zero_center=True, svd_solver='arpack'), fix signs, project."""
    import scanpy as sc

    train = AnnData(X=kang["train"])
    sc.pp.pca(train, n_comps=50, zero_center=True, svd_solver="arpack")
    pcs = train.varm["PCs"].T
    pcs = pcs * np.sign(pcs[np.arange(50), np.argmax(np.abs(pcs), axis=1)])[:, None]
    mean = np.asarray(kang["train"].mean(axis=0)).ravel()
    zp, zr = (kang["pred"] - mean) @ pcs.T, (kang["real"] - mean) @ pcs.T

    def offdiag(m: np.ndarray) -> float:
        return (m.sum() - np.trace(m)) / (len(m) * (len(m) - 1))

    energy = 2 * cdist(zp, zr).mean() - offdiag(cdist(zp, zp)) - offdiag(cdist(zr, zr))
    d2 = cdist(zr, zr, "sqeuclidean")
    h = np.median(d2[np.triu_indices(len(zr), k=1)])
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / h)  # noqa: E731
    mmd = offdiag(k(zp, zp)) + offdiag(k(zr, zr)) - 2 * k(zp, zr).mean()
    ours = score(EvalData(kang["control"], kang["real"], kang["pred"], fit_embedding(kang["train"])))
    assert ours["energy_distance"] == pytest.approx(energy, rel=1e-6)
    assert ours["mmd_rbf"] == pytest.approx(mmd, rel=1e-6)
