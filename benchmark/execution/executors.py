"""Where a sweep's tasks run: in this process one after another (serial), or as Ray tasks on a cluster (ray).

Both hand every task to `benchmark.execution.sweep_task.run_task` and report each outcome as it arrives. The Ray executor
declares the CPUs of each task (torch and BLAS threads inside it match), lets Ray retry a task whose worker died,
and gives the workers a tracking URI they can share: an http(s) MLflow server (MLFLOW_TRACKING_URI, or one this
process starts on a local store when every Ray node is this machine). Workers never open one SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from benchmark.core.errors import PertbenchError
from benchmark.core.uris import is_http

if (
    TYPE_CHECKING
):  # the task module loads the whole harness: imported where a task runs, not by `bench --help`
    from benchmark.execution.sweep_task import SplitTask, TaskOutcome

Report = Callable[[str, "SplitTask", "TaskOutcome | None"], None]
"""Called with ("start", task, None) when a task is handed out and ("end", task, outcome) when it ends."""


class Executor(Protocol):
    """Where a sweep's split-level tasks run. `run` hands each task to `sweep_task.run_task` somewhere, reports
    it as it starts and ends, and returns every outcome by task key."""

    name: str
    slots: int
    """How many tasks run at once (the progress bar's width of work in flight)."""

    def worker_uri(self, uri: str) -> str:
        """The tracking URI the tasks log to, given the sweep's store."""
        ...

    def threads(self) -> int | None:
        """CPU threads a task may use (torch, BLAS, scoring), or None for the process's own settings."""
        ...

    def run(self, tasks: list[SplitTask], report: Report) -> dict[str, TaskOutcome]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ExecutorOptions:
    """What `bench sweep` gives an executor: its cluster address, CPUs and retries per task, the tasks' env."""

    address: str | None = None
    cpus_per_task: int = 1
    max_retries: int = 3
    env: dict[str, str] = field(default_factory=dict)


EXECUTORS: dict[str, Callable[[ExecutorOptions], Executor]] = {}
"""Registered executors by name (`bench sweep --executor NAME`): a factory from the sweep's options."""


def register_executor(name: str, factory: Callable[[ExecutorOptions], Executor]) -> None:
    """Add an executor under `name`; the CLI's --executor choices are this registry's names."""
    if name in EXECUTORS:
        raise ValueError(f"executor {name!r} is already registered")
    EXECUTORS[name] = factory


SERVER_START_TIMEOUT_S = 180.0


class SerialExecutor:
    """Runs the tasks in this process, in order: the same results as `bench run` for the same seeds."""

    name = "serial"
    slots = 1

    def worker_uri(self, uri: str) -> str:
        return uri

    def threads(self) -> int | None:
        return None  # as `bench run`: the process's own thread settings

    def run(self, tasks: list[SplitTask], report: Report) -> dict[str, TaskOutcome]:
        from benchmark.execution.sweep_task import run_task

        outcomes = {}
        for task in tasks:
            report("start", task, None)
            outcomes[task.key] = run_task(task)
            report("end", task, outcomes[task.key])
        return outcomes

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs the tasks as Ray remote functions: `ray.init(address)` joins a cluster, no address starts one here."""

    name = "ray"

    def __init__(self, address: str | None, cpus_per_task: int, max_retries: int, env: dict[str, str]):
        try:
            import ray
        except ImportError:
            raise PertbenchError(
                "--executor ray needs Ray: pip install -c constraints.txt -e '.[ray]'"
            ) from None
        self.cpus, self.max_retries, self._ray = cpus_per_task, max_retries, ray
        self.server: TrackingServer | None = None
        threads = str(cpus_per_task)
        env = {
            **env,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "PERTBENCH_SCORE_THREADS": threads,  # targets scored at once (runner.score_threads)
            "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p
            ),
        }
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {"include_dashboard": False} if address is None else {}
        handlers = _signal_handlers()
        try:
            ray.init(
                address=address,
                runtime_env={"env_vars": env},
                log_to_driver=False,
                logging_level="WARNING",
                **kwargs,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PertbenchError(
                f"cannot start or join Ray at {address or 'a new local instance'}: {exc}"
            ) from None
        finally:  # Ray's driver aborts on SIGTERM; bench's own handler ends the sweep's runs KILLED instead
            _restore(handlers)
        total = int(ray.cluster_resources().get("CPU", 0))
        if total < cpus_per_task:
            ray.shutdown()
            raise PertbenchError(
                f"cpus_per_task = {cpus_per_task} but the Ray cluster has {total} CPU(s); no task could start"
            )
        self.slots = max(1, total // cpus_per_task)
        here = ray.util.get_node_ip_address()
        self.remote_nodes = sorted(
            n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive") and n["NodeManagerAddress"] != here
        )

    def worker_uri(self, uri: str) -> str:
        """The tracking URI workers log to: `uri` if it is a server; else a server this process starts on it,
        provided every node is this machine (workers elsewhere cannot share a local store)."""
        if is_http(uri):
            return uri
        if self.remote_nodes:
            raise PertbenchError(
                f"the Ray cluster has workers on other machines ({', '.join(self.remote_nodes[:3])}); they cannot "
                f"share the store {uri}: start `mlflow server` and set MLFLOW_TRACKING_URI (or --tracking-uri) to "
                "its http(s) address"
            )
        self.server = TrackingServer.start(uri)
        return self.server.url

    def threads(self) -> int | None:
        return self.cpus

    def run(self, tasks: list[SplitTask], report: Report) -> dict[str, TaskOutcome]:
        from benchmark.execution.sweep_task import FAILED, TaskOutcome, run_task

        ray = self._ray
        remote = ray.remote(run_task).options(
            num_cpus=self.cpus, max_retries=self.max_retries, retry_exceptions=False
        )
        by_ref = {}
        for task in tasks:
            by_ref[remote.remote(task)] = task
            report("start", task, None)
        pending, outcomes = list(by_ref), {}
        with _signals_noted() as noted:
            while pending:
                _raise_noted(noted)
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    task = by_ref[ref]
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died more often than max_retries
                        text = " ".join(str(exc).split())[:300]
                        outcome = TaskOutcome(task.key, FAILED, error=f"{type(exc).__name__}: {text}")
                    outcomes[task.key] = outcome
                    report("end", task, outcome)
        return outcomes

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self._ray.shutdown()


def _signal_handlers() -> dict:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_noted() -> Iterator[list[int]]:
    """Within the block SIGTERM and SIGINT are only noted (raising inside Ray's C++ wait would garble the
    exception); the caller raises them between waits with _raise_noted. Handlers restored after."""
    import signal
    import threading

    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: noted.append(signum))
    try:
        yield noted
    finally:
        _restore(previous)


def _raise_noted(noted: list[int]) -> None:
    """Raise what bench raises for a noted signal: KeyboardInterrupt (Ctrl-C) or Terminated (SIGTERM)."""
    import signal

    from benchmark.tracking.store import Terminated

    if noted:
        raise KeyboardInterrupt if noted[0] == signal.SIGINT else Terminated("terminated by SIGTERM")


def _die_with_parent() -> None:
    """In the server's process (Linux): get SIGTERM when the sweep's process dies, even by SIGKILL."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _serial(options: ExecutorOptions) -> SerialExecutor:
    if options.address is not None:
        raise PertbenchError("--address needs --executor ray")
    return SerialExecutor()


register_executor("serial", _serial)
register_executor("ray", lambda o: RayExecutor(o.address, o.cpus_per_task, o.max_retries, o.env))


def make_executor(
    kind: str, address: str | None, cpus_per_task: int, max_retries: int, env: dict[str, str]
) -> Executor:
    """The registered executor `kind`, built from the sweep's options."""
    if kind not in EXECUTORS:
        raise PertbenchError(f"unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
    return EXECUTORS[kind](ExecutorOptions(address, cpus_per_task, max_retries, dict(env)))


# ---------------------------------------------------------------------------------------------- tracking server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _absolute_store(uri: str) -> str:
    """The store URI with an absolute path (the server process resolves paths from its own folder)."""
    from benchmark.tracking.store import sqlite_path

    path = sqlite_path(uri)
    if path is not None:
        return uri if path.is_absolute() else uri.replace(str(path), str(path.resolve()), 1)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or uri).resolve().as_uri()
    return uri


class TrackingServer:
    """An `mlflow server` on this machine's loopback over a local store, started and stopped by the sweep."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    @classmethod
    def start(cls, store: str, timeout: float = SERVER_START_TIMEOUT_S) -> TrackingServer:
        port = _free_port()
        log = Path(tempfile.mkdtemp(prefix="pertbench-mlflow-server-")) / "server.log"
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            _absolute_store(store),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path.cwd(),
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        server = cls(process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise PertbenchError(f"the MLflow tracking server on {store} exited: {tail[0][:200]}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return server
            except OSError:
                time.sleep(0.5)
        server.stop()
        raise PertbenchError(
            f"the MLflow tracking server on {store} did not answer within {timeout:.0f} s ({log})"
        )

    def stop(self) -> None:
        """Stop the server (its whole process group: uvicorn workers too)."""
        import signal

        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=10)
