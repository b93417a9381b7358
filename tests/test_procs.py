"""Process liveness from /proc and the http-scheme test: one reader and one function, used by tracking and executors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmark.core import procs
from benchmark.core.uris import is_http
from benchmark.execution import executors
from benchmark.tracking import store

linux = pytest.mark.skipif(not procs.available(), reason="needs Linux /proc")


@linux
def test_own_process_is_alive_and_a_wrong_start_time_is_a_reused_pid():
    start = procs.start_time(os.getpid())
    assert start is not None and start.isdigit()
    assert store.process_tags()[store.PROC_START_TAG] == start
    assert store.process_alive(os.getpid(), start)
    assert not store.process_alive(os.getpid(), str(int(start) + 1))


@linux
def test_finished_process_reads_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procs.read_stat(child.pid) is None or procs.read_stat(child.pid).state in ("Z", "X")
    assert not store.process_alive(child.pid)


def test_stat_parse_keeps_a_command_name_with_spaces_and_parentheses(tmp_path, monkeypatch):
    fields = ["S"] + [str(i) for i in range(1, 25)]
    real_read = procs.Path.read_text
    monkeypatch.setattr(
        procs.Path,
        "read_text",
        lambda self: f"42 (a b) c) {' '.join(fields)}" if str(self) == "/proc/42/stat" else real_read(self),
    )
    assert procs.read_stat(42) == procs.ProcStat("S", "19")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("http://h:5000", True), ("HTTPS://h", True), ("sqlite:///m.db", False), ("./mlruns", False)],
)
def test_is_http_is_one_function(uri, expected):
    assert is_http(uri) is expected
    assert executors.is_http is is_http
