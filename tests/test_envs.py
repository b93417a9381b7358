"""Foreign predictors: environment specs and builds, the worker end to end, and every worker fault as one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.envs.foreign import Environment, WorkerError
from benchmark.envs.spec import REPO_ENVS, WORKER_DIR, load_spec
from predictors.peers.example import ExampleMeanShift

TESTS = Path(__file__).parent
EXAMPLE = REPO_ENVS / "example_mean_shift"


def _case():
    from benchmark.conformance import _case as conformance_case

    return conformance_case("P0")


class _HereMeanShift(ExampleMeanShift):
    """The example predictor with its worker run by this interpreter (no build): the unit tests' environment."""

    module = "mean_shift_model"

    def environment(self) -> Environment:
        return Environment(
            "here",
            Path(sys.executable),
            [WORKER_DIR, EXAMPLE, TESTS],
            self.module,
            Path(os.environ["PERTBENCH_TEST_LOG_DIR"]),
            {"PERTBENCH_TEST_PID_FILE": os.environ["PERTBENCH_TEST_PID_FILE"]},
        )


class _Faulty(_HereMeanShift):
    module = "worker_faults"


class _FailingFit(_Faulty):
    def worker_params(self) -> dict:
        return {"fail_fit": True}


@pytest.fixture(autouse=True)
def _logs(tmp_path, monkeypatch):
    monkeypatch.setenv("PERTBENCH_TEST_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PERTBENCH_TEST_PID_FILE", str(tmp_path / "pids"))


@pytest.fixture(scope="module")
def fitted_faulty(tmp_path_factory):
    """One fit of the fault module, shared by the prediction faults (each fault is a target name)."""
    where = tmp_path_factory.mktemp("faulty")
    case = _case()
    with pytest.MonkeyPatch.context() as patch:  # the environment (log dir, pid file) is fixed at fit
        patch.setenv("PERTBENCH_TEST_LOG_DIR", str(where / "logs"))
        patch.setenv("PERTBENCH_TEST_PID_FILE", str(where / "pids"))
        model = _Faulty(timeout=30.0).fit(case.train, case.task)
    return model, case


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_worker_fits_predicts_and_declines(fitted_faulty):
    model, case = fitted_faulty
    predicted = model.predict(case.control, "P0", case.context)
    assert predicted.n_obs == case.control.n_obs
    assert list(predicted.var_names) == list(case.control.var_names)
    x = np.asarray(predicted.X)
    assert np.isfinite(x).all() and not np.array_equal(x, case.task.lognorm(case.control).toarray())
    with pytest.raises(NotApplicable, match="never saw"):
        model.predict(case.control, "never_seen", case.context)
    assert not list(model.env_.log_dir.glob("*.log"))  # the logs of calls that succeed are removed


def test_worker_gets_only_the_cells_fit_receives(fitted_faulty):
    import anndata

    model, case = fitted_faulty
    written = anndata.read_h5ad(model.workdir_ / "train.h5ad")
    assert written.n_obs == case.train.n_obs and list(written.obs.columns) == ["perturbation", "context"]
    assert set(written.obs_names) == set(case.train.obs_names)
    assert not (set(case.full.obs_names) - set(case.train.obs_names)) & set(written.obs_names)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("crash", "failed: exit status 3"),
        ("shape", "has 28 cells for 29 control cells"),
        ("nan", "NaN or infinite values"),
        ("genes", "does not have the control's genes in order"),
        ("traceback", "failed: RuntimeError: a swallowed error"),
    ],
)
def test_prediction_fault_is_one_line_naming_the_log(fitted_faulty, fault, message):
    model, case = fitted_faulty
    with pytest.raises(WorkerError) as caught:
        model.predict(case.control, f"{fault}@P0", case.context)
    text = _one_line(caught.value)
    assert message in text
    log = Path(text.rsplit("log: ", 1)[1])
    assert log.is_file() and log.read_text()
    log.unlink()


def test_fit_fault_is_one_line():
    case = _case()
    model = _FailingFit()
    with pytest.raises(WorkerError) as caught:
        model.fit(case.train, case.task)
    assert "the worker's fit failed: ValueError: the model refused the training cells" in _one_line(
        caught.value
    )
    assert not hasattr(model, "workdir_")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_dead(pids: list[int], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_hang_past_timeout_kills_the_worker_and_its_children(fitted_faulty):
    model, case = fitted_faulty
    model.timeout = 5.0
    pid_file = Path(model.env_.extra_env["PERTBENCH_TEST_PID_FILE"])
    pid_file.unlink(missing_ok=True)
    try:
        with pytest.raises(WorkerError, match=r"ran past its timeout of 5 s and was killed; log: "):
            model.predict(case.control, "hang@P0", case.context)
    finally:
        model.timeout = 30.0
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 2 and _wait_dead(pids)


def test_interrupt_kills_the_worker_group(fitted_faulty, monkeypatch):
    model, case = fitted_faulty
    pid_file = Path(model.env_.extra_env["PERTBENCH_TEST_PID_FILE"])
    pid_file.unlink(missing_ok=True)
    wait = subprocess.Popen.wait

    def interrupted(self, timeout=None):
        if timeout is None:
            return wait(self)
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.predict(case.control, "hang@P0", case.context)
    monkeypatch.undo()
    pids = [int(p) for p in pid_file.read_text().split()]
    assert _wait_dead(pids)


def test_missing_environment_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PERTBENCH_ENV_DIR", str(tmp_path))
    spec = load_spec("example_mean_shift")
    assert spec.status() == "missing"
    with pytest.raises(PertbenchError, match="bench env build example_mean_shift"):
        case = _case()
        ExampleMeanShift().fit(case.train, case.task)


def test_status_built_then_stale(tmp_path):
    import json

    spec = load_spec("example_mean_shift")
    where = spec.location(tmp_path)
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "python").symlink_to(sys.executable)
    (where / "pertbench-env.json").write_text(json.dumps({"spec_hash": spec.digest()}))
    assert spec.status(tmp_path) == "built"
    (where / "pertbench-env.json").write_text(json.dumps({"spec_hash": "0" * 64}))
    assert spec.status(tmp_path) == "stale"


def test_bad_spec_is_one_line(tmp_path):
    (tmp_path / "env.toml").write_text('python = "3"\nmodule = "m"\n')
    (tmp_path / "requirements.txt").write_text("")
    with pytest.raises(PertbenchError, match='python must be a version like "3.11"'):
        load_spec(tmp_path)
    with pytest.raises(PertbenchError, match="unknown environment 'nope'"):
        load_spec("nope")


def test_cli_env_list_and_missing_env_on_run(tmp_path, monkeypatch, capsys):
    from benchmark.cli import main

    monkeypatch.setenv("PERTBENCH_ENV_DIR", str(tmp_path))
    assert main(["env", "list"]) == 0
    out = capsys.readouterr().out
    assert "example_mean_shift" in out and "missing" in out
    assert main(["env", "remove", "example_mean_shift"]) == 0
    assert "nothing removed" in capsys.readouterr().out
    code = main(["run", "--predictor", "biolord", "--dataset", "kang2018", "--no-leaderboard"])
    err = capsys.readouterr().err
    assert code == 2 and "bench env build biolord" in err and err.count("\n") == 1


# ---------------------------------------------------------------- integration: a real, conflicting environment


@pytest.fixture(scope="session")
def example_env(tmp_path_factory):
    """The example environment built for real (pip from the registry): numpy 1.26 / anndata 0.10 on 3.12."""
    from benchmark.envs.build import build_env

    root = tmp_path_factory.mktemp("envs")
    spec = load_spec("example_mean_shift")
    print(build_env(spec, root))
    return root


@pytest.mark.integration
def test_conflicting_environment_end_to_end(example_env, monkeypatch):
    from benchmark.conformance import check_predictor

    monkeypatch.setenv("PERTBENCH_ENV_DIR", str(example_env))
    spec = load_spec("example_mean_shift")
    assert spec.status() == "built"
    python = spec.interpreter()
    versions = subprocess.run(
        [str(python), "-c", "import numpy, anndata, sys; print(numpy.__version__, anndata.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert versions[0].startswith("1.26") and versions[1].startswith("0.10")
    check_predictor(ExampleMeanShift, name="example_mean_shift")


@pytest.mark.integration
@pytest.mark.peers
def test_biolord_conformance_on_a_tiny_budget():
    """The real peer through the protocol's checks, where `bench env build biolord` has been run (~2 GB)."""
    from benchmark.conformance import check_predictor
    from predictors.peers.biolord import Biolord

    if load_spec("biolord").status() != "built":
        pytest.skip("the biolord environment is not built (bench env build biolord)")
    small = {"max_epochs": 2, "check_val_every_n_epoch": 1, "decoder_width": 32, "attribute_nn_width": 16}
    check_predictor(Biolord, params=small, name="biolord")


def test_missing_python_version_is_one_line(tmp_path, monkeypatch):
    from benchmark.envs.build import find_python

    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PertbenchError, match=r"no Python 3\.99 found .* pyenv install 3\.99"):
        find_python("3.99")


@pytest.mark.integration
def test_build_marks_built_then_stale_and_remove_deletes(tmp_path):
    """A spec with no requirements: a venv and an empty pip install, the marker, stale on a spec edit, removal."""
    from benchmark.envs.build import build_env, remove_env

    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "env.toml").write_text('name = "empty"\npython = "3.11"\nmodule = "m"\n')
    (folder / "requirements.txt").write_text("# nothing\n")
    spec, root = load_spec(folder), tmp_path / "envs"
    line = build_env(spec, root)
    assert "built environment 'empty'" in line and "\n" not in line and spec.status(root) == "built"
    assert "already built" in build_env(spec, root)
    (folder / "requirements.txt").write_text("# changed\n")
    assert load_spec(folder).status(root) == "stale"
    assert "removed" in remove_env(spec, root) and spec.status(root) == "missing"


def test_failed_build_is_one_line_naming_the_log(tmp_path, monkeypatch):
    from benchmark.envs import build

    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "env.toml").write_text('name = "broken"\npython = "3.11"\nmodule = "m"\n')
    (folder / "requirements.txt").write_text("")
    monkeypatch.setattr(build, "find_python", lambda version: Path("/bin/false"))
    with pytest.raises(
        PertbenchError, match=r"building environment 'broken' failed .*\(exit 1\); see .*broken\.build\.log"
    ):
        build.build_env(load_spec(folder), tmp_path / "envs")
    assert not (tmp_path / "envs" / "broken").exists()
