"""MLflow plumbing: the default embedded store (URIs, schema creation under a lock), experiments and the data
input. The run lifecycle is in `lifecycle`, logging and read-back in `runs`; their names are re-exported here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.parse
from importlib.metadata import entry_points
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmark.core.errors import PertbenchError
from benchmark.tracking import schema

# Lifecycle and logging live in their own modules; their names stay reachable from here.
from benchmark.tracking.lifecycle import (  # noqa: F401
    HOST_TAG,
    PID_TAG,
    PROC_START_TAG,
    Terminated,
    interrupted_since,
    kill_children,
    parent_run,
    process_alive,
    process_tags,
    reap_dead_runs,
    server_unreachable,
    sigterm_raises,
    store_write_error,
)
from benchmark.tracking.runs import (  # noqa: F401
    LONG_PARAM,
    MAX_PARAM_CHARS,
    log_history,
    log_metrics,
    log_params,
    param_value,
)
from benchmark.tracking.schema import EXPERIMENT_PREFIX

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
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=schema.DATASET_CONTEXT)
            return
        except Exception as exc:  # noqa: BLE001 - two processes inserting the same dataset row at once
            if "UNIQUE constraint failed: datasets" not in str(exc) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))  # the other writer's row now exists: the retry only links it


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
