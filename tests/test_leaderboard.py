"""The leaderboard: regenerated from the MLflow store, best values marked, ceiling and commands shown."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from benchmark.core.task import LOGNORM_LAYER, Task, lognormalize
from benchmark.data.datasets import Dataset, load_dataset
from benchmark.data.synthetic import make_synthetic
from benchmark.execution.options import RunOptions
from benchmark.execution.runner import run_benchmark
from benchmark.reports.leaderboard import (
    Board,
    _metric_table,
    best_row,
    collect,
    lead_within_noise,
    mean_ci,
    normalized,
    per_split,
    rank_predictors,
    render,
    write_leaderboard,
)
from benchmark.scoring.metrics import METRICS
from benchmark.tracking import schema
from benchmark.tracking import store as tracking


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    adata = make_synthetic(n_genes=60, n_contexts=3, n_perturbations=2, cells_per_group=30, seed=1)
    adata.layers[LOGNORM_LAYER] = lognormalize(adata.X)
    return Dataset(
        "tiny", adata, Task("condition", "control", "cell_type", "counts"), "sum", "test", "holdout_context"
    )


def test_mean_ci_is_a_student_t_interval():
    x = pd.Series([0.1, 0.4, 0.35, 0.8, np.nan])
    mean, half, n = mean_ci(x)
    finite = x.dropna().to_numpy()
    low, high = stats.t.interval(0.95, len(finite) - 1, loc=finite.mean(), scale=stats.sem(finite))
    assert n == 4 and mean == pytest.approx(finite.mean()) and half == pytest.approx((high - low) / 2)


def test_seeds_are_averaged_within_a_split_before_the_interval():
    one_seed = {("a", 0): {"r": 0.2}, ("b", 0): {"r": 0.5}, ("c", 0): {"r": 0.9}}
    repeated = {(split, seed): v for (split, _), v in one_seed.items() for seed in (0, 1, 2)}
    assert mean_ci(per_split(repeated)["r"]) == pytest.approx(mean_ci(per_split(one_seed)["r"]))
    assert mean_ci(per_split(repeated)["r"])[2] == 3  # three splits, not nine units
    noisy = {("a", 0): {"r": 0.1}, ("a", 1): {"r": 0.3}, ("b", 0): {"r": np.nan}, ("b", 1): {"r": 0.5}}
    assert per_split(noisy)["r"].to_dict() == pytest.approx({"a": 0.2, "b": 0.5})


def test_ranking_compares_predictors_on_the_splits_they_all_scored():
    # B's own mean (0.9) beats A's (0.85) only thanks to two splits A declined; on shared splits A is better.
    a = pd.DataFrame({"r": [0.85, 0.85]}, index=["s1", "s2"])
    b = pd.DataFrame({"r": [0.8, 0.8, 1.0, 1.0]}, index=["s1", "s2", "s3", "s4"])
    assert rank_predictors({"A": a, "B": b}, "r") == ["A", "B"]
    lower = pd.DataFrame({"mse_mean": [0.2, 0.1]}, index=["s1", "s2"])
    higher = pd.DataFrame({"mse_mean": [0.3, 0.3]}, index=["s1", "s2"])
    assert rank_predictors({"hi": higher, "lo": lower}, "mse_mean") == ["lo", "hi"]


def test_normalized_is_a_ratio_of_means_over_the_predictors_splits():
    idx = ["s1", "s2"]
    board = Board(
        "d",
        "k",
        scores={"p": pd.DataFrame({"r": [0.6, 0.8]}, index=idx)},
        ceiling=pd.DataFrame({"r": [0.9, 0.7]}, index=idx),
        references={"p": pd.DataFrame({"r": [0.5, 0.69]}, index=idx)},
        not_applicable={},
        commands={},
        parents={},
    )
    # per-split ratios would be 0.25 and 11 (a split whose ceiling is barely above its baseline)
    assert normalized(board, "p", "r") == pytest.approx((0.7 - 0.595) / (0.8 - 0.595))


def test_lead_within_noise_uses_paired_differences():
    units = [("s1", 0), ("s2", 0), ("s3", 0), ("s4", 0)]
    base = pd.Series([0.2, 0.5, 0.8, 0.3], index=units)
    assert not lead_within_noise(base + 0.1, base)  # a constant lead is certain, however noisy the splits
    assert lead_within_noise(base + pd.Series([0.2, -0.2, 0.1, -0.15], index=units), base)


def test_leaderboard_from_store(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking.use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    quiet = lambda _: None  # noqa: E731
    options = RunOptions(seeds=(0, 1), embedding="pca", max_splits=2)
    run_benchmark("mean_shift", tiny, "holdout_context", options, quiet)
    run_benchmark("no_change", tiny, "holdout_context", RunOptions(seeds=(0, 1), figures=False), quiet)
    path = write_leaderboard(tmp_path / "board" / "LEADERBOARD.md", f"sqlite:///{tmp_path / 'mlflow.db'}")
    text = path.read_text()
    assert "## tiny · holdout_context" in text
    raw_table = text.split("Normalized (")[0]
    rows = {line.split("|")[1].strip(): line for line in raw_table.splitlines() if line.startswith("| ")}
    assert {"mean_shift (partial)", "no_change", "*mean_oracle*", "*noise ceiling*"} <= set(rows)
    assert "NaN" in rows["no_change"]  # r of a constant prediction is undefined, shown as such
    # a quick look is never best, and the one complete row is best at nothing: no bold, no verdict, no comparison
    assert "**" not in rows["mean_shift (partial)"] and "**" not in rows["no_change"]
    assert "Verdict" not in text and "comparison" not in text
    assert re.search(r"(?m)^Generated \d{4}-\d{2}-\d{2} by pertbench \S+ at commit [0-9a-f]{12}", text)
    assert (
        "bench run --predictor mean_shift --data test --perturbation-key condition --control control "
        "--context-key cell_type --expression counts --split holdout_context --seeds 0,1 --max-splits 2"
    ) in text
    figures = sorted(p.name for p in (tmp_path / "board" / "figures").iterdir() if not p.name.startswith("."))
    assert any("mean_shift" in f and "summary" in f for f in figures)
    assert any("mean_shift" in f and "composite" in f for f in figures)
    for name in figures:
        assert f"figures/{name}" in text


def _board_text(uri: str) -> str:
    return render(collect(uri), {})


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_a_max_splits_run_leaves_the_full_run_rows_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = tracking.use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    synthetic = load_dataset("synthetic")
    quiet = lambda _: None  # noqa: E731
    run_benchmark("mean_shift", synthetic, "holdout_context", RunOptions(figures=False), quiet)
    quick = RunOptions(figures=False, max_splits=1)
    run_benchmark("no_change", synthetic, "holdout_context", quick, quiet)
    before = _board_text(uri)
    run_benchmark("mean_shift", synthetic, "holdout_context", quick, quiet)  # a later quick look
    after = _board_text(uri)
    assert after == before
    table = _section(after, "## synthetic · holdout_context").split("Normalized (")[0]
    rows = {
        line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")
    }
    assert set(rows) - {"predictor"} == {
        "mean_shift",
        "no_change (partial)",
        "*mean_oracle*",
        "*noise ceiling*",
    }
    assert int(rows["mean_shift"][2]) == 12 and int(rows["no_change (partial)"][2]) == 1
    # the one complete row is best at nothing (a partial row is never ranked): no bold anywhere
    assert "**" not in "".join(rows["mean_shift"]) and "**" not in "".join(rows["no_change (partial)"])
    assert "`bench run --predictor mean_shift --dataset synthetic --split holdout_context --seed 0`" in after


def test_configurations_get_their_own_rows_and_reproduce_lines_that_round_trip(tmp_path, monkeypatch):
    import shlex

    import anndata as ad

    from benchmark.cli import build_parser, main
    from benchmark.data.datasets import load_h5ad

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.use_store(uri)
    adata = make_synthetic(n_genes=30, n_contexts=2, n_perturbations=1, cells_per_group=20, seed=2)
    file = tmp_path / "my screen.h5ad"
    ad.AnnData(adata.X, obs=adata.obs, var=adata.var).write_h5ad(file)
    data = load_h5ad(file, "condition", "control", "cell_type", "counts")
    predictor = "helpers_predictors:CachedPredictor"
    quiet = lambda _: None  # noqa: E731
    run_benchmark(predictor, data, "holdout_context", RunOptions(figures=False), quiet)
    shifted = RunOptions(figures=False, seeds=(0, 1), params={"offset": 1.0})
    first = run_benchmark(predictor, data, "holdout_context", shifted, quiet)
    (board,) = collect(uri)
    assert set(board.scores) == {f"{predictor} (defaults)", f"{predictor} (offset=1.0)"}
    command = board.commands[f"{predictor} (offset=1.0)"]
    argv = shlex.split(command)
    tests_dir = Path(__file__).resolve().parent
    assert argv[:3] == [f"PYTHONPATH={tests_dir}", "bench", "run"]  # the plug-in's module lies in tests/
    args = build_parser().parse_args(argv[2:])
    assert (args.predictor, dict(args.param), args.split, args.seeds) == (
        predictor,
        {"offset": 1.0},
        "holdout_context",
        (0, 1),
    )
    assert (args.data, args.perturbation_key, args.control, args.context_key, args.expression) == (
        Path(file.name),  # under the working directory: named relative to it
        "condition",
        "control",
        "cell_type",
        "counts",
    )
    assert main([*argv[2:], "--no-figures", "--no-leaderboard", "--no-cache"]) == 0  # run as printed
    again = max(
        mlflow.search_runs(
            search_all_experiments=True, filter_string=schema.parent_filter(), output_format="list"
        ),
        key=lambda r: r.info.start_time,
    )
    original = MlflowClient().get_run(first.parent_run_id)
    assert again.info.run_id != original.info.run_id
    assert again.data.tags[schema.TAG_CONFIG] == original.data.tags[schema.TAG_CONFIG]
    assert again.data.metrics == pytest.approx(original.data.metrics, nan_ok=True)


def test_tied_top_values_are_not_bold():
    idx = ["s1", "s2", "s3"]
    frames = {
        "a": pd.DataFrame({"var_ratio": [0.272, 0.3, 0.25], "r": [0.5, 0.6, 0.7]}, index=idx),
        "b": pd.DataFrame({"var_ratio": [0.272, 0.3, 0.25 + 1e-12], "r": [0.4, 0.5, 0.6]}, index=idx),
    }
    assert best_row(frames, "var_ratio") is None
    assert best_row(frames, "r") == ("a", False)
    lines = _metric_table(frames, {}, mark_best=True)
    column = list(METRICS).index("var_ratio") + 3
    assert all("**" not in line.split("|")[column] for line in lines[2:])
    assert "**" in lines[2].split("|")[list(METRICS).index("r") + 3]


def test_bench_list_shows_each_metric_with_its_direction_and_kind(capsys):
    from benchmark.cli import main

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    arrows = {True: "↑", False: "↓", None: "→0"}
    for metric in METRICS.values():
        line = next(x for x in lines if x.split()[:1] == [metric.name])
        assert line.split()[1:3] == [arrows[metric.higher_is_better], metric.kind]


def test_readme_results_block_is_regenerated_between_markers(tmp_path):
    from benchmark.core.errors import PertbenchError
    from benchmark.reports.leaderboard import RESULTS_END, RESULTS_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{RESULTS_START}\nstale numbers 0.99\n{RESULTS_END}\nafter\n")
    update_readme(readme, [])
    text = readme.read_text()
    assert (
        "stale numbers" not in text
        and text.startswith("# title\n")
        and text.endswith(f"{RESULTS_END}\nafter\n")
    )
    assert "Generated by `bench leaderboard --readme docs/results.md`" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers here\n")
    with pytest.raises(PertbenchError, match="results"):
        update_readme(plain, [])
    assert plain.read_text() == "no markers here\n"


def _fake_parent(run_id: str, params: dict[str, str]):
    """A finished parent run as the store reads it back (only what the leaderboard reads)."""
    from benchmark.tracking.runs import RunRecord

    tags = {
        schema.TAG_PREDICTOR: "cvae_modeB",
        schema.TAG_DATASET: "kang2018",
        schema.TAG_SPLIT_KIND: "holdout_context",
        schema.TAG_PARTIAL: schema.FALSE,
    }
    params = {"hp.n_latent": "per split", **params}
    return RunRecord(run_id, "1", "parent", "FINISHED", 1, 2, "", tags=tags, params=params)


def test_two_tuned_configs_get_their_own_rows():
    # their per-split values read alike ("per split"); the config digest keeps them apart
    from benchmark.reports.leaderboard import _Parent, _rows

    parents = [
        _Parent.read(_fake_parent("a" * 32, {schema.PARAM_CONFIG_DIGEST: "1111aaaa2222"})),
        _Parent.read(_fake_parent("b" * 32, {schema.PARAM_CONFIG_DIGEST: "3333bbbb4444"})),
        _Parent.read(_fake_parent("c" * 32, {})),
    ]
    assert len({p.config for p in parents}) == 3
    labels = [label for label, _ in _rows(parents)]
    assert sorted(labels) == [
        "cvae_modeB (config 1111aaaa)",
        "cvae_modeB (config 3333bbbb)",
        "cvae_modeB (defaults)",
    ]
