"""Inputs a user or a shared file controls: each refused in one line (exit 2, naming the problem) before anything
is written or scored."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data.datasets import DatasetCard, locate_file, parse_card, prepare
from benchmark.execution.score import check_scale_like

TASK = Task("condition", "control", "cell_type", expression="lognorm")
CARD = """name = "evil"
file = "{file}"
url = "http://127.0.0.1:9/x"
sha256 = "{sha}"
perturbation_key = "condition"
control = "control"
context_key = "cell_type"
expression = "lognorm"
default_split = "holdout_context"
"""


@pytest.mark.parametrize("file", ["../escaped/x.sh", "/etc/passwd", "sub/x.h5ad", ".hidden", ".."])
def test_a_dataset_card_cannot_name_a_file_outside_the_data_folder(file, tmp_path):
    card = tmp_path / "evil.toml"
    card.write_text(CARD.format(file=file, sha=hashlib.sha256(b"x").hexdigest()))
    with pytest.raises(PertbenchError, match="plain file name"):
        parse_card(card)
    fields = dict(name="evil", file=file, sha256="0" * 64, perturbation_key="condition", control="control")
    raw = DatasetCard(**fields, expression="lognorm", default_split="holdout_context")
    with pytest.raises(PertbenchError, match="plain file name inside the data folder"):
        locate_file(raw, tmp_path / "data")
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("lookalike", ["control ", "Control", " CONTROL"])
def test_a_label_that_is_the_control_but_for_whitespace_or_case_is_an_error_naming_both(make_tiny, lookalike):
    adata = make_tiny()
    labels = adata.obs["condition"].astype(str).to_numpy()
    labels[np.flatnonzero(labels == "control")[::2]] = lookalike
    adata.obs["condition"] = labels
    with pytest.raises(PertbenchError, match=rf"{lookalike!r} beside the control label 'control'"):
        prepare(adata, TASK)


def test_an_all_zero_matrix_is_named(make_tiny):
    adata = make_tiny()
    adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
    with pytest.raises(PertbenchError, match="X is all zeros"):
        prepare(adata, TASK)


def test_expression_held_only_in_layers_is_named(make_tiny):
    adata = make_tiny()
    held = AnnData(obs=adata.obs, var=adata.var, layers={"counts": adata.X})
    with pytest.raises(PertbenchError, match="X is empty .*layers: counts"):
        prepare(held, TASK)


@pytest.mark.parametrize("rescale", ["log2", "binary"])
def test_predictions_on_another_log_scale_are_refused(rescale):
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(200, 300)).astype(np.float64)
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    x = np.log2(np.expm1(lognorm) + 1) if rescale == "log2" else (counts > 0).astype(float)
    check_scale_like(lognorm[:100], lognorm[100:], "same.h5ad")  # the right scale passes
    with pytest.raises(PertbenchError, match="wrong scale: .*median total expression"):
        check_scale_like(x[:100], lognorm[100:], "p.h5ad")


def test_a_dry_run_sweep_never_imports_a_named_module(tmp_path, monkeypatch, capsys):
    """`module:Class` runs that module's code when imported: `bench sweep --dry-run` checks the name's form only."""
    from benchmark.cli import main

    (tmp_path / "sideeffect.py").write_text(
        "import pathlib\npathlib.Path('imported').write_text('ran')\nclass P: pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = tmp_path / "grid.toml"
    grid.write_text('[[grid]]\npredictors = ["sideeffect:P", "mean_shift"]\ndatasets = ["synthetic"]\n')
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    assert "2 parent run(s)" in capsys.readouterr().out
    assert not (tmp_path / "imported").exists()
    grid.write_text('[[grid]]\npredictors = ["not a module:P"]\ndatasets = ["synthetic"]\n')
    assert main(["sweep", str(grid), "--dry-run"]) == 2
    assert "not of the form module:Class" in capsys.readouterr().err


def test_a_plus_inside_one_label_is_not_a_combination_and_the_default_falls_back(tmp_path, capsys):
    """A '+' in a label whose parts are not labels (a guide named 'GENE+1') on single-context data: the default
    split is random, with a one-line warning, not a holdout_combo that scores nothing."""
    from benchmark.data.datasets import load_h5ad

    rng = np.random.default_rng(0)
    labels = ["ctrl"] * 40 + ["GENE+1"] * 40 + ["OTHER"] * 40
    adata = AnnData(
        X=np.log1p(rng.poisson(2.0, size=(120, 20))).astype(np.float32),
        obs={"condition": labels},
    )
    adata.obs_names = [f"c{i}" for i in range(120)]
    adata.write_h5ad(tmp_path / "guides.h5ad")
    dataset = load_h5ad(tmp_path / "guides.h5ad", "condition", "ctrl")
    assert dataset.default_split == "random"
    err = capsys.readouterr().err
    assert "'GENE+1'" in err and "default split: random" in err and len(err.strip().splitlines()) == 1


def test_real_combinations_on_several_contexts_raise_no_warning(tmp_path, capsys):
    """'A+B' whose parts are labels is a combination: no warning, even where contexts make holdout_context the
    default; a name with a '+' beside it is still reported."""
    from benchmark.data.datasets import load_h5ad
    from benchmark.data.splits import has_combinations, joined_labels

    rng = np.random.default_rng(0)
    labels = (["ctrl"] * 20 + ["A"] * 20 + ["B"] * 20 + ["A+B"] * 20) * 2
    adata = AnnData(
        X=np.log1p(rng.poisson(2.0, size=(160, 20))).astype(np.float32),
        obs={"condition": labels, "cell_type": ["t0"] * 80 + ["t1"] * 80},
    )
    adata.obs_names = [f"c{i}" for i in range(160)]
    adata.write_h5ad(tmp_path / "combos.h5ad")
    dataset = load_h5ad(tmp_path / "combos.h5ad", "condition", "ctrl", "cell_type")
    assert dataset.default_split == "holdout_context"
    assert capsys.readouterr().err == ""
    assert has_combinations(dataset.adata, dataset.task) and joined_labels(dataset.adata, dataset.task) == []
    adata.obs["condition"] = adata.obs["condition"].astype(str).replace({"B": "GENE+1"})
    assert joined_labels(adata, dataset.task) == ["A+B", "GENE+1"]


def test_a_run_that_scores_no_target_is_an_error_not_an_empty_row(tmp_path, monkeypatch, capsys):
    from benchmark.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(
        ["run", "--predictor", "additive", "--dataset", "synthetic", "--max-splits", "1", "--no-figures"]
    )
    assert code == 2
    assert "additive scored no target on synthetic: every target was declined" in capsys.readouterr().err
