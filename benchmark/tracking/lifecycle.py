"""The parent run's lifecycle: host and pid tags, SIGTERM ends it KILLED, runs of dead processes are marked KILLED,
and a lost tracking server or a failed SQL write told apart from other errors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmark.core import procs
from benchmark.tracking import schema
from benchmark.tracking.schema import EXPERIMENT_PREFIX

HOST_TAG, PID_TAG, PROC_START_TAG = schema.TAG_HOST, schema.TAG_PID, schema.TAG_PROC_START
"""Tags of a parent run naming the process that runs it, so a later `bench` can tell whether it died."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the run like Ctrl-C (not an Exception, so no `except Exception` swallows it)."""


_interrupted_ms: list[int] = []
"""When the last SIGTERM arrived (ms since the epoch): split runs that failed from then on were killed."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during clean-up kills at once
    _interrupted_ms[:] = [int(time.time() * 1000)]
    raise Terminated("terminated by SIGTERM")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated (main thread only; elsewhere a no-op); restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is _raise_terminated:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def process_alive(pid: int, proc_start: str | None = None) -> bool:
    """Whether process `pid` on this host still runs (and is the one that started at `proc_start`)."""
    if pid <= 0:
        return False
    if procs.available():
        stat = procs.read_stat(pid)
        if stat is None or stat.state in ("Z", "X"):  # a zombie has finished
            return False
        return not proc_start or stat.start is None or stat.start == proc_start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tags() -> dict[str, str]:
    """Host, pid and (on Linux) process start time of this process, for the parent run."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    start = procs.start_time(os.getpid())
    if start:
        tags[PROC_START_TAG] = start
    return tags


def server_unreachable(exc: BaseException) -> bool:
    """Whether an exception (or one it wraps) says the tracking server did not answer."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (requests.ConnectionError, requests.Timeout)):
            return True
        text = str(current)
        if isinstance(current, MlflowException) and (
            "Max retries exceeded" in text or "ConnectionError" in text or "Read timed out" in text
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def store_write_error(exc: BaseException) -> str | None:
    """The database's own words when an exception (or one it wraps) is a failed SQL write (full disk, read-only
    file, locked database), else None."""
    import re
    import sqlite3

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.DatabaseError):
            return str(current)
        found = re.search(r"\((?:sqlite3|psycopg2?|pymysql|MySQLdb)[\w.]*\.\w*Error\) ([^\[]+)", str(current))
        if found:
            return found.group(1).strip()
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def _short_http_requests() -> Iterator[None]:
    """One try with a 2 s timeout, for the last request of a run whose server already failed to answer."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def interrupted_since(signal_raised: bool = True) -> int:
    """Milliseconds since which runs that ended FAILED were stopped by the interruption: from the SIGTERM's
    arrival when one was noted, else the last 5 s (Ctrl-C), less 100 ms of clock slack."""
    signalled = _interrupted_ms[0] if signal_raised and _interrupted_ms else None
    return (signalled or int(time.time() * 1000) - 5000) - 100


def kill_children(parent_id: str, since_ms: int) -> None:
    """Mark the parent's child runs that ended (as FAILED) or still run since `since_ms` as KILLED."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=schema.children_filter(parent_id)
    )
    for child in children:
        status, end = child.info.status, child.info.end_time
        if status == "RUNNING" or (status == "FAILED" and end is not None and end >= since_ms):
            client.set_terminated(child.info.run_id, "KILLED")


@contextlib.contextmanager
def parent_run(run_name: str) -> Iterator[mlflow.ActiveRun]:
    """Start a parent run tagged with this host and pid; end it FINISHED, FAILED, or KILLED on SIGTERM / Ctrl-C.

    On SIGTERM the split run in progress is marked KILLED too and Terminated propagates (the CLI exits 143).
    When the tracking server stopped answering, the run is ended with one short try and left to the next
    `bench` (which marks it KILLED once this process is gone): bench fails within a minute instead of hanging.
    """
    with sigterm_raises():
        run = mlflow.start_run(run_name=run_name, tags=process_tags())
        try:
            yield run
        except (Terminated, KeyboardInterrupt) as exc:
            # split runs that ended FAILED since the signal (Ctrl-C: in the last 5 s) were stopped by it
            since = interrupted_since(isinstance(exc, Terminated))
            with contextlib.suppress(Exception):
                kill_children(run.info.run_id, since)
            _end_active(run.info.run_id, "KILLED")
            raise
        except BaseException as exc:
            if server_unreachable(exc):
                with _short_http_requests(), contextlib.suppress(Exception):
                    _end_active(run.info.run_id, "FAILED")
            else:
                _end_active(run.info.run_id, "FAILED")
            raise
        else:
            _end_active(run.info.run_id, "FINISHED")


def _end_active(run_id: str, status: str) -> None:
    """End the active run stack down to and including `run_id` (children first), each with `status`."""
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if active.info.run_id == run_id:
            break


def reap_dead_runs() -> list[str]:
    """Mark RUNNING parent runs of processes on this host that no longer exist, and their RUNNING split runs,
    as KILLED (end time now). Returns their run ids. Runs of other hosts, and runs without a pid, are left."""
    client = MlflowClient()
    experiments = [
        e.experiment_id for e in client.search_experiments() if e.name.startswith(EXPERIMENT_PREFIX)
    ]
    if not experiments:
        return []
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=5000)
    host = socket.gethostname()
    dead: set[str] = set()
    for run in running:
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if not process_alive(int(tags[PID_TAG]), tags.get(PROC_START_TAG)):
            dead.add(run.info.run_id)
    killed = [r.info.run_id for r in running if r.info.run_id in dead]
    killed += [
        r.info.run_id
        for r in running
        if r.info.run_id not in dead and r.data.tags.get(schema.TAG_PARENT_RUN) in dead
    ]
    now = int(time.time() * 1000)
    for run_id in killed:
        client.set_terminated(run_id, "KILLED", end_time=now)
    return killed
