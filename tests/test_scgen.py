"""The optional scGen predictor: a one-line install hint when pertpy is missing, no pertpy import from the
registry, what it declines, and (where the `scgen` extra is installed) seeded, reproducible predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.task import Task
from benchmark.data.synthetic import make_synthetic
from predictors.registry import make_predictor
from predictors.scgen import ScGen

INSTALL = "pip install -c constraints.txt -e '.[scgen]'"
REPO = Path(__file__).resolve().parents[1]
TASK = Task("condition", "control", "cell_type", expression="counts")


@pytest.fixture
def no_pertpy(monkeypatch):
    """pertpy cannot be found or imported (as in an install without the extra), whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "pertpy", None)


def test_run_without_the_extra_fails_in_one_line_saying_how_to_install(
    no_pertpy, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    data = tmp_path / "u.h5ad"
    make_synthetic(n_genes=8, n_contexts=2, n_perturbations=1, cells_per_group=12, seed=0).write_h5ad(data)
    code = main(
        ["run", "--predictor", "scgen", "--data", str(data), "--perturbation-key", "condition"]
        + ["--control", "control", "--context-key", "cell_type", "--expression", "counts", "--no-figures"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("bench: error: predictor 'scgen' needs pertpy") and err.endswith(INSTALL)
    assert not store.exists() and not (tmp_path / ".pertbench").exists()  # failed before anything was written


def test_fit_without_pertpy_says_how_to_install(no_pertpy):
    adata = make_synthetic(n_genes=8, n_contexts=2, n_perturbations=1, cells_per_group=12, seed=0)
    with pytest.raises(PertbenchError, match=r"cannot import pertpy .*install it with: pip install") as info:
        ScGen().fit(adata, TASK)
    assert "\n" not in str(info.value)


def test_registry_and_construction_do_not_import_pertpy():
    code = (
        "import sys; from predictors.registry import make_predictor, available_predictors; "
        "make_predictor('scgen', max_epochs=5); available_predictors(); "
        "assert 'pertpy' not in sys.modules and 'scvi' not in sys.modules and 'jax' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_declines_the_control_and_labels_never_seen_in_training():
    adata = make_synthetic(n_genes=8, n_contexts=2, n_perturbations=2, cells_per_group=12, seed=0)
    train = adata[adata.obs["condition"].astype(str) != "P1"]
    _, model = make_predictor("scgen")
    model.check_applicable(train, TASK, "P0", "C0")
    with pytest.raises(NotApplicable, match="never saw perturbation 'P1'"):
        model.check_applicable(train, TASK, "P1", "C0")
    with pytest.raises(NotApplicable, match="not the control"):
        model.check_applicable(train, TASK, "control", "C0")
    no_control = adata[adata.obs["condition"].astype(str) != "control"]
    with pytest.raises(NotApplicable, match="needs control cells"):
        model.check_applicable(no_control, TASK, "P0", "C0")


@pytest.mark.slow
def test_same_seed_gives_identical_predictions():
    """Two fits with one seed predict the same cells; pertpy's unseeded predict-time balancing is seeded too.
    Slow only through pertpy's import and JAX's compilation (~tens of seconds); training is 2 tiny epochs."""
    pytest.importorskip("pertpy")
    adata = make_synthetic(n_genes=30, n_contexts=3, n_perturbations=1, cells_per_group=20, seed=1)
    is_target = (adata.obs["cell_type"] == "C0").to_numpy() & (adata.obs["condition"] == "P0").to_numpy()
    train = adata[~is_target].copy()
    control = adata[
        (adata.obs["cell_type"] == "C0").to_numpy() & (adata.obs["condition"] == "control").to_numpy()
    ]
    small = dict(n_latent=4, n_hidden=16, max_epochs=2, batch_size=128)

    first = ScGen(**small, random_state=0).fit(train, TASK)
    a = first.predict(control, "P0", "C0")
    assert a.shape == control.shape and list(a.var_names) == list(control.var_names)
    assert np.array_equal(first.predict(control, "P0", "C0").X, a.X)  # balancing draws repeat
    b = ScGen(**small, random_state=0).fit(train, TASK).predict(control, "P0", "C0")
    assert np.array_equal(a.X, b.X)
    c = ScGen(**small, random_state=1).fit(train, TASK).predict(control, "P0", "C0")
    assert not np.allclose(a.X, c.X)  # the seed does reach the fit
