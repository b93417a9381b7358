"""ForeignPredictor: a predictor whose model runs in its own environment, in worker processes.

`fit` writes the training cells it is given (h5ad: log-normalized X, counts in a layer for count data, obs
reduced to perturbation and context) and a JSON of the task, parameters and seed into a private work folder,
then runs the worker's fit, which keeps the fitted model on disk there. Each `predict` writes the control cells
it is given and runs the worker's predict on that model. The worker therefore sees only what fit and predict
receive, never held-out cells. Every fault of the worker (non-zero exit, a timeout, a traceback, the wrong
number of cells, wrong genes, NaN) is a one-line PertbenchError naming the log file, which is kept (the logs of
calls that succeed are removed).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.protocol import Predictor, predicted_anndata
from benchmark.core.task import Task

DEFAULT_TIMEOUT = 6 * 3600.0
"""Seconds one worker call may run (a fit of a large model on CPU takes hours, a hang forever)."""

_PARAMS_NOT_SENT = ("timeout",)
_TRACEBACK = "Traceback (most recent call last)"
_calls = itertools.count()


@dataclass(frozen=True)
class Environment:
    """A ready environment: its Python, what goes on PYTHONPATH, the model module, and where logs go."""

    name: str
    python: Path
    python_paths: list[Path]
    module: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)


def committed_environment(name: str) -> Environment:
    """The built environment of the committed spec `name` (a one-line error naming the build command if not)."""
    from benchmark.envs.spec import env_root, load_spec

    spec = load_spec(name)
    python = spec.require_built()
    return Environment(spec.name, python, spec.python_paths(), spec.module, env_root() / "logs")


class WorkerError(PertbenchError):
    """A worker call failed: one line naming the environment, the step, the problem and the log file."""


class ForeignPredictor(Predictor):
    """Base of predictors that run in another environment. Subclasses set `env_name` (a folder of envs/) and
    add their hyperparameters to the constructor; every parameter but `timeout` is sent to the worker."""

    env_name: str = ""

    def __init__(self, random_state: int = 0, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.random_state = random_state
        self.timeout = timeout

    # ---------------------------------------------------------------- environment

    def environment(self) -> Environment:
        """The environment the worker runs in (tests override this to point at another interpreter)."""
        return committed_environment(self.env_name)

    def worker_params(self) -> dict[str, Any]:
        """The hyperparameters the model module receives (JSON-serializable)."""
        return {k: v for k, v in self.get_params().items() if k not in _PARAMS_NOT_SENT}

    # ---------------------------------------------------------------- fit / predict

    def fit(self, train: AnnData, task: Task) -> ForeignPredictor:
        """Write the training cells and the fit spec to a private folder; run the worker's fit there."""
        env = self.environment()
        workdir = Path(tempfile.mkdtemp(prefix=f"pertbench-{env.name}-"))
        weakref.finalize(self, shutil.rmtree, workdir, ignore_errors=True)
        _cells(train, task).write_h5ad(workdir / "train.h5ad")
        spec = {
            "task": {
                "control_label": task.control_label,
                "combo_separator": task.combo_separator,
                "has_context": task.context_key is not None,
                "has_counts": task.expression == "counts",
            },
            "params": self.worker_params(),
            "seed": int(self.random_state),
        }
        (workdir / "fit.json").write_text(json.dumps(spec, indent=1, default=_plain), encoding="utf-8")
        _run_worker(env, "fit", workdir, [], float(self.timeout)).unlink(missing_ok=True)
        self.env_ = env
        self.workdir_ = workdir
        self.task_ = task
        self.var_names_ = [str(v) for v in train.var_names]
        self.labels_ = {str(v) for v in np.unique(task.perturbations(train))}
        self.contexts_ = {str(v) for v in np.unique(task.contexts(train))}
        return self

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """Write the control cells, run the worker's predict on the fitted model, check what it wrote."""
        if not hasattr(self, "workdir_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        if [str(v) for v in control.var_names] != self.var_names_:
            raise ValueError("control cells do not have the training genes in the training order")
        env, call = self.env_, f"{os.getpid()}-{next(_calls)}"
        control_path, out = self.workdir_ / f"control-{call}.h5ad", self.workdir_ / f"pred-{call}.h5ad"
        _cells(control, self.task_).write_h5ad(control_path)
        args = [f"--control={control_path}", f"--perturbation={perturbation}", f"--out={out}"]
        if context is not None:
            args.append(f"--context={context}")  # one argument each: a label may start with '-'

        try:
            log = _run_worker(env, "predict", self.workdir_, args, float(self.timeout))
            return self._read_prediction(out, control, perturbation, context, log)
        finally:
            for path in (control_path, out, out.with_suffix(".json")):
                path.unlink(missing_ok=True)

    def _read_prediction(
        self, out: Path, control: AnnData, perturbation: str, context: str | None, log: Path
    ) -> AnnData:
        """The worker's prediction as the protocol's AnnData, or the one-line error saying what is wrong."""
        import anndata

        where = f"environment {self.env_.name!r}: the worker's prediction for {perturbation!r}"
        try:
            result = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkerError(f"{where} wrote no result ({type(exc).__name__}); log: {log}") from exc
        if "not_applicable" in result:
            log.unlink(missing_ok=True)
            raise NotApplicable(str(result["not_applicable"]))
        predicted = anndata.read_h5ad(out)
        if predicted.n_obs != control.n_obs:
            raise WorkerError(
                f"{where} has {predicted.n_obs} cells for {control.n_obs} control cells; log: {log}"
            )
        if [str(v) for v in predicted.var_names] != self.var_names_:
            raise WorkerError(f"{where} does not have the control's genes in order; log: {log}")
        values = predicted.X.toarray() if sp.issparse(predicted.X) else np.asarray(predicted.X)
        if not np.isfinite(values).all():
            raise WorkerError(f"{where} has NaN or infinite values; log: {log}")
        log.unlink(missing_ok=True)
        return predicted_anndata(values, control, perturbation, context)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and tuples in parameters."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"parameter value {value!r} cannot be sent to the worker")


def _cells(adata: AnnData, task: Task) -> AnnData:
    """What the worker gets of a set of cells: log-normalized X (float32), counts for count data, and obs reduced
    to the perturbation and context labels."""
    if adata.isbacked:
        adata = adata.to_memory()
    x = task.lognorm(adata)
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    obs = pd.DataFrame(
        {"perturbation": task.perturbations(adata), "context": task.contexts(adata)},
        index=[str(v) for v in adata.obs_names],
    )
    out = AnnData(X=x, obs=obs, var=pd.DataFrame(index=[str(v) for v in adata.var_names]))
    if task.expression == "counts":
        out.layers["counts"] = sp.csr_matrix(adata.X, dtype=np.float32) if sp.issparse(adata.X) else adata.X
    return out


def _run_worker(env: Environment, step: str, workdir: Path, args: list[str], timeout: float) -> Path:
    """Run one worker call in its own process group (killed whole on timeout, error or interrupt); return its
    log file, or raise a one-line WorkerError."""
    env.log_dir.mkdir(parents=True, exist_ok=True)
    log = env.log_dir / f"{env.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_calls)}-{step}.log"
    command = [str(env.python), "-m", "pertbench_worker", step, "--module", env.module, "--dir", str(workdir)]
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    variables.update(env.extra_env)
    variables["PYTHONPATH"] = os.pathsep.join(str(p) for p in env.python_paths)
    variables["PYTHONNOUSERSITE"] = "1"
    variables.setdefault("MPLBACKEND", "Agg")
    where = f"environment {env.name!r}: the worker's {step}"
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(command + args)}\n")
        fh.flush()
        process = subprocess.Popen(
            command + args,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=variables,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise WorkerError(
                f"{where} ran past its timeout of {timeout:g} s and was killed; log: {log}"
            ) from None
        except BaseException:
            _kill_group(process)
            raise
        _kill_group(process)  # anything it left running in its group
    text = log.read_text(encoding="utf-8", errors="replace")
    if code != 0 or _TRACEBACK in text:
        why = _last_error(text) or (f"killed by signal {-code}" if code < 0 else f"exit status {code}")
        raise WorkerError(f"{where} failed: {why}; log: {log}")
    return log


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the worker's process group (the worker and anything it started), then reap the worker."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group already exited
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _last_error(text: str) -> str:
    """The exception line of the last traceback in a log ('ValueError: ...'), cut to 300 characters: the first
    unindented line after the traceback's header (its frames and code lines are indented)."""
    at = text.rfind(_TRACEBACK)
    if at < 0:
        return ""
    lines = text[at:].splitlines()[1:]
    error = next((ln for ln in lines if ln.strip() and not ln[0].isspace()), "")
    return " ".join(error.split())[:300]
