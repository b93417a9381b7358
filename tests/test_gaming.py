"""The gaming suite: each adversarial predictor does what it claims, and the scoreboard catches it on kang2018."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import NotApplicable
from benchmark.core.task import dense
from benchmark.data.datasets import load_dataset
from benchmark.data.splits import make_splits
from benchmark.scoring.embedding import fit_embedding
from benchmark.scoring.metrics import EvalData, score
from predictors.baselines import MeanShift
from predictors.gaming import CollapsedMean, InflatedVariance, WrongContext
from predictors.registry import make_predictor

PREDICTORS = ("no_change", "mean_shift", "collapsed_mean", "inflated_variance", "wrong_context")
CONTEXTS = ("CD4T", "FCGR3A+Mono", "B")
"""The three cell types with the most held-out stimulated cells (356, 289, 112): the least noisy splits."""


# -------------------------------------------------------------------------------- the predictors themselves


def _held_out(data):
    """Training cells without the (B, p1) group, and B's control cells."""
    in_b = (data.obs["cell_type"] == "B").to_numpy()
    train = data[~(in_b & (data.obs["condition"] == "p1").to_numpy())].copy()
    return train, data[in_b & (data.obs["condition"] == "control").to_numpy()].copy()


def _predict(model, train, control, task) -> np.ndarray:
    return dense(model.fit(train, task).predict(control, "p1", "B").X)


def test_collapsed_mean_is_mean_shift_mean_without_spread(tiny, tiny_task):
    train, control = _held_out(tiny)
    pred = _predict(CollapsedMean(), train, control, tiny_task)
    base = _predict(MeanShift(), train, control, tiny_task)
    assert pred.shape == (control.n_obs, control.n_vars)
    assert np.allclose(pred, pred[0]) and np.allclose(pred[0], base.mean(axis=0), atol=1e-5)


def test_inflated_variance_keeps_the_mean_and_doubles_deviations(tiny, tiny_task):
    train, control = _held_out(tiny)
    pred = _predict(InflatedVariance(), train, control, tiny_task)
    base = _predict(MeanShift(), train, control, tiny_task)
    assert np.allclose(pred.mean(axis=0), base.mean(axis=0), atol=1e-5)
    assert np.allclose(pred - pred.mean(axis=0), 2 * (base - base.mean(axis=0)), atol=1e-5)
    with pytest.raises(ValueError):
        InflatedVariance(factor=0)


def test_wrong_context_takes_the_farthest_other_context(make_tiny, tiny_task):
    train, control = _held_out(make_tiny(contexts=("A", "B", "C"), cells=6, seed=2))
    model = WrongContext().fit(train, tiny_task)
    given = dense(control.X).mean(axis=0)
    far = max(("A", "C"), key=lambda t: np.linalg.norm(model.control_means_[t] - given))
    near = ({"A", "C"} - {far}).pop()
    assert np.linalg.norm(model.control_means_[near] - given) < np.linalg.norm(
        model.control_means_[far] - given
    )
    assert model.donor_context(control, "p1", "B") == far
    pred = dense(model.predict(control, "p1", "B").X)
    assert np.allclose(pred - dense(control.X), model.shifts_[(far, "p1")], atol=1e-5)
    only_b = train[train.obs["cell_type"] == "B"].copy()
    with pytest.raises(NotApplicable):  # p2 was seen in training only in the target context itself
        WrongContext().fit(only_b, tiny_task).predict(control, "p2", "B")


def test_registered():
    for name, cls in (("collapsed_mean", CollapsedMean), ("inflated_variance", InflatedVariance)):
        assert isinstance(make_predictor(name)[1], cls)
    assert isinstance(make_predictor("wrong_context")[1], WrongContext)


# -------------------------------------------------------------------------------- caught on kang2018


def _real_delta(x, contexts: np.ndarray, perts: np.ndarray, context: str, pert: str, control: str):
    """mean(perturbed) − mean(control) of one context (None if either group is absent)."""
    p, c = (contexts == context) & (perts == pert), (contexts == context) & (perts == control)
    if not p.any() or not c.any():
        return None
    return np.asarray(x[p].mean(axis=0)).ravel() - np.asarray(x[c].mean(axis=0)).ravel()


@pytest.fixture(scope="module")
def kang_scores(shared_data_dir) -> pd.DataFrame:
    """Scores of the gaming predictors, no_change and mean_shift on three kang2018 holdout_context splits."""
    ds = load_dataset("kang2018", shared_data_dir)
    adata, task = ds.adata, ds.task
    x = task.lognorm(adata)
    contexts, perts = task.contexts(adata), task.perturbations(adata)
    positions = adata.obs_names.get_indexer
    rows = []
    for split in make_splits(adata, task, "holdout_context", seed=0):
        target = split.targets[0]
        if target.context not in CONTEXTS:
            continue
        train = adata[positions(list(split.train_cells))].copy()
        embed = fit_embedding(task.lognorm(train), n_components=50)
        control = adata[positions(list(target.control_cells))].copy()
        control_x, real = dense(task.lognorm(control)), dense(x[positions(list(target.test_cells))])
        others = [
            _real_delta(x, contexts, perts, t, target.perturbation, task.control_label)
            for t in sorted(set(contexts) - {target.context})
        ]
        others = np.array([d for d in others if d is not None])
        for name in PREDICTORS:
            pred = dense(
                make_predictor(name)[1]
                .fit(train, task)
                .predict(control, target.perturbation, target.context)
                .X
            )
            metrics = score(EvalData(control_x, real, pred, embed, others=others))
            rows.append({"context": target.context, "predictor": name, **metrics})
    assert {r["context"] for r in rows} == set(CONTEXTS)
    return pd.DataFrame(rows)


def _mean(scores: pd.DataFrame, predictor: str, metric: str) -> float:
    return float(scores.loc[scores["predictor"] == predictor, metric].mean())


def _per_split(scores: pd.DataFrame, predictor: str, metric: str) -> np.ndarray:
    return scores.loc[scores["predictor"] == predictor].sort_values("context")[metric].to_numpy()


def test_collapsed_mean_is_caught_by_spread_scores(kang_scores):
    s = kang_scores
    assert np.allclose(_per_split(s, "collapsed_mean", "r"), _per_split(s, "mean_shift", "r"))  # same mean
    assert abs(_mean(s, "collapsed_mean", "var_ratio")) > abs(_mean(s, "mean_shift", "var_ratio"))
    assert _mean(s, "collapsed_mean", "energy_distance_shape") > _mean(
        s, "mean_shift", "energy_distance_shape"
    )


def test_inflated_variance_is_caught_by_spread_scores(kang_scores):
    s = kang_scores
    assert np.allclose(
        _per_split(s, "inflated_variance", "mse_mean"), _per_split(s, "mean_shift", "mse_mean")
    )
    assert abs(_mean(s, "inflated_variance", "var_ratio")) > abs(_mean(s, "mean_shift", "var_ratio"))
    assert (_mean(s, "inflated_variance", "crps_deg100") > _mean(s, "mean_shift", "crps_deg100")) or (
        _mean(s, "inflated_variance", "energy_distance_shape")
        > _mean(s, "mean_shift", "energy_distance_shape")
    )


def test_wrong_context_is_caught_by_correlation_or_specificity(kang_scores):
    s = kang_scores
    assert (_mean(s, "wrong_context", "r") < _mean(s, "mean_shift", "r")) or (
        _mean(s, "wrong_context", "discrimination") < _mean(s, "mean_shift", "discrimination")
    )


def test_no_change_is_caught_by_mean_scores(kang_scores):
    s = kang_scores
    assert np.isnan(_per_split(s, "no_change", "r")).all()
    assert _mean(s, "no_change", "mse_mean") > _mean(s, "mean_shift", "mse_mean")
