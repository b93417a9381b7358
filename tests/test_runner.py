"""The harness end to end on a tiny synthetic dataset: splits never leak, MLflow records everything."""

from __future__ import annotations

import hashlib
import json

import helpers_predictors as hp
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from benchmark.core.errors import PertbenchError
from benchmark.core.task import LOGNORM_LAYER, Task, lognormalize
from benchmark.data.datasets import Dataset
from benchmark.data.splits import Split, make_splits
from benchmark.data.synthetic import make_synthetic
from benchmark.execution.options import RunOptions
from benchmark.execution.runner import run_benchmark
from benchmark.execution.scorer import SCORE_THREADS_ENV, score_threads
from benchmark.scoring.metrics import METRICS
from benchmark.tracking import schema
from benchmark.tracking import store as tracking


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    adata = make_synthetic(
        n_genes=60, n_contexts=3, n_perturbations=2, cells_per_group=50, seed=0, n_combos=1
    )
    adata.layers[LOGNORM_LAYER] = lognormalize(adata.X)
    task = Task("condition", "control", "cell_type", expression="counts")
    return Dataset("tiny", adata, task, "tiny-checksum", "test", "holdout_context")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh MLflow SQLite store and working directory per test."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.use_store(uri)
    return uri


FAST = RunOptions(figures=False)


@pytest.mark.parametrize("kind", ["holdout_context", "holdout_combo", "random"])
def test_no_held_out_cell_ever_reaches_fit(tiny, store, kind):
    hp.SpyPredictor.fitted_cells = []
    result = run_benchmark("helpers_predictors:SpyPredictor", tiny, kind, FAST, progress=lambda _: None)
    splits = {s.name: s for s in make_splits(tiny.adata, tiny.task, kind)}
    assert len(hp.SpyPredictor.fitted_cells) == len(splits)
    by_train = {frozenset(s.train_cells): s for s in splits.values()}
    for fitted in hp.SpyPredictor.fitted_cells:
        split = by_train[frozenset(fitted)]  # fitted on exactly a split's training cells
        for target in split.targets:
            assert not fitted & set(target.test_cells)
    assert {r.status for r in result.results} == {"ok"}


def test_runs_are_logged_with_provenance_metrics_and_the_split(tiny, store, tmp_path):
    result = run_benchmark(
        "mean_shift", tiny, "holdout_context", RunOptions(seeds=(0, 1), figures=False), lambda _: None
    )
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["dataset_checksum"] == "tiny-checksum"
    assert parent.data.params["seeds"] == "0,1"
    assert "git_commit" in parent.data.params and "pertbench_version" in parent.data.params
    assert "mean_r" in parent.data.metrics
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        output_format="list",
    )
    assert len(children) == len(result.results) == 2 * 9  # 3 contexts x (2 singles + 1 combination) x 2 seeds
    child = children[0]
    for key in ("r", "jaccard_25", "jaccard_50", "jaccard_100", "ceiling_r", "norm_r", "reference_r"):
        assert key in child.data.metrics
    assert child.data.params["predictor"] == "mean_shift"
    assert child.data.params["split_digest"]
    assert not [a.path for a in client.list_artifacts(child.info.run_id) if "split" in a.path]
    saved = [a.path for a in client.list_artifacts(parent.info.run_id, schema.SPLITS_DIR)]
    assert len(saved) == len({c.data.params["split_digest"] for c in children}) == 9  # once per split
    digest = child.data.params["split_digest"]
    local = client.download_artifacts(parent.info.run_id, schema.split_artifact(digest), str(tmp_path))
    assert Split.load(local, tiny.adata.obs_names).digest() == digest
    # mean_shift is its own reference: normalized r is exactly 0 there
    assert child.data.metrics["norm_r"] == pytest.approx(0.0, abs=1e-12)
    assert child.data.params[schema.PARAM_REFERENCE] == "mean_shift"
    for metric in METRICS:
        assert f"{schema.ORACLE_PREFIX}{metric}" in child.data.metrics
    assert parent.data.tags[schema.TAG_PARTIAL] == schema.FALSE
    assert parent.data.params[schema.PARAM_CLI].startswith("--predictor mean_shift --data test")
    # discrimination's comparison groups: a single P0 target is compared with P0 in the 2 other contexts
    by_target = {(c.data.tags[schema.TAG_CONTEXT], c.data.tags[schema.TAG_PERTURBATION]): c for c in children}
    assert by_target[("C0", "P0")].data.params[schema.PARAM_N_OTHERS] == "2"


def test_runs_fill_the_mlflow_ui_columns(tiny, store):
    """Parent runs carry the headline metrics under the children's names, every run names its predictor and logs
    the dataset as an input (the UI's Dataset column), and the experiment opens on runs in the pertbench view."""
    result = run_benchmark("mean_shift", tiny, "holdout_context", FAST, lambda _: None)
    parent = MlflowClient().get_run(result.parent_run_id)
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=schema.children_filter(parent.info.run_id),
        output_format="list",
    )
    for metric in schema.headline_metrics():
        values = [c.data.metrics[metric] for c in children if np.isfinite(c.data.metrics[metric])]
        expected = float(np.mean(values)) if values else float("nan")
        assert parent.data.metrics[metric] == pytest.approx(expected, nan_ok=True)
        assert parent.data.metrics[metric] == parent.data.metrics[
            f"{schema.MEAN_PREFIX}{metric}"
        ] or np.isnan(parent.data.metrics[metric])
    digest = hashlib.sha256(b"tiny-checksum").hexdigest()[: schema.DATASET_DIGEST_CHARS]
    for run in (parent, *children):
        (logged,) = run.inputs.dataset_inputs
        assert (logged.dataset.name, logged.dataset.digest) == ("tiny", digest)
        assert json.loads(logged.dataset.source) == {"uri": "test"}
        assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == schema.DATASET_CONTEXT
    assert parent.info.run_name == "mean_shift · holdout_context · seeds 0"
    assert {c.info.run_name for c in children} == {f"mean_shift · {r.split} · seed 0" for r in result.results}
    tags = MlflowClient().get_experiment(parent.info.experiment_id).tags
    assert tags[schema.TAG_EXPERIMENT_KIND] == schema.EXPERIMENT_KIND
    assert "metrics.`r`" in json.loads(tags[schema.TAG_SHARED_VIEW])["selectedColumns"]


def test_an_older_experiment_gets_the_ui_tags(store):
    experiment_id = mlflow.create_experiment(f"{schema.EXPERIMENT_PREFIX}/old")
    MlflowClient().set_experiment_tag(experiment_id, schema.TAG_EXPERIMENT_KIND, "genai_development")
    tracking.experiment_for("old")
    tags = MlflowClient().get_experiment(experiment_id).tags
    assert tags[schema.TAG_EXPERIMENT_KIND] == schema.EXPERIMENT_KIND
    assert json.loads(tags[schema.TAG_SHARED_VIEW]) == schema.shared_view_state()


def test_not_applicable_targets_are_recorded_not_failed(tiny, store):
    result = run_benchmark("helpers_predictors:PickyPredictor", tiny, "holdout_context", FAST, lambda _: None)
    statuses = {r.perturbation: r.status for r in result.results}
    assert statuses == {"P0": "ok", "P1": "not_applicable", "P0+P1": "not_applicable"}
    run = MlflowClient().get_run(next(r.run_id for r in result.results if r.status == "not_applicable"))
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.TAG_STATUS] == schema.STATUS_NOT_APPLICABLE
    assert "not for me" in run.data.tags[schema.TAG_REASON]


def test_splits_whose_targets_are_all_declined_before_fit_are_never_fitted(tiny, store):
    hp.SpyPredictor.fitted_cells = []
    result = run_benchmark(
        "helpers_predictors:ForesightedPredictor", tiny, "holdout_combo", FAST, lambda _: None
    )
    splits = make_splits(tiny.adata, tiny.task, "holdout_combo")
    assert {t.perturbation for s in splits for t in s.targets} == {"P0+P1"}
    assert hp.SpyPredictor.fitted_cells == []  # every target is declined: no fit at all
    assert {(r.status, r.reason) for r in result.results} == {("not_applicable", "P0+P1 declined before fit")}
    hp.SpyPredictor.fitted_cells = []
    result = run_benchmark(
        "helpers_predictors:ForesightedPredictor", tiny, "holdout_context", FAST, lambda _: None
    )
    assert len(hp.SpyPredictor.fitted_cells) == 3  # every split still has P0 to predict
    assert {r.perturbation: r.status for r in result.results if r.context == "C0"} == {
        "P0": "ok",
        "P1": "not_applicable",
        "P0+P1": "not_applicable",
    }


def test_a_run_that_fails_half_way_is_marked_failed(tiny, store):
    hp.FailingPredictor.fits = 0
    with pytest.raises(RuntimeError, match="boom"):
        run_benchmark("helpers_predictors:FailingPredictor", tiny, "holdout_context", FAST, lambda _: None)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    statuses = sorted(r.info.status for r in runs)
    assert "FAILED" in statuses
    parent = [r for r in runs if r.data.tags.get(schema.TAG_LEVEL) == schema.LEVEL_PARENT]
    assert [p.info.status for p in parent] == ["FAILED"]


def test_cacheable_predictor_is_fitted_once_per_split_and_seed(tiny, store, tmp_path):
    hp.CachedPredictor.fit_count = 0
    options = RunOptions(figures=False, cache_dir=tmp_path / "cache", max_splits=2)
    first = run_benchmark(
        "helpers_predictors:CachedPredictor", tiny, "holdout_context", options, lambda _: None
    )
    assert hp.CachedPredictor.fit_count == 2
    shifted = RunOptions(figures=False, cache_dir=tmp_path / "cache", max_splits=2, params={"offset": 1.0})
    second = run_benchmark(
        "helpers_predictors:CachedPredictor", tiny, "holdout_context", shifted, lambda _: None
    )
    assert hp.CachedPredictor.fit_count == 2  # generation-only parameter: the fitted models were reused
    tags = [MlflowClient().get_run(r.run_id).data.tags[schema.TAG_MODEL_CACHE] for r in second.results]
    assert tags == ["hit", "hit"]
    # the cached fit predicts the same means, shifted by the generation-only offset
    assert first.results[0].metrics["mse_mean"] != second.results[0].metrics["mse_mean"]
    run_benchmark(
        "helpers_predictors:CachedPredictor",
        tiny,
        "holdout_context",
        RunOptions(figures=False, cache_dir=tmp_path / "cache", max_splits=2, seeds=(5,)),
        lambda _: None,
    )
    assert hp.CachedPredictor.fit_count == 4  # another seed is another model


def test_saved_predictions_are_h5ad_artifacts_with_their_labels(tiny, store, tmp_path):
    import anndata as ad

    options = RunOptions(figures=False, save_predictions=True, max_splits=1)
    result = run_benchmark("mean_shift", tiny, "holdout_context", options, lambda _: None)
    run_id = result.results[0].run_id
    (artifact,) = MlflowClient().list_artifacts(run_id, "predictions")
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact.path, dst_path=str(tmp_path)
    )
    predicted = ad.read_h5ad(local)
    target = make_splits(tiny.adata, tiny.task, "holdout_context")[0].targets[0]
    assert predicted.n_obs == len(target.control_cells)
    assert list(predicted.var_names) == list(tiny.adata.var_names)
    assert set(predicted.obs["perturbation"]) == {target.perturbation}
    assert set(predicted.obs["context"]) == {target.context}
    assert set(predicted.obs["split"]) == {result.results[0].split}


def test_model_cache_key_changes_when_the_predictors_code_changes(tmp_path, monkeypatch):
    import importlib
    import sys

    from benchmark.execution.model_cache import cache_key

    package = tmp_path / "edited_predictor"
    package.mkdir()
    source = "from benchmark.core.protocol import Predictor\n\nclass P(Predictor):\n    def __init__(self, a=1):\n        self.a = a\n"
    module = package / "model.py"
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = cache_key(importlib.import_module("edited_predictor.model").P(), "data", "split", 0)
    assert cache_key(sys.modules["edited_predictor.model"].P(), "data", "split", 0) == before  # stable
    module.write_text(source + "    # the model changed\n")
    assert cache_key(sys.modules["edited_predictor.model"].P(), "data", "split", 0) != before


SELECTIVE = """
import numpy as np
from benchmark.core.protocol import Predictor, predicted_anndata


class Selective(Predictor):
    def __init__(self, penalty: float = 1.0):
        self.penalty = penalty

    def fit(self, train, task):
        self.task_ = task
        self.selection_ = {"chosen": "ridge(penalty=1)", "cv_errors": {"a": np.float64(0.25), "b": 0.5}}
        return self

    def predict(self, control, perturbation, context):
        return predicted_anndata(np.asarray(self.task_.lognorm(control).todense()), control, perturbation, context)
"""


def test_a_predictors_selection_is_logged_per_split(tiny, store, tmp_path, monkeypatch):
    import json

    (tmp_path / "selective_predictor.py").write_text(SELECTIVE)
    monkeypatch.syspath_prepend(str(tmp_path))
    options = RunOptions(figures=False, max_splits=1)
    result = run_benchmark("selective_predictor:Selective", tiny, "holdout_context", options, lambda _: None)
    run = MlflowClient().get_run(result.results[0].run_id)
    assert json.loads(run.data.params[schema.PARAM_SELECTION])["chosen"] == "ridge(penalty=1)"
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=schema.SELECTION_ARTIFACT, dst_path=str(tmp_path / "dl")
    )
    assert json.loads(open(local).read())["cv_errors"] == {"a": 0.25, "b": 0.5}
    parent = MlflowClient().get_run(result.parent_run_id)
    assert parent.data.tags[schema.TAG_PARTIAL] == schema.TRUE  # --max-splits 1 of 9 splits
    assert parent.data.params[schema.PARAM_CLI].endswith("--max-splits 1")
    plain = run_benchmark("mean_shift", tiny, "holdout_context", options, lambda _: None)
    assert schema.PARAM_SELECTION not in MlflowClient().get_run(plain.results[0].run_id).data.params
    plain_parent = MlflowClient().get_run(plain.parent_run_id)
    assert plain_parent.data.tags[schema.TAG_CONFIG] != parent.data.tags[schema.TAG_CONFIG]  # other predictor


def test_restricting_the_perturbations_marks_the_run_partial(tiny):
    from benchmark.execution.provenance import _restricted

    assert _restricted(tiny, RunOptions(perturbations=("P0",)))
    assert not _restricted(tiny, RunOptions(perturbations=("P0", "P1", "P0+P1")))
    assert not _restricted(tiny, RunOptions())


def test_scoring_targets_in_threads_gives_the_same_results_in_the_same_order(tiny, store):
    def run(threads: int) -> list:
        options = RunOptions(figures=False, score_threads=threads)
        return run_benchmark("mean_shift", tiny, "random", options, lambda _: None).results

    one, three = run(1), run(3)
    assert len(one) > 3 and [r.label for r in three] == [r.label for r in one]
    for a, b in zip(one, three, strict=True):
        # repr: NaN scores (jaccard_100 on a small group) compare equal, every other float exactly
        assert repr((a.metrics, a.ceiling, a.reference, a.oracle)) == repr(
            (b.metrics, b.ceiling, b.reference, b.oracle)
        )
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.{schema.TAG_LEVEL} = '{schema.LEVEL_SPLIT}'",
        output_format="list",
    )
    assert {r.info.run_id for r in children} >= {r.run_id for r in three}


def test_targets_predicted_before_a_failure_are_still_logged(tiny, store):
    hp.FailsOnSecondTarget.calls = 0
    with pytest.raises(RuntimeError, match="second target"):
        run_benchmark(
            "helpers_predictors:FailsOnSecondTarget",
            tiny,
            "random",
            RunOptions(figures=False, score_threads=2),
            lambda _: None,
        )
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.{schema.TAG_LEVEL} = '{schema.LEVEL_SPLIT}'",
        output_format="list",
    )
    assert [r.info.status for r in children] == ["FINISHED"]
    assert "r" in children[0].data.metrics


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_score_threads_setting_is_a_one_line_error(monkeypatch, value):
    monkeypatch.setenv(SCORE_THREADS_ENV, value)
    with pytest.raises(PertbenchError, match=SCORE_THREADS_ENV):
        score_threads(RunOptions())
    monkeypatch.setenv(SCORE_THREADS_ENV, "3")
    assert score_threads(RunOptions()) == 3
    assert score_threads(RunOptions(score_threads=1)) == 1


def test_a_split_draws_composite_figures_for_its_first_targets_only(tiny, store, monkeypatch):
    import benchmark.execution.scorer as scorer_module

    monkeypatch.setattr(scorer_module, "FIGURES_PER_SPLIT", 2)
    options = RunOptions(figures=True, embedding="pca")
    result = run_benchmark("mean_shift", tiny, "random", options, lambda _: None)
    client = MlflowClient()
    drawn = [
        bool(client.list_artifacts(r.run_id, schema.FIGURES_DIR)) for r in result.results if r.status == "ok"
    ]
    assert len(drawn) > 2 and drawn == [True, True] + [False] * (len(drawn) - 2)
