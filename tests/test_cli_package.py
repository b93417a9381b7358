"""The `bench` command line's layout: one module per command, the shared arguments defined once, small modules."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark.cli
from benchmark.cli import app, args, build_parser, run, score, tune
from benchmark.cli.args import _Parser

EXPECTED = ("run", "tune", "score", "leaderboard", "sweep", "list", "env", "make-synthetic")
DATA_FLAGS = ("--dataset", "--data", "--perturbation-key", "--control", "--context-key", "--expression")
CLI_DIR = Path(benchmark.cli.__file__).parent


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_parser_has_exactly_the_commands_in_help_order():
    assert tuple(_subcommands(build_parser())) == EXPECTED
    assert tuple(m.NAME for m in app.COMMANDS) == EXPECTED


@pytest.mark.parametrize("command", app.COMMANDS, ids=lambda m: m.NAME)
def test_each_command_module_registers_its_own_parser_and_handler(command):
    parser = _Parser(prog="bench")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    added = command.add_parser(sub)
    assert list(sub.choices) == [command.NAME] and sub.choices[command.NAME] is added
    handle = app.handler(command)
    assert callable(handle) and handle.__module__ == command.__name__


def test_data_arguments_are_added_by_one_helper_for_run_score_and_tune(monkeypatch):
    calls = []

    def spy(parser):
        calls.append(parser.prog)
        args.add_data_arguments(parser)

    for module in (run, score, tune):
        assert module.add_data_arguments is args.add_data_arguments
        monkeypatch.setattr(module, "add_data_arguments", spy)
    commands = _subcommands(build_parser())
    assert calls == ["bench run", "bench tune", "bench score"]
    shown = {
        name: [
            (a.option_strings, a.default, a.choices, a.help)
            for a in p._actions
            if a.dest in {f.lstrip("-").replace("-", "_") for f in DATA_FLAGS}
        ]
        for name, p in commands.items()
        if name in ("run", "score", "tune")
    }
    assert shown["run"] == shown["score"] == shown["tune"] and len(shown["run"]) == len(DATA_FLAGS)


def test_only_the_args_module_spells_out_a_data_flag():
    for path in CLI_DIR.glob("*.py"):
        if path.name != "args.py":
            text = path.read_text()
            assert not [f for f in DATA_FLAGS if f'"{f}"' in text], path.name


def test_no_cli_module_exceeds_300_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in CLI_DIR.glob("*.py")}
    assert len(sizes) >= len(EXPECTED) + 3
    assert max(sizes.values()) <= 300, sizes


def test_python_m_benchmark_cli_runs_the_same_main():
    out = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and all(name in out.stdout for name in EXPECTED)


def test_bad_count_is_one_line_exit_2(capsys):
    assert benchmark.cli.main(["sweep", "x.toml", "--max-splits", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "bench: error: argument --max-splits: must be an integer >= 1, got 0 (see `bench sweep --help`)"
    ]
