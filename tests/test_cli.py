"""The `bench` command: bad input gives one clear line (exit 2) and leaves what was written intact."""

from __future__ import annotations

import ctypes.util
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from benchmark.cli import main
from benchmark.core.errors import PertbenchError
from predictors.registry import available_predictors, make_predictor


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def user_file(path, x=None, obs=None) -> str:
    """Write a small lognorm h5ad with 2 cell types x (control, stim) x 12 cells."""
    if obs is None:
        obs = pd.DataFrame(
            [(c, p) for c in ("A", "B") for p in ("ctrl", "stim") for _ in range(12)],
            columns=["cell_type", "condition"],
        )
        obs.index = [f"c{i}" for i in range(len(obs))]
    if x is None:
        x = np.random.default_rng(0).gamma(1.0, size=(len(obs), 8)).astype(np.float32)
    AnnData(X=x, obs=obs).write_h5ad(path)
    return str(path)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", "--no-figures", "--no-leaderboard", *args])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def data_args(path, **over) -> list[str]:
    keys = {"--perturbation-key": "condition", "--control": "ctrl", "--context-key": "cell_type", **over}
    return ["--data", path] + [v for k, val in keys.items() for v in (k, val)]


def assert_one_line(code: int, err: str, pattern: str) -> None:
    assert code == 2
    lines = err.splitlines()
    assert lines[-1].startswith("bench: error:"), err
    assert "Traceback" not in err
    assert pattern in lines[-1], lines[-1]


def test_user_file_runs(workdir, capsys):
    code = main(
        ["run", "--predictor", "mean_shift", *data_args(user_file(workdir / "u.h5ad")), "--no-figures"]
    )
    assert code == 0
    assert "mean_shift on u" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--predictor", "nope"], "unknown predictor 'nope'"),
        (["--predictor", "mean_shift", "--dataset", "nope"], "nope"),
        (
            ["--predictor", "mean_shift", "--dataset", "synthetic", "--split", "by_donor"],
            "unknown split kind 'by_donor'",
        ),
        (["--predictor", "no.such.module:Cls"], "cannot import module"),
        (["--predictor", "mean_shift", "--param", "not_a_param=1"], "cannot build predictor"),
    ],
)
def test_unknown_names(workdir, capsys, args, message):
    assert_one_line(*run_cli(capsys, *args), message)


def test_missing_obs_key(workdir, capsys):
    path = user_file(workdir / "u.h5ad")
    assert_one_line(
        *run_cli(capsys, "--predictor", "mean_shift", *data_args(path, **{"--context-key": "celltype"})),
        "celltype",
    )


def test_unknown_control_and_perturbation_labels(workdir, capsys):
    path = user_file(workdir / "u.h5ad")
    assert_one_line(
        *run_cli(capsys, "--predictor", "mean_shift", *data_args(path, **{"--control": "untreated"})),
        "untreated",
    )
    assert_one_line(
        *run_cli(capsys, "--predictor", "mean_shift", *data_args(path), "--perturbation", "IFNG"),
        "unknown perturbation label",
    )


def test_context_without_control_cells(workdir, capsys):
    obs = pd.DataFrame(
        [("A", "ctrl")] * 12 + [("A", "stim")] * 12 + [("B", "stim")] * 12, columns=["cell_type", "condition"]
    )
    obs.index = [f"c{i}" for i in range(len(obs))]
    path = user_file(workdir / "u.h5ad", obs=obs)
    assert_one_line(*run_cli(capsys, "--predictor", "mean_shift", *data_args(path)), "B")


@pytest.mark.parametrize(
    ("value", "expression", "message"),
    [
        (np.nan, "lognorm", "NaN"),
        (np.inf, "lognorm", "infinite"),
        (-1.0, "lognorm", "negative"),
        (0.5, "counts", "integer"),
    ],
)
def test_bad_values(workdir, capsys, value, expression, message):
    x = np.random.default_rng(0).poisson(2.0, size=(48, 8)).astype(np.float32)
    x[3, 2] = value
    path = user_file(workdir / "u.h5ad", x=x)
    code, err = run_cli(capsys, "--predictor", "mean_shift", *data_args(path), "--expression", expression)
    assert_one_line(code, err, message)


def test_group_with_too_few_cells(workdir, capsys):
    obs = pd.DataFrame(
        [(c, "ctrl") for c in "AB" for _ in range(12)] + [(c, "stim") for c in "AB" for _ in range(3)],
        columns=["cell_type", "condition"],
    )
    obs.index = [f"c{i}" for i in range(len(obs))]
    path = user_file(workdir / "u.h5ad", obs=obs)
    assert_one_line(
        *run_cli(capsys, "--predictor", "mean_shift", *data_args(path)), "at least 10 held-out cells"
    )


def test_checksum_mismatch(workdir, capsys, monkeypatch):
    from benchmark.data.datasets import get_card

    card = get_card("kang2018")
    data = workdir / "data"
    data.mkdir()
    (data / card.file).write_bytes(b"not the real file")
    monkeypatch.setenv("PERTBENCH_DATA_DIR", str(data))
    assert_one_line(*run_cli(capsys, "--predictor", "mean_shift", "--dataset", "kang2018"), card.file)
    assert (data / card.file).read_bytes() == b"not the real file"  # nothing overwritten


def test_split_kind_that_does_not_apply_is_one_line_exit_2(workdir, capsys):
    """The one split asked for cannot run: bad input, exit 2, nothing written."""
    path = user_file(workdir / "u.h5ad")
    code = main(
        ["run", "--predictor", "mean_shift", *data_args(path), "--split", "holdout_combo", "--no-figures"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("bench: error: split holdout_combo does not apply"), err
    assert not (workdir / ".pertbench" / "LEADERBOARD.md").exists()


def test_run_writes_a_local_leaderboard_and_leaves_the_committed_one_alone(workdir):
    committed = workdir / "leaderboard" / "LEADERBOARD.md"
    committed.parent.mkdir()
    committed.write_text("committed board\n")
    path = user_file(workdir / "u.h5ad")
    assert main(["run", "--predictor", "mean_shift", *data_args(path), "--no-figures"]) == 0
    assert committed.read_text() == "committed board\n"
    assert "mean_shift" in (workdir / ".pertbench" / "LEADERBOARD.md").read_text()


def test_failed_run_leaves_the_leaderboard_as_it_was(workdir, capsys):
    import helpers_predictors as hp

    path = user_file(workdir / "u.h5ad")
    assert main(["run", "--predictor", "mean_shift", *data_args(path), "--no-figures"]) == 0
    board = workdir / ".pertbench" / "LEADERBOARD.md"
    before = board.read_text()
    assert "mean_shift" in before
    hp.FailingPredictor.fits = 0
    code = main(
        ["run", "--predictor", "helpers_predictors:FailingPredictor", *data_args(path), "--no-figures"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("bench: error: RuntimeError: boom") and "--debug" in err[-1]
    assert board.read_text() == before


def test_list_shows_predictors_datasets_and_splits(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("cvae_modeB", "mean_shift", "linear", "kang2018", "norman19", "holdout_combo"):
        assert name in out


def test_registry_names_and_module_class_path():
    assert {"no_change", "mean_shift", "additive", "linear", "cvae_modeA", "cvae_modeB"} <= set(
        available_predictors()
    )
    name, predictor = make_predictor("helpers_predictors:SpyPredictor", random_state=3)
    assert name == "helpers_predictors:SpyPredictor" and predictor.get_params() == {"random_state": 3}
    with pytest.raises(PertbenchError, match="module:Class"):
        make_predictor("helpers_predictors:")
    with pytest.raises(PertbenchError, match="has no class"):
        make_predictor("helpers_predictors:Nope")


def test_run_prints_where_the_store_figures_and_predictions_went(workdir, capsys):
    import re

    import mlflow

    from benchmark.tracking import schema

    path = user_file(workdir / "u.h5ad")
    args = [*data_args(path), "--save-predictions", "--embedding", "pca", "--no-leaderboard"]
    assert main(["run", "--predictor", "mean_shift", *args]) == 0
    out = capsys.readouterr().out.split("where it went:")[1]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert f"MLflow store:  {uri}" in out
    (parent,) = mlflow.search_runs(
        filter_string=schema.parent_filter(), search_all_experiments=True, output_format="list"
    )
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=schema.children_filter(parent.info.run_id),
        output_format="list",
    )
    summary = re.search(r"figures:\s+(\S+)", out).group(1)
    composite = re.search(r"figure:\s+(\S+)", out).group(1)  # each split run's own paths, no placeholder
    predictions = re.search(r"predictions:\s+(\S+)", out).group(1)
    assert "<split_run_id>" not in out
    assert summary.endswith(f"{parent.info.run_id}/artifacts/figures/summary.png") and Path(summary).is_file()
    assert composite.split("/artifacts/")[0].rsplit("/", 1)[1] in {c.info.run_id for c in children}
    assert Path(composite).is_file()
    assert len(list(Path(predictions).glob("*.h5ad"))) == 1
    page = schema.runs_page_path(parent.info.experiment_id)
    assert re.search(
        rf"mlflow ui --backend-store-uri {re.escape(uri)} --port 5000\n.*open http://127.0.0.1:5000{re.escape(page)}",
        out,
    )


def test_the_allocator_setting_can_be_left_to_the_system(monkeypatch):
    from benchmark.core.allocator import ENV, keep_freed_memory

    monkeypatch.setenv(ENV, "system")
    assert keep_freed_memory() is False
    monkeypatch.delenv(ENV)
    libc = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc and "musl" not in libc:
        assert keep_freed_memory() is True  # glibc takes the settings


def test_a_bad_score_threads_setting_stops_bench_run_before_any_run(workdir, capsys, monkeypatch):
    monkeypatch.setenv("PERTBENCH_SCORE_THREADS", "many")
    path = user_file(workdir / "u.h5ad")
    assert_one_line(
        *run_cli(capsys, "--predictor", "mean_shift", *data_args(path)), "PERTBENCH_SCORE_THREADS"
    )
    assert not (workdir / "mlflow.db").exists() or not mlflow_runs(workdir)


def mlflow_runs(workdir) -> list:
    """Every run in the workdir's store."""
    import mlflow

    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_run_and_leaderboard_print_the_verdict_once_two_predictors_are_complete(workdir, capsys):
    path = user_file(workdir / "u.h5ad")
    assert main(["run", "--predictor", "mean_shift", *data_args(path), "--no-figures"]) == 0
    assert "verdict on" not in capsys.readouterr().out  # one complete row: nothing to compare
    assert main(["run", "--predictor", "no_change", *data_args(path), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "verdict on u · holdout_context (paired 95% intervals over splits):" in out
    assert re.search(
        r"(?m)^  energy_distance: (mean_shift|no_change) (≈|>) (mean_shift|no_change) \(95% paired\)$", out
    )
    assert main(["leaderboard", "--no-figures"]) == 0
    assert "verdict on u · holdout_context" in capsys.readouterr().out


def test_reproduce_lines_run_as_written_with_relative_paths_and_a_plugins_pythonpath(workdir, capsys):
    """A file under the working directory is named relative to it; a module:Class plug-in that no installed
    distribution provides carries the PYTHONPATH it was found through."""
    import shlex
    import subprocess
    import sys

    path = user_file(workdir / "u.h5ad")
    plugin = "helpers_predictors:SpyPredictor"
    assert main(["run", "--predictor", plugin, *data_args(path), "--no-figures"]) == 0
    board = (workdir / ".pertbench" / "LEADERBOARD.md").read_text()
    line = next(x for x in board.splitlines() if "helpers_predictors" in x and "`" in x)
    command = line.split("`")[1]
    tests_dir = Path(__file__).resolve().parent
    assert command.startswith(f"PYTHONPATH={tests_dir} bench run --predictor {plugin} --data u.h5ad ")
    env_part, *argv = shlex.split(command)
    argv = [a for a in argv[1:] if a != "--seed"][:-1] + [
        "--no-figures",
        "--no-leaderboard",
        "--max-splits",
        "1",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))",
            *argv,
        ],
        cwd=workdir,
        env={**__import__("os").environ, "PYTHONPATH": env_part.split("=", 1)[1]},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-500:]
