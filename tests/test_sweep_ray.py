"""`bench sweep` end to end on a tiny synthetic screen: serial = `bench run`; on a real local Ray cluster (a head and a
second worker process, started and stopped here) the same metrics, a worker killed mid-task changes nothing in
the store, and a restarted sweep does no finished task twice."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray")

from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from benchmark.tracking import schema  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PREDICTORS = ("no_change", "mean_shift")
SEEDS = (0, 1)
SWEEP = """
[settings]
seeds = [0, 1]
figures = false
cache_dir = "models"

[datasets.screen]
data = "screen.h5ad"
perturbation_key = "condition"
control = "control"
context_key = "cell_type"
expression = "counts"

[[grid]]
predictors = ["no_change", "mean_shift"]
datasets = ["screen"]
splits = ["random"]   # one split per seed holding out every group: tasks of 4 targets each
"""
N_TARGETS = 4  # 2 contexts x 2 perturbations


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",  # a throw-away cluster on this machine: no token to hand to the node
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def bench(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [PYTHON, "-m", "benchmark.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def sweep_process(workdir: Path, store: str, address: str) -> subprocess.Popen:
    command = ["sweep", "grid.toml", "--executor", "ray", "--address", address]
    return subprocess.Popen(
        [PYTHON, "-m", "benchmark.cli", *command, "--tracking-uri", store, "--no-leaderboard"],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    bench(
        *("make-synthetic", "--cells", "600", "--genes", "30", "--perturbations", "2"),
        *("--controls", "100", "--contexts", "2", "--out", "screen.h5ad"),
        cwd=folder,
    )
    (folder / "grid.toml").write_text(SWEEP)
    return folder


@pytest.fixture(scope="module")
def serial_store(workdir: Path) -> str:
    """The serial sweep's store (the reference every other store is compared with)."""
    store = f"sqlite:///{workdir}/serial.db"
    bench("sweep", "grid.toml", "--tracking-uri", store, "--no-leaderboard", cwd=workdir)
    return store


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster: a head process and a second node process, one CPU each; always stopped."""
    ray_bin = str(Path(PYTHON).parent / "ray")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="pbray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    try:
        subprocess.run(
            [*head, f"--temp-dir={temp}"], env=_env(), check=True, capture_output=True, timeout=240
        )
        address = f"{ray.util.get_node_ip_address()}:{port}"  # where the head listens
        node = [ray_bin, "start", f"--address={address}", "--num-cpus=1"]
        subprocess.run(node, env=_env(), check=True, capture_output=True, timeout=240)
        yield address
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=_env(), capture_output=True, timeout=180)
        shutil.rmtree(temp, ignore_errors=True)


def child_runs(store: str, view: int = ViewType.ACTIVE_ONLY) -> list:
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("pertbench/")]
    return client.search_runs(
        experiments,
        f"tags.`{schema.TAG_LEVEL}` = '{schema.LEVEL_SPLIT}'",
        run_view_type=view,
        max_results=5000,
    )


def target_key(run) -> tuple[str, str, str, str, str]:
    tags = run.data.tags
    return tuple(
        tags[t]
        for t in (
            schema.TAG_PREDICTOR,
            schema.TAG_SPLIT,
            schema.TAG_SEED,
            schema.TAG_CONTEXT,
            schema.TAG_PERTURBATION,
        )
    )


def finished_metrics(store: str) -> dict[tuple, dict[str, float]]:
    """Every FINISHED child's metrics by (predictor, split, seed, context, perturbation); fails on a double."""
    found: dict[tuple, dict[str, float]] = {}
    for run in child_runs(store):
        assert run.info.status == "FINISHED", f"child run {run.info.run_id} left {run.info.status}"
        key = target_key(run)
        assert key not in found, f"two finished child runs for {key}"
        found[key] = run.data.metrics
    return found


def assert_same_metrics(a: dict[tuple, dict], b: dict[tuple, dict]) -> None:
    """Equal scores (NaN equal to NaN) for the same targets; the fit's wall time is no score."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for name, value in a[key].items():
            if name == schema.FIT_SECONDS:
                continue
            other = b[key][name]
            assert value == other or (math.isnan(value) and math.isnan(other)), (key, name, value, other)


def parents(store: str) -> dict[str, object]:
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("pertbench/")]
    runs = client.search_runs(experiments, schema.parent_filter())
    return {r.data.tags[schema.TAG_PREDICTOR]: r for r in runs}


def test_serial_sweep_logs_what_bench_run_logs(workdir: Path, serial_store: str) -> None:
    store = f"sqlite:///{workdir}/run.db"
    for predictor in PREDICTORS:
        bench(
            *("run", "--predictor", predictor, "--data", str(workdir / "screen.h5ad")),
            *("--perturbation-key", "condition", "--control", "control", "--context-key", "cell_type"),
            *("--expression", "counts", "--split", "random", "--seeds", "0,1", "--no-figures"),
            *("--tracking-uri", store, "--no-leaderboard", "--cache-dir", "models"),
            cwd=workdir,
        )
    swept = finished_metrics(serial_store)
    assert len(swept) == len(PREDICTORS) * len(SEEDS) * N_TARGETS
    assert_same_metrics(swept, finished_metrics(store))
    ran, made = parents(store), parents(serial_store)
    assert ran.keys() == made.keys() == set(PREDICTORS)
    for predictor in PREDICTORS:
        a, b = ran[predictor].data, made[predictor].data
        assert a.params == b.params  # what the leaderboard groups by: hp.*, checksum, seeds, split set, cli
        for tag in (schema.TAG_DATASET, schema.TAG_SPLIT_KIND, schema.TAG_PARTIAL, schema.TAG_CONFIG):
            assert a.tags[tag] == b.tags[tag]
        assert a.tags[schema.TAG_RUN_NAME] == b.tags[schema.TAG_RUN_NAME]
        assert_same_metrics({0: a.metrics}, {0: b.metrics})  # the means over the children


def _task_pids() -> list[int]:
    """Processes executing a sweep task: Ray titles a busy worker `ray::run_task`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::run_task"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _count_children(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            query = "SELECT COUNT(*) FROM tags WHERE key = ? AND value = ?"
            return con.execute(query, (schema.TAG_LEVEL, schema.LEVEL_SPLIT)).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_ray_sweep_survives_a_killed_worker_and_matches_serial(
    workdir: Path, serial_store: str, cluster: str
) -> None:
    db = workdir / "ray.db"
    sweep = sweep_process(workdir, f"sqlite:///{db}", cluster)
    try:
        deadline, killed = time.monotonic() + 300, []
        while not killed and time.monotonic() < deadline and sweep.poll() is None:
            pids = _task_pids()
            if pids and _count_children(db) > 0:  # tasks are under way, with child runs logged
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed = pids
            time.sleep(0.05)
        out, _ = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert killed, "no task process was seen running"
    assert sweep.returncode == 0, out
    deleted = child_runs(f"sqlite:///{db}", ViewType.DELETED_ONLY)
    assert deleted, "the killed attempt left no child run behind to clean up"
    assert_same_metrics(finished_metrics(f"sqlite:///{db}"), finished_metrics(serial_store))


def test_restarted_sweep_does_no_finished_task_twice(workdir: Path, serial_store: str, cluster: str) -> None:
    store = f"sqlite:///{workdir}/restart.db"
    sweep = sweep_process(workdir, store, cluster)
    try:
        assert sweep.stdout is not None
        for line in sweep.stdout:  # quiet progress lines: stderr is not a terminal
            if " done " in line and line.startswith("["):
                sweep.send_signal(signal.SIGTERM)
                break
        out = sweep.communicate(timeout=300)[0]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 143, out
    before: dict[tuple, set[str]] = {}
    for run in child_runs(store):
        if run.info.status == "FINISHED":
            before.setdefault(target_key(run)[:3], set()).add(run.info.run_id)
    complete = {task: ids for task, ids in before.items() if len(ids) == N_TARGETS}
    assert complete, "no task had finished before the interruption"

    again = bench(
        *("sweep", "grid.toml", "--executor", "ray", "--address", cluster),
        "--tracking-uri",
        store,
        cwd=workdir,
    )
    after: dict[tuple, set[str]] = {}
    for run in child_runs(store):
        after.setdefault(target_key(run)[:3], set()).add(run.info.run_id)
    for task, ids in complete.items():
        assert after[task] == ids, f"finished task {task} was run again"
    skipped = [line for line in again.stderr.splitlines() if line.startswith("[") and " skipped " in line]
    assert len(skipped) >= len(complete)
    assert_same_metrics(finished_metrics(store), finished_metrics(serial_store))
    assert set(parents(store)) == set(PREDICTORS)
