"""`bench tune` and `bench run --config`: selection on validation splits of training cells only, never a test cell."""

from __future__ import annotations

import helpers_predictors as hp
import mlflow
import numpy as np
import optuna
import pytest
import tomllib

from benchmark.cli import main
from benchmark.core.task import Task
from benchmark.data.datasets import Dataset, load_dataset
from benchmark.data.splits import make_splits
from benchmark.data.synthetic import make_synthetic
from benchmark.execution.options import RunOptions
from benchmark.execution.runner import run_split
from benchmark.scoring.metrics import METRICS
from benchmark.selection import tuning
from benchmark.selection.blocks import _subset
from benchmark.selection.study import _open_study
from benchmark.tracking import schema
from benchmark.tracking import store as tracking

SPY = "helpers_predictors:TunableSpy"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PERTBENCH_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    return tmp_path


@pytest.fixture(scope="module")
def combos() -> Dataset:
    """3 contexts x P0..P2 with the combinations P0+P1 and P0+P2, 70 cells a group: every split kind applies,
    validation splits included (a random validation target is 20% of 80% of a group: >= 10 cells)."""
    adata = make_synthetic(
        n_genes=40, n_contexts=3, n_perturbations=3, cells_per_group=70, seed=1, n_combos=2
    )
    task = Task("condition", "control", "cell_type", expression="counts")
    return Dataset("small", adata, task, "small-synthetic-70", "test_tuning", "holdout_context")


def one_line_error(capsys, argv: list[str], pattern: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("bench: error:") and pattern in err[-1], err


@pytest.mark.parametrize("kind", ["holdout_context", "holdout_combo", "random"])
def test_no_outer_test_cell_reaches_tuning(combos, kind, workdir, monkeypatch):
    """Every fit and prediction of the search sees only cells that are training cells in each outer split of the
    block being tuned; the blocks cover every outer split exactly once."""
    blocks = tuning.outer_blocks(combos, kind, seed=0)
    outer = make_splits(combos.adata, combos.task, kind, seed=0)
    assert sorted(s.digest() for b in blocks for s in b.outer) == sorted(s.digest() for s in outer)
    by_cells = {b.tuning_cells: b for b in blocks}
    seen: list[str] = []
    score = tuning.validation_score

    def watched(name, params, dataset, tuning_cells, splits, *args):
        block = by_cells[tuning_cells]
        hp.TunableSpy.fitted_cells, hp.TunableSpy.control_cells = [], []
        value = score(name, params, dataset, tuning_cells, splits, *args)
        used = hp.TunableSpy.fitted_cells + hp.TunableSpy.control_cells
        assert used, "the search fitted nothing"
        held_out = block.test_cells()
        for cells in used:
            assert not cells & held_out, (
                f"block {block.name}: {len(cells & held_out)} outer test cells reached"
            )
            assert all(cells <= set(s.train_cells) for s in block.outer)
        # the validation targets scored are made from the tuning cells too
        assert all(set(t.test_cells) <= set(tuning_cells) for s in splits for t in s.targets)
        seen.append(block.name)
        return value

    monkeypatch.setattr(tuning, "validation_score", watched)
    config = tuning.tune(SPY, combos, kind, trials=2, seed=0)
    assert sorted(set(seen)) == sorted(b.name for b in blocks)
    assert len(config["blocks"]) == len(blocks)


def test_tune_writes_config_and_run_uses_it(workdir, capsys):
    argv = ["tune", "--predictor", SPY, "--dataset", "synthetic", "--trials", "3", "--output", "cfg.toml"]
    assert main([*argv, "--max-validation-splits", "2"]) == 0
    config = tomllib.loads((workdir / "cfg.toml").read_text())
    assert config["predictor"] == SPY and config["tuning"]["protocol"] == tuning.PROTOCOL
    assert config["tuning"]["objective"] == "r" and config["tuning"]["trials"] == 3
    assert config["tuning"]["dataset_checksum"] == load_dataset("synthetic").checksum
    assert len(config["blocks"]) == 4  # one per held-out context
    for block in config["blocks"]:
        assert set(block["params"]) == {"scale", "noise"} and block["n_trials"] == 3

    capsys.readouterr()
    code = main(
        [
            "run", "--predictor", SPY, "--dataset", "synthetic", "--config", "cfg.toml", "--param",
            "noise=0.05", "--max-splits", "4", "--no-figures", "--no-leaderboard",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    parent = mlflow.search_runs(search_all_experiments=True, filter_string=schema.parent_filter()).iloc[0]
    assert parent[f"params.{schema.PARAM_CONFIG_PROTOCOL}"] == tuning.PROTOCOL
    assert parent[f"params.{schema.PARAM_CONFIG_SOURCE}"].startswith(str(workdir / "cfg.toml"))
    assert "--config" in parent[f"params.{schema.PARAM_CLI}"]
    assert parent["params.hp.noise"] == "0.05"  # --param on top of the config, recorded
    assert parent[f"params.{schema.PARAM_CONFIG_SOURCE}"].endswith("+ --param")
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(parent.run_id)]
    assert schema.CONFIG_ARTIFACT in artifacts
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string=schema.children_filter(parent.run_id)
    )
    assert len(children) == 4
    by_digest = {d: b["params"] for b in config["blocks"] for d in b["outer_digests"]}
    scales = set()
    for _, child in children.iterrows():
        params = by_digest[child[f"params.{schema.PARAM_SPLIT_DIGEST}"]]
        assert float(child["params.hp.scale"]) == pytest.approx(params["scale"])
        assert child["params.hp.noise"] == "0.05"
        scales.add(params["scale"])
    if len(scales) > 1:  # the blocks run chose differently: the parent says so
        assert parent["params.hp.scale"] == schema.PER_SPLIT
    else:
        assert float(parent["params.hp.scale"]) == pytest.approx(scales.pop())


def test_rerun_resumes_the_study(combos, workdir):
    first = tuning.tune(SPY, combos, "holdout_context", trials=2, seed=0, max_validation=2)
    again = tuning.tune(SPY, combos, "holdout_context", trials=4, seed=0, max_validation=2)
    same = tuning.tune(SPY, combos, "holdout_context", trials=4, seed=0, max_validation=2)
    for a, b, c in zip(first["blocks"], again["blocks"], same["blocks"], strict=True):
        study = optuna.load_study(study_name=b["study"], storage=tuning.storage_uri())
        assert (a["n_trials"], b["n_trials"], c["n_trials"], len(study.trials)) == (2, 4, 4, 4)
        assert c["best_value"] == b["best_value"] >= a["best_value"]  # maximized r: never worse after more


def test_objective_direction_and_other_groups(combos):
    """A lower-is-better objective is minimized; discrimination gets the other groups of the tuning cells."""
    assert tuning.direction("r") == "maximize" and tuning.direction("energy_distance") == "minimize"
    block = tuning.outer_blocks(combos, "holdout_context")[0]
    splits = tuning.validation_splits(combos, block, "holdout_context", max_splits=2)
    value = tuning.validation_score(SPY, {}, combos, block.tuning_cells, splits, "discrimination")
    assert 0.0 <= value <= 1.0


def test_empty_space_is_evaluated_once(combos, workdir):
    config = tuning.tune("linear", combos, "holdout_context", trials=5, seed=0, max_validation=2)
    assert config["tuning"]["trials"] == 1 and config["params"] == {}
    assert all(b["n_trials"] == 1 and b["params"] == {} for b in config["blocks"])


def test_bad_input_is_one_line(workdir, capsys):
    base = ["tune", "--dataset", "synthetic"]
    one_line_error(capsys, [*base, "--predictor", "nope"], "unknown predictor 'nope'")
    one_line_error(capsys, [*base, "--predictor", "mean_shift"], "is not tunable")
    one_line_error(capsys, [*base, "--predictor", SPY, "--trials", "0"], "--trials")
    one_line_error(capsys, [*base, "--predictor", SPY, "--objective", "nope"], "unknown objective metric")
    run = ["run", "--predictor", SPY, "--dataset", "synthetic", "--no-figures", "--no-leaderboard"]
    one_line_error(capsys, [*run, "--config", "missing.toml"], "cannot read config missing.toml")
    (workdir / "bad.toml").write_text("predictor = [")
    one_line_error(capsys, [*run, "--config", "bad.toml"], "is not valid TOML")


def test_run_refuses_splits_the_config_does_not_cover(combos, workdir, capsys):
    """A random split of another seed has other test cells: the seed-0 tuning may have trained on them."""
    combos.adata.write_h5ad(workdir / "s.h5ad")
    data = [
        "--data", str(workdir / "s.h5ad"), "--perturbation-key", "condition", "--control", "control",
        "--context-key", "cell_type", "--expression", "counts",
    ]  # fmt: skip
    assert (
        main(["tune", "--predictor", SPY, *data, "--split", "random", "--trials", "1", "--output", "c.toml"])
        == 0
    )
    run = ["run", "--no-figures", "--no-leaderboard", *data, "--config", "c.toml"]
    one_line_error(capsys, [*run, "--predictor", SPY, "--seed", "1"], "is not covered by the config")
    one_line_error(capsys, [*run, "--predictor", "linear"], "was made for predictor")
    assert main([*run, "--predictor", SPY, "--seed", "0"]) == 0


@pytest.mark.parametrize("name", ["cvae_modeB", "cvae_mlp_modeB", "linear_cv", "linear"])
def test_declared_spaces_build_at_their_bounds(name):
    """Every bound of a built-in search space is a value the predictor's constructor accepts."""
    from predictors.registry import make_predictor

    space = tuning.search_space(name)
    for key, spec in space.items():
        values = spec[1] if spec[0] == "categorical" else spec[1:3]
        for value in values:
            make_predictor(name, **{key: value})


def test_parent_marks_hyperparameters_that_differ_between_splits():
    from benchmark.execution.options import RunOptions
    from benchmark.execution.provenance import _config_record

    base, a, b = hp.TunableSpy(), hp.TunableSpy(scale=0.7, noise=0.05), hp.TunableSpy(scale=1.3, noise=0.05)
    options = RunOptions(config={"tuning": {"protocol": tuning.PROTOCOL}}, config_source="c.toml")
    record = _config_record("spy", ("d", "sha"), base, {"s1": a, "s2": b}, options)
    assert record[f"{schema.HP_PREFIX}scale"] == schema.PER_SPLIT  # the blocks chose differently
    assert record[f"{schema.HP_PREFIX}noise"] == 0.05  # every split agrees, though the base does not
    assert f"{schema.HP_PREFIX}random_state" not in record  # unchanged: the base's value stands
    assert record[schema.PARAM_CONFIG_PROTOCOL] == tuning.PROTOCOL
    assert (
        _config_record("spy", ("d", "sha"), base, {}, RunOptions())[schema.PARAM_CONFIG_SOURCE] == "defaults"
    )


@pytest.fixture(scope="module")
def shallow() -> Dataset:
    """Like `combos` at a shallow depth (60 counts a cell) with strong effects: many zeros, so shift predictions
    go negative where a control cell's zero meets a negative shift."""
    adata = make_synthetic(
        n_genes=40, n_contexts=3, n_perturbations=3, cells_per_group=70, seed=1, n_combos=2,
        library_size=60.0, effect_size=2.0,
    )  # fmt: skip
    task = Task("condition", "control", "cell_type", expression="counts")
    return Dataset("shallow", adata, task, "shallow-synthetic-70", "test_tuning", "holdout_context")


@pytest.mark.parametrize("predictor", ["mean_shift", "linear"])
def test_validation_scores_are_the_scores_of_bench_run(shallow, workdir, predictor):
    """Tuning scores a validation split exactly as `bench run` scores those cells: the same prediction checks,
    clip at 0, embedding (the split's training cells), comparison groups, on every metric."""
    block = tuning.outer_blocks(shallow, "holdout_context")[0]
    split = tuning.validation_splits(shallow, block, "holdout_context", max_splits=1)[0]
    names = list(METRICS)
    tuned = tuning.validation_scores(predictor, {}, shallow, block.tuning_cells, [split], names, seed=0)

    cells = _subset(shallow, block.tuning_cells)  # bench run on a dataset of the tuning cells alone
    sub = Dataset("tuning-cells", cells, shallow.task, "sub", "test_tuning", "holdout_context")
    tracking.use_store()
    tracking.experiment_for(sub.name)
    with tracking.parent_run("validation") as parent:
        results = run_split(
            predictor, sub, split, 0, RunOptions(figures=False), parent.info.run_id, lambda _: None
        )
    assert len(results) == len(split.targets) and all(r.status == schema.STATUS_OK for r in results)
    for name in names:
        values = [r.metrics[name] for r in results if np.isfinite(r.metrics[name])]
        if METRICS[name].higher_is_better is None:
            values = [abs(v) for v in values]
        expected = float(np.mean(values)) if values else np.nan
        assert tuned[name] == pytest.approx(expected, rel=0, abs=1e-12, nan_ok=True), name


def _interrupt_on_call(monkeypatch, call: int, exc: BaseException) -> None:
    """validation_score, as `tune` reads it (from tuning), raises `exc` on its `call`-th call (1-based) and scores
    normally otherwise."""
    real, calls = tuning.validation_score, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "validation_score", flaky)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), tracking.Terminated("terminated by SIGTERM")])
def test_interrupted_trial_does_not_count_and_resume_reaches_the_budget(combos, workdir, monkeypatch, exc):
    """Ctrl-C or SIGTERM inside a trial: the trial is stored FAIL (marked interrupted), never RUNNING, and the
    rerun runs trials until the full budget is scored."""
    with monkeypatch.context() as patched, pytest.raises(type(exc)):
        _interrupt_on_call(patched, 2, exc)
        tuning.tune(SPY, combos, "random", trials=3, seed=0, max_validation=1)
    name = tuning.study_name(
        SPY, combos.name, "random", 0, "r", tuning.outer_blocks(combos, "random")[0].name
    )
    study = optuna.load_study(study_name=name, storage=tuning.storage_uri())
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert study.trials[1].user_attrs[tuning.INTERRUPTED_ATTR] == type(exc).__name__
    config = tuning.tune(SPY, combos, "random", trials=3, seed=0, max_validation=1)
    study = optuna.load_study(study_name=name, storage=tuning.storage_uri())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and config["blocks"][0]["n_trials"] == 3


def test_trial_of_a_killed_process_is_reaped(combos, workdir):
    """A RUNNING trial whose process is gone (kill -9) is marked FAIL on the next run and does not count; a
    RUNNING trial of a live process is left alone."""
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    block = tuning.outer_blocks(combos, "random")[0]
    name = tuning.study_name(SPY, combos.name, "random", 0, "r", block.name)
    study = _open_study(optuna, name, tuning.storage_uri(), "maximize", combos.checksum)
    ghost = study.ask()
    ghost.set_user_attr(
        tuning.PROCESS_ATTR, {**tracking.process_tags(), tracking.PID_TAG: dead.stdout.strip()}
    )
    live = study.ask()
    live.set_user_attr(tuning.PROCESS_ATTR, tracking.process_tags())
    assert tuning.reap_trials(optuna, study) == [ghost.number]
    config = tuning.tune(SPY, combos, "random", trials=2, seed=0, max_validation=1)
    study = optuna.load_study(study_name=name, storage=tuning.storage_uri())
    by_number = {t.number: t for t in study.trials}
    assert by_number[ghost.number].state == optuna.trial.TrialState.FAIL
    assert by_number[live.number].state == optuna.trial.TrialState.RUNNING
    assert config["blocks"][0]["n_trials"] == 2


def test_ctrl_c_in_tune_prints_one_line(combos, workdir, monkeypatch, capsys):
    """Ctrl-C during `bench tune`: exit 130 and one line, no Optuna traceback."""
    _interrupt_on_call(monkeypatch, 1, KeyboardInterrupt())
    code = main(["tune", "--predictor", SPY, "--dataset", "synthetic", "--trials", "2", "--output", "c.toml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err[-1] == "bench: interrupted"
    assert not any("Traceback" in line or "Trial" in line for line in err), err


def test_tuning_re_exports_every_name_of_its_parts():
    """Every name defined in blocks, objective, study and config is importable from tuning as the same object,
    and the public ones are in tuning.__all__."""
    import ast
    import importlib
    from pathlib import Path

    for part in ("blocks", "objective", "study", "config"):
        module = importlib.import_module(f"benchmark.selection.{part}")
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        names += [
            t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
        ]
        assert names, part
        for name in names:
            assert getattr(tuning, name) is getattr(module, name), f"{part}.{name}"
            assert name.startswith("_") or name in tuning.__all__, f"{part}.{name}"
