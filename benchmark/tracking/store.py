"""MLflow plumbing: the default embedded store, experiments, provenance tags, batched logging, and the parent
run's lifecycle (host and pid tags, SIGTERM ends it KILLED, runs of dead processes are marked KILLED)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow prints "View run ... at: <server URL>" per run against a server: bench prints where runs went itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A tracking server that stops answering must end `bench` with an error within a minute, not hang for minutes
# (MLflow's defaults: 120 s per request, 7 retries with exponential backoff). One request now waits at most
# 10 s and is retried once; a failed run needs at most two such requests before bench stops. Override any of
# these in the environment.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
for _name, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from benchmark.core import procs  # noqa: E402
from benchmark.core.errors import PertbenchError  # noqa: E402
from benchmark.tracking import schema  # noqa: E402
from benchmark.tracking.schema import EXPERIMENT_PREFIX  # noqa: E402

# After importing mlflow, which configures its own loggers: keep store-migration INFO lines out of `bench` output.
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
# MLflow logs every SQL error with its full traceback before raising it; bench reports the raised error in one
# line instead (`bench --debug` shows the traceback).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""An embedded SQLite store in the working directory; MLFLOW_TRACKING_URI points elsewhere (e.g. a server)."""
LOCAL_ARTIFACT_DIR = "mlartifacts"


def tracking_uri(uri: str | None = None) -> str:
    """The explicit URI, else MLFLOW_TRACKING_URI, else the embedded SQLite file."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
"""URI schemes MLflow's tracking stores accept (plus any store plugin's, see known_schemes)."""
FILE_SCHEMES = ("", "file")
"""A folder of run files (`./mlruns`, file://): MLflow keeps that store in maintenance mode and refuses it here."""

HOST_TAG, PID_TAG, PROC_START_TAG = schema.TAG_HOST, schema.TAG_PID, schema.TAG_PROC_START
"""Tags of a parent run naming the process that runs it, so a later `bench` can tell whether it died."""

STORE_LOCK_TIMEOUT_S = 300.0
_opened: set[str] = set()


def known_schemes() -> list[str]:
    """Every tracking URI scheme MLflow accepts here: its own and those of installed store plugins."""
    plugins = [ep.name for ep in entry_points(group="mlflow.tracking_store")]
    return sorted({*DATABASE_SCHEMES, *OTHER_SCHEMES, *plugins})


def check_uri(uri: str) -> None:
    """Raise a PertbenchError naming the accepted schemes unless MLflow has a store for `uri`'s scheme."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    base = scheme.split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    if len(scheme) == 1 and scheme.isalpha():  # a Windows drive letter: a local path
        return
    if uri in ("databricks", "databricks-uc", "uc") or base in known_schemes():
        return
    if base in FILE_SCHEMES:
        raise PertbenchError(
            f"tracking URI {uri!r} is a file store, which MLflow no longer accepts; use a database such as "
            "sqlite:///mlflow.db (`mlflow migrate-filestore` converts an existing folder)"
        )
    shown = ", ".join(s for s in known_schemes() if s)
    raise PertbenchError(f"unknown tracking URI scheme {scheme!r} in {uri!r}; MLflow accepts: {shown}")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (None for in-memory or non-sqlite stores)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///"):
        return None
    path = rest[3:].split("?", 1)[0]
    if path.startswith("file:"):
        path = path[5:]
    return Path(path) if path and path != ":memory:" else None


MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs"})
"""Tables every MLflow SQLite store has."""


def check_sqlite_store(path: Path) -> None:
    """Refuse (one line) a SQLite file that is neither empty or absent nor an MLflow store: MLflow would add its
    tables to it, or alter a table of the same name. Read-only: the file is opened with mode=ro."""
    import sqlite3

    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise PertbenchError(f"{path} is not an SQLite database; give a new file or an MLflow store")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise PertbenchError(f"cannot read the SQLite file {path}: {exc}") from exc
    if tables and not MLFLOW_TABLES <= tables:
        raise PertbenchError(
            f"{path} is an SQLite database that is not an MLflow store (tables: {', '.join(sorted(tables)[:5])}); "
            "refusing to add MLflow's tables to it: give a new file or an MLflow store"
        )


def path_lock(path: Path, timeout: float = STORE_LOCK_TIMEOUT_S):
    """A cross-process lock named after `path`, kept in the temp folder (not beside the file, whose folder may be
    read-only, and so no lock file lands in the user's folder)."""
    from filelock import FileLock

    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:20]
    return FileLock(Path(tempfile.gettempdir()) / f"pertbench-{key}.lock", timeout=timeout, mode=0o666)


def use_store(uri: str | None = None) -> str:
    """Point MLflow at the store and return its URI.

    A new SQLite store's schema is created (MLflow runs its migrations) under a file lock, so several `bench`
    processes starting together on a fresh store do not race in the migration. A store that cannot be opened
    (missing folder, read-only, full disk, unknown scheme) is a one-line PertbenchError.
    """
    resolved = tracking_uri(uri)
    check_uri(resolved)
    mlflow.set_tracking_uri(resolved)
    if resolved in _opened:
        return resolved
    path = sqlite_path(resolved)
    if path is not None:
        if not path.parent.is_dir():
            raise PertbenchError(
                f"cannot open the MLflow store {resolved}: folder {path.parent} does not exist"
            )
        try:
            lock = path_lock(path)
            lock.acquire()
        except OSError:  # no usable temp folder: open without the lock
            lock = None
        try:
            check_sqlite_store(path)  # before MLflow adds its tables to someone else's database
            MlflowClient(resolved).search_experiments(max_results=1)  # creates and migrates the schema
        except PertbenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - sqlite/sqlalchemy/alembic errors all mean "cannot open"
            raise PertbenchError(f"cannot open the MLflow store {resolved}: {one_line(exc)}") from exc
        finally:
            if lock is not None:
                lock.release()
    _opened.add(resolved)
    return resolved


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message squeezed onto one line and shortened, for `bench: error:` output."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def experiment_for(dataset: str) -> str:
    """One experiment per dataset, so the MLflow UI compares predictors on the same data side by side.

    Safe when several processes create it at once: the loser of the race uses the winner's experiment.
    """
    name = f"{EXPERIMENT_PREFIX}/{dataset}"
    if mlflow.get_experiment_by_name(name) is None:
        artifact_location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            artifact_location = (Path.cwd() / LOCAL_ARTIFACT_DIR).resolve().as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=artifact_location, tags=experiment_tags())
        except MlflowException:
            if mlflow.get_experiment_by_name(name) is None:
                raise
    experiment = mlflow.set_experiment(name)
    missing = {k: v for k, v in experiment_tags().items() if experiment.tags.get(k) != v}
    for key, value in missing.items():  # an experiment made before these tags existed, or edited in the UI
        MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return name


def experiment_tags() -> dict[str, str]:
    """Tags that make the MLflow UI open an experiment on its training runs, with the pertbench runs view."""
    return {
        schema.TAG_EXPERIMENT_KIND: schema.EXPERIMENT_KIND,
        schema.TAG_SHARED_VIEW: json.dumps(schema.shared_view_state()),
    }


def log_dataset(name: str, checksum: str, source: str) -> None:
    """Log the data as an input of the active run (name, digest from the checksum, source path or URL), without
    reading the cells: MLflow's UI shows it in the Dataset column."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    is_hex = all(ch in "0123456789abcdef" for ch in checksum)
    digest = checksum if is_hex else hashlib.sha256(checksum.encode()).hexdigest()
    scheme = urllib.parse.urlparse(source).scheme.lower()
    where = HTTPDatasetSource(source) if scheme in ("http", "https") else LocalArtifactDatasetSource(source)
    dataset = MetaDataset(where, name=name, digest=digest[: schema.DATASET_DIGEST_CHARS])
    mlflow.log_input(dataset, context=schema.DATASET_CONTEXT)


# ---------------------------------------------------------------------------------------------- lifecycle


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


def git_commit() -> str:
    """The commit of the pertbench checkout (with '+dirty' for local changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


MAX_PARAM_CHARS = 6000
"""MLflow's limit on a param value; a longer value is stored whole as an artifact (see `param_value`)."""
LONG_PARAM = "(stored whole in artifact "
"""How a param that was too long to store starts: the rest names the artifact holding it."""


def log_params(run_id: str, params: dict) -> None:
    """Log many params in one call (values as strings); a value longer than MLflow allows is written whole as
    the artifact params/<name>.txt and the param names it, so nothing (e.g. a Reproduce command) is cut."""
    items = []
    for key, value in params.items():
        text = str(value)
        if len(text) > MAX_PARAM_CHARS:
            artifact = f"params/{key}.txt"
            MlflowClient().log_text(run_id, text, artifact)
            text = f"{LONG_PARAM}{artifact})"
        items.append(Param(str(key), text))
    MlflowClient().log_batch(run_id, params=items)


def param_value(run, key: str, default: str | None = None) -> str | None:
    """A run's param as logged by `log_params`: the whole value, read back from its artifact when it was long."""
    value = run.data.params.get(key, default)
    if value is None or not value.startswith(LONG_PARAM):
        return value
    artifact = value[len(LONG_PARAM) : -1]
    return mlflow.artifacts.load_text(f"{run.info.artifact_uri.rstrip('/')}/{artifact}")


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log finite metrics in one call; NaN is stored as NaN (MLflow accepts it) so 'undefined' stays visible."""
    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and not math.isinf(v)
    ]
    for start in range(0, len(items), 900):
        MlflowClient().log_batch(run_id, metrics=items[start : start + 900])


def log_history(run_id: str, history: list[dict]) -> None:
    """Log a training curve (one dict of numbers per epoch) as step-indexed metrics under `train/`."""
    now = int(time.time() * 1000)
    items = []
    for i, row in enumerate(history):
        step = int(row.get("epoch", i))
        items += [
            Metric(f"train/{k}", float(v), now, step)
            for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)
        ]
    for start in range(0, len(items), 900):
        MlflowClient().log_batch(run_id, metrics=items[start : start + 900])
