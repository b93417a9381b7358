"""Safe to share: the leaderboard escapes what it prints, never replaces a user's file, hides secrets and leaves
foreign stores alone. One case per promise; each fails on a harness that breaks it."""

from __future__ import annotations

import re
import sqlite3

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.core.redact import redact
from benchmark.data.datasets import load_dataset
from benchmark.execution.options import RunOptions
from benchmark.execution.runner import run_benchmark
from benchmark.reports.leaderboard import (
    OWNER_MARK,
    RUN_PATH,
    Board,
    default_board_path,
    figure_name,
    render,
    render_results,
)
from benchmark.reports.markdown import code_span, md_text
from benchmark.scoring.metrics import METRICS
from benchmark.tracking import runs
from benchmark.tracking import store as tracking

HOSTILE = "evil | <script>alert(1)</script> | x\n# injected [click](javascript:alert(1)) `tick` *b* <img src=x onerror=y>"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store in the working directory holding one quick mean_shift run."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.use_store(uri)
    quiet = lambda _: None  # noqa: E731
    run_benchmark("mean_shift", load_dataset("synthetic"), "holdout_context", RunOptions(max_splits=1), quiet)
    return uri


def _hostile_board() -> Board:
    frame = pd.DataFrame({m: [0.5, 0.25] for m in METRICS}, index=["s1", "s2"])
    return Board(
        dataset=HOSTILE,
        split_kind="holdout_context",
        scores={HOSTILE: frame},
        ceiling=pd.DataFrame(),
        references={HOSTILE: frame},
        not_applicable={HOSTILE: 0},
        commands={HOSTILE: f"bench score p.h5ad --name '{HOSTILE}'"},
        parents={HOSTILE: "r1"},
    )


def _cells(line: str) -> int:
    """Cell borders of a markdown table row: '|' not escaped."""
    return len(re.findall(r"(?<!\\)\|", line))


@pytest.mark.parametrize("page", ["leaderboard", "readme results"])
def test_user_text_in_a_board_is_escaped(page):
    text = render([_hostile_board()], {}) if page == "leaderboard" else render_results([_hostile_board()])
    outside_code = re.sub(r"(`+) .*? \1", "", text)  # a code span shows its text verbatim, never as markup
    for bad in ("<script>", "<img", "](javascript:", "`tick`", "*b*"):
        assert bad not in outside_code, bad
    assert not any(line.startswith("# injected") for line in text.splitlines())
    lines = text.splitlines()
    rows = 0
    for i, line in enumerate(lines):
        if line.startswith("|---"):  # a table: every row has its header's cells
            header = _cells(lines[i - 1])
            for row in lines[i + 1 :]:
                if not row.startswith("|"):
                    break
                assert _cells(row) == header, row
                rows += 1
    assert rows >= 1


def test_escaping_keeps_the_text_readable_and_code_spans_verbatim():
    assert md_text("mean_shift (alpha=1.0)") == "mean_shift (alpha=1.0)"
    assert md_text("a|b<c>&\nd") == "a&#124;b&lt;c&gt;&amp; d"
    span = code_span("bench run --name 'a`b'\nx")
    assert span.startswith("`` ") and span.endswith(" ``") and "\n" not in span and "a`b" in span


def test_the_board_refuses_to_replace_a_file_it_did_not_write(store, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert main(["leaderboard", "--output", str(notes), "--no-figures"]) == 2
    assert "not a leaderboard bench wrote" in capsys.readouterr().err
    assert notes.read_text() == "my notes\n"
    assert main(["leaderboard", "--output", str(notes), "--no-figures", "--force"]) == 0
    assert OWNER_MARK in notes.read_text()
    assert main(["leaderboard", "--output", str(notes), "--no-figures"]) == 0  # now it is the board's


def test_a_sweep_file_leaderboard_path_is_refused_likewise(store, tmp_path, capsys):
    target = tmp_path / "paper.md"
    target.write_text("draft\n")
    sweep = tmp_path / "grid.toml"
    sweep.write_text(
        f'[settings]\nleaderboard = "{target}"\n\n[[grid]]\npredictors = ["mean_shift"]\ndatasets = ["synthetic"]\n'
    )
    assert main(["sweep", str(sweep), "--max-splits", "1"]) == 2
    assert "not a leaderboard bench wrote" in capsys.readouterr().err
    assert target.read_text() == "draft\n"


def test_the_board_refuses_to_replace_a_users_figure(store, tmp_path, capsys):
    board = tmp_path / "paper" / "LEADERBOARD.md"
    figures = board.parent / "figures"
    figures.mkdir(parents=True)
    mine = figures / figure_name("synthetic__holdout_context__mean_shift (partial)", "summary")
    mine.write_bytes(b"my figure")
    assert main(["leaderboard", "--output", str(board)]) == 2
    assert mine.name in capsys.readouterr().err
    assert mine.read_bytes() == b"my figure" and not board.exists()


@pytest.mark.parametrize(
    "uri",
    [
        "http://alice:s3cretPW@127.0.0.1:9",
        "https://alice:s3cretPW@127.0.0.1:9/",
        "postgresql://alice:s3cretPW@127.0.0.1:9/db",
    ],
)
def test_no_password_is_printed(uri, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code = main(["leaderboard", "--no-figures"])
    out = capsys.readouterr()
    assert code != 0 and "bench: error:" in out.err
    assert "s3cretPW" not in out.out + out.err
    if uri.startswith("http"):
        assert "alice:***@127.0.0.1" in out.err


def test_redact_masks_passwords_tokens_and_secret_query_values():
    assert redact("http://u:pw@h/x") == "http://u:***@h/x"
    assert redact("https://TOKEN@h") == "https://***@h"
    assert redact("db://h/x?sslmode=on&password=pw") == "db://h/x?sslmode=on&password=***"
    assert redact("sqlite:///mlflow.db and http://h/#/runs") == "sqlite:///mlflow.db and http://h/#/runs"


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE experiments (id INTEGER, note TEXT)")
        db.execute("INSERT INTO experiments VALUES (1, 'mine')")
    before = other.read_bytes()
    assert main(["leaderboard", "--tracking-uri", f"sqlite:///{other}", "--no-figures"]) == 2
    assert "not an MLflow store" in capsys.readouterr().err
    assert other.read_bytes() == before
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all")
    assert main(["leaderboard", "--tracking-uri", f"sqlite:///{junk}", "--no-figures"]) == 2
    assert junk.read_bytes() == b"not a database at all"


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns"])
def test_a_file_store_is_refused_in_one_line(uri, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--tracking-uri", uri, "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "file store" in err and len(err.strip().splitlines()) == 1


def test_a_run_into_another_store_keeps_the_default_stores_board(store, tmp_path):
    assert main(["leaderboard", "--no-figures"]) == 0
    default = tmp_path / RUN_PATH
    before = default.read_text()
    other = f"sqlite:///{tmp_path / 'sweep.db'}"
    assert default_board_path(other) != RUN_PATH
    args = ["run", "--predictor", "no_change", "--dataset", "synthetic", "--max-splits", "1", "--no-figures"]
    assert main([*args, "--tracking-uri", other]) == 0
    assert default.read_text() == before  # still the default store's rows only
    board = tmp_path / default_board_path(other)
    rows = [line.split("|")[1].strip() for line in board.read_text().splitlines() if line.startswith("| ")]
    assert "no_change (partial)" in rows and not any(r.startswith("mean_shift") for r in rows)


def test_a_read_only_store_still_gives_its_board(store, tmp_path, monkeypatch, capsys):
    """A crashed run (RUNNING, its process gone) in a store opened read-only: the reaper cannot write, the board
    is read anyway."""
    client = tracking.MlflowClient()
    experiment = client.get_experiment_by_name("pertbench/synthetic")
    run = client.create_run(
        experiment.experiment_id, tags={tracking.HOST_TAG: __import__("socket").gethostname()}
    )
    client.set_tag(run.info.run_id, tracking.PID_TAG, str(2**22 + 7))  # no such process
    read_only = f"sqlite:///file:{tmp_path / 'mlflow.db'}?mode=ro&uri=true"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", read_only)
    code = main(["leaderboard", "--no-figures", "--output", str(tmp_path / "ro.md")])
    assert code == 0, capsys.readouterr().err
    assert "mean_shift" in (tmp_path / "ro.md").read_text()


def test_a_param_longer_than_mlflow_allows_is_kept_whole(tmp_path, monkeypatch):
    """A Reproduce command of many labels is not cut at MLflow's 6,000 characters: it is stored whole."""
    from benchmark.reports.leaderboard import reproduce_command
    from benchmark.tracking import schema

    monkeypatch.chdir(tmp_path)
    tracking.use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.experiment_for("long")
    args = "--predictor mean_shift " + " ".join(f"--perturbation P{i}" for i in range(900))
    assert len(args) > tracking.MAX_PARAM_CHARS
    with tracking.parent_run("long") as run:
        tracking.log_params(run.info.run_id, {schema.PARAM_CLI: args, "short": "x"})
    parent = runs.get_run(run.info.run_id)
    assert tracking.param_value(parent, schema.PARAM_CLI) == args
    assert tracking.param_value(parent, "short") == "x"
    assert reproduce_command(parent, None) == f"bench run {args}"
