"""`bench sweep` files: parsing, expansion into groups and tasks, and one-line errors for bad files (fast, no data)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.core.errors import PertbenchError
from benchmark.execution.sweep import DatasetSpec, TaskRef, expand, group_key, load_sweep
from benchmark.execution.sweep_run import Progress
from benchmark.execution.sweep_task import DONE, FAILED, SplitTask, TaskOutcome

GOOD = """
[settings]
seeds = [0, 1]
embedding = "pca"
cpus_per_task = 2

[datasets.mine]
data = "screen.h5ad"
perturbation_key = "condition"
control = "ctrl"
context_key = "cell_type"
expression = "counts"

[[grid]]
predictors = ["no_change", "mean_shift"]
datasets = ["kang2018", "mine"]
splits = ["default", "random"]

[[grid]]
predictors = ["additive"]
datasets = ["norman19"]
seeds = [3]
"""


def write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    (tmp_path / "screen.h5ad").write_bytes(b"")  # a named data file must exist; it is read only when run
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_expands_to_the_product_of_each_block_in_file_order(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, GOOD))
    labels = [(g.predictor, g.dataset.name, g.split_kind, g.seeds) for g in sweep.groups]
    assert labels[:4] == [
        ("no_change", "kang2018", "default", (0, 1)),
        ("mean_shift", "kang2018", "default", (0, 1)),
        ("no_change", "kang2018", "random", (0, 1)),
        ("mean_shift", "kang2018", "random", (0, 1)),
    ]
    assert len(labels) == 2 * 2 * 2 + 1
    assert labels[-1] == ("additive", "norman19", "default", (3,))  # the block's seeds replace the default
    mine = sweep.groups[4].dataset
    assert mine == DatasetSpec(
        "mine", str(tmp_path / "screen.h5ad"), "condition", "ctrl", "cell_type", "counts"
    )  # a relative data path is read from the sweep file's folder
    assert sweep.settings.cpus_per_task == 2 and sweep.settings.embedding == "pca"


def test_yaml_file_reads_like_toml(tmp_path: Path) -> None:
    yaml = """
settings: {seeds: [0, 1], embedding: pca, cpus_per_task: 2}
datasets:
  mine: {data: screen.h5ad, perturbation_key: condition, control: ctrl, context_key: cell_type,
         expression: counts}
grid:
  - {predictors: [no_change, mean_shift], datasets: [kang2018, mine], splits: [default, random]}
  - {predictors: [additive], datasets: [norman19], seeds: [3]}
"""
    assert load_sweep(write(tmp_path, yaml, "grid.yaml")).groups == load_sweep(write(tmp_path, GOOD)).groups


def test_parameter_sets_make_one_group_each(tmp_path: Path) -> None:
    text = '[[grid]]\npredictors = ["cvae_modeB"]\ndatasets = ["kang2018"]\nparams = [{}, {n_latent = 8}]\n'
    groups = load_sweep(write(tmp_path, text)).groups
    assert [g.param_dict for g in groups] == [{}, {"n_latent": 8}]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[grid]]\npredictors = ["nope"]\ndatasets = ["kang2018"]\n', "unknown predictor"),
        ('[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["nope"]\n', "unknown dataset 'nope'"),
        (
            '[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["kang2018"]\nsplit = ["random"]\n',
            "key 'split'",
        ),
        (
            '[settings]\nseed = 1\n[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["kang2018"]\n',
            "key 'seed'",
        ),
        ('[grids]\npredictors = ["mean_shift"]\n', "unknown key 'grids' in top level"),
        ("[settings]\nseeds = [0]\n", "empty grid"),
        ('[[grid]]\npredictors = []\ndatasets = ["kang2018"]\n', "empty grid"),
        ('[[grid]]\ndatasets = ["kang2018"]\n', "needs predictors"),
        ('[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["kang2018"]\nseeds = [-1]\n', "integers >= 0"),
        (
            '[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["kang2018"]\nsplits = ["x"]\n',
            "split kind 'x'",
        ),
        (
            '[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["kang2018"]\nparams = [{k = 1}]\n',
            "mean_shift",
        ),
        ('[[grid]]\npredictors = ["mean_shift", "mean_shift"]\ndatasets = ["kang2018"]\n', "appears twice"),
        ('[datasets.x]\ndata = "missing.h5ad"\nperturbation_key = "c"\ncontrol = "k"\n', "does not exist"),
        ("[[grid]\n", "not valid TOML"),
    ],
)
def test_bad_sweep_file_is_one_line_error(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PertbenchError, match="sweep file") as info:
        load_sweep(path)
    message = str(info.value)
    assert words in message and "\n" not in message and str(path) in message


def test_cli_reports_a_bad_file_in_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, '[[grid]]\npredictors = ["nope"]\ndatasets = ["kang2018"]\n')
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: sweep file") and "unknown predictor" in err and "\n" not in err
    assert main(["sweep", str(tmp_path / "absent.toml")]) == 2
    assert "no such sweep file" in capsys.readouterr().err


def test_dry_run_lists_parent_runs(tmp_path: Path, capsys) -> None:
    assert main(["sweep", str(write(tmp_path, GOOD)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "additive on norman19 · default · seeds 3" in out and "9 parent run(s)" in out


def test_expand_orders_tasks_like_bench_run() -> None:
    class S:
        def __init__(self, name: str, n: int) -> None:
            self.name, self.targets = name, [None] * n

    refs = expand({0: [S("a", 1), S("b", 2)], 1: [S("c", 3)]})
    assert refs == [TaskRef(0, 0, "a", 1), TaskRef(0, 1, "b", 2), TaskRef(1, 0, "c", 3)]


def test_group_key_changes_with_what_the_runs_record(tmp_path: Path) -> None:
    group = load_sweep(write(tmp_path, GOOD)).groups[0]
    key = group_key(group, "abc", "holdout_context", {"max_splits": None})
    assert key == group_key(group, "abc", "holdout_context", {"max_splits": None})
    assert key != group_key(group, "abd", "holdout_context", {"max_splits": None})
    assert key != group_key(group, "abc", "holdout_context", {"max_splits": 2})


def test_progress_prints_a_quiet_line_per_task_off_a_terminal() -> None:
    stream = io.StringIO()
    task = SplitTask("g", "p", "mean_shift", DatasetSpec("kang2018"), "random", 0, 0, "r", None, "u")  # type: ignore[arg-type]
    bar = Progress(2, 1, stream)
    bar("start", task, None)
    bar("end", task, TaskOutcome(task.key, DONE, seconds=1.5))
    bar("start", task, None)
    bar("end", task, TaskOutcome(task.key, FAILED, error="ValueError: boom"))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/2] done mean_shift on kang2018 seed 0 split r (1.5 s)")
    assert lines[1].startswith("[2/2] failed") and lines[1].endswith("ValueError: boom")
    assert (bar.done, bar.failed, bar.running) == (1, 1, 0)


class _SlowFit:
    """A cacheable predictor whose fit takes a while and leaves a line per fit in a file (shared by processes)."""

    cacheable = True

    def __init__(self, log: Path) -> None:
        self.log = log

    def fit(self, train, task):
        import time

        with open(self.log, "a") as out:
            out.write("fit\n")
        time.sleep(1.0)
        return self

    def save(self, directory: Path) -> None:
        (Path(directory) / "state").write_text("x")

    def load_fitted(self, directory: Path):
        return self


def _fit_in_child(cache: Path, log: Path, queue) -> None:
    from benchmark.execution.model_cache import fit_or_load

    queue.put(fit_or_load(_SlowFit(log), None, None, "key", cache)[1])


def test_two_processes_wanting_one_fit_fit_it_once(tmp_path: Path) -> None:
    """Two sweep workers on the same split and cache key (cvae_modeB, cvae_modeA): one fits, the other waits and
    loads the fit instead of training a second time."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    log = tmp_path / "fits.log"
    workers = [context.Process(target=_fit_in_child, args=(tmp_path / "cache", log, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(queue.get(timeout=5) for _ in workers) == ["hit", "miss"]
    assert log.read_text().count("fit") == 1


def test_readme_sweep_example_parses(tmp_path: Path) -> None:
    """The docs' sweep file, as written, is a valid sweep (so it cannot rot)."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    section = readme.split("## Sweeps", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    sweep = load_sweep(write(tmp_path, block))
    assert len(sweep.groups) == 2 * 2 + 2 * 2


def test_leaderboard_sweep_is_the_committed_grid() -> None:
    """leaderboard/sweep.toml: eight predictors on the four datasets, additive on norman19, seeds 0-2, scgen on
    kang2018 seed 0, PCA."""
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "leaderboard" / "sweep.toml")
    grid = {(g.predictor, g.dataset.name, g.split_kind, g.seeds) for g in sweep.groups}
    predictors = ("no_change", "mean_shift", "linear", "linear_cv", "cvae_modeB", "cvae_modeA")
    predictors += ("cvae_mlp_modeB", "cvae_mlp_modeA")
    datasets = ("kang2018", "kang2018_counts", "mcfaline23", "norman19")
    expected = {(p, d, "default", (0, 1, 2)) for p in predictors for d in datasets}
    assert grid == expected | {
        ("additive", "norman19", "default", (0, 1, 2)),
        ("scgen", "kang2018", "default", (0,)),
    }
    assert sweep.settings.embedding == "pca" and sweep.settings.store == "sqlite:///leaderboard.db"
    assert (sweep.settings.leaderboard, sweep.settings.readme) == (
        "leaderboard/LEADERBOARD.md",
        "docs/results.md",
    )


def test_progress_on_a_terminal_redraws_one_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    task = SplitTask("g", "p", "mean_shift", DatasetSpec("kang2018"), "random", 0, 0, "r", None, "u")  # type: ignore[arg-type]
    bar = Progress(3, 2, stream)
    for _ in range(3):
        bar("start", task, None)
    bar("end", task, TaskOutcome(task.key, DONE))
    bar.close()
    text = stream.getvalue()
    assert "\n" not in text.rstrip("\n") and text.count("\r") == 4  # one line, redrawn per event
    assert text.rstrip().endswith("1/3 tasks: 1 done, 0 skipped, 2 running, 0 failed")


def test_an_executor_registered_in_one_module_runs_a_sweep(tmp_path: Path, monkeypatch) -> None:
    """Adding an executor is one class and one register_executor call; `bench sweep --executor` offers it."""
    from benchmark.cli import main
    from benchmark.execution import executors

    ran: list[str] = []

    class Recording(executors.SerialExecutor):
        name = "recording"

        def run(self, tasks, report):
            ran.extend(task.key for task in tasks)
            return super().run(tasks, report)

    monkeypatch.setitem(executors.EXECUTORS, "recording", lambda options: Recording())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    grid = write(tmp_path, '[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["synthetic"]\n')
    assert main(["sweep", str(grid), "--executor", "recording", "--max-splits", "1"]) == 0
    assert len(ran) == 1
    with pytest.raises(executors.PertbenchError, match="unknown executor 'nope'; known: serial, ray"):
        executors.make_executor("nope", None, 1, 0, {})
