"""Every validation error on tiny hand-made data names its problem."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data.validation import check_context, check_group_size, check_label, validate

COUNTS = Task("condition", "control", "cell_type", expression="counts")


def test_valid_data_passes(tiny, tiny_counts, tiny_task, make_tiny):
    validate(tiny, tiny_task)
    validate(tiny_counts, COUNTS)
    validate(make_tiny(sparse=False), tiny_task)
    validate(tiny, Task("condition", "control"))  # no context key


def test_missing_obs_key_lists_available(tiny):
    with pytest.raises(PertbenchError, match=r"perturbation key 'treatment' is not an obs column.*cell_type"):
        validate(tiny, Task("treatment", "control"))
    with pytest.raises(PertbenchError, match=r"context key 'donor' is not an obs column.*condition"):
        validate(tiny, Task("condition", "control", "donor"))


def test_missing_labels(tiny, tiny_task):
    tiny.obs.loc[tiny.obs_names[0], "condition"] = None
    with pytest.raises(PertbenchError, match=r"'condition' has 1 cell\(s\) with a missing label"):
        validate(tiny, tiny_task)


def test_control_label_absent_lists_labels(tiny):
    with pytest.raises(
        PertbenchError, match=r"control label 'ctrl' not found in obs\['condition'\].*control, p1, p2"
    ):
        validate(tiny, Task("condition", "ctrl", "cell_type"))


def test_empty_data(tiny, tiny_task):
    with pytest.raises(PertbenchError, match=r"empty data: 0 cells"):
        validate(tiny[:0].copy(), tiny_task)
    with pytest.raises(PertbenchError, match=r"empty data: 24 cells x 0 genes"):
        validate(tiny[:, :0].copy(), tiny_task)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("sparse", [True, False])
def test_non_finite_values(bad, sparse, tiny_task, make_tiny):
    adata = make_tiny(sparse=sparse)
    x = adata.X.toarray() if sparse else adata.X
    x[0, 0] = bad
    adata.X = sp.csr_matrix(x) if sparse else x
    with pytest.raises(PertbenchError, match=r"X holds 1 NaN or infinite value"):
        validate(adata, tiny_task)


def test_negative_lognorm_values(tiny, tiny_task):
    tiny.X.data[0] = -0.5
    with pytest.raises(
        PertbenchError, match=r"negative values \(min -0.5\) where log-normalized values are expected"
    ):
        validate(tiny, tiny_task)


def test_non_integer_counts(tiny_counts):
    tiny_counts.X.data[3] = np.log(2.0)
    with pytest.raises(PertbenchError, match=r"counts expected but X holds non-integer values, e.g. 0.6931"):
        validate(tiny_counts, COUNTS)


def test_counts_passed_as_lognorm(tiny_counts, tiny_task):
    tiny_counts.X.data[0] = 250.0
    with pytest.raises(PertbenchError, match=r"looks like raw counts .*max 250.*expression='counts'"):
        validate(tiny_counts, tiny_task)


def test_context_without_controls(tiny, tiny_task):
    keep = ~((tiny.obs["cell_type"] == "B") & (tiny.obs["condition"] == "control")).to_numpy()
    with pytest.raises(PertbenchError, match=r"context 'B' \(obs\['cell_type'\]\) has no control cells"):
        validate(tiny[keep].copy(), tiny_task)


def test_min_cells_per_context(tiny, tiny_task):
    validate(tiny, tiny_task, min_cells=4)
    with pytest.raises(
        PertbenchError, match=r"context 'A' .* has 4 control cells, fewer than the 5 required"
    ):
        validate(tiny, tiny_task, min_cells=5)


def test_check_label_lists_known(tiny, tiny_task):
    check_label(tiny, tiny_task, "p1")
    with pytest.raises(
        PertbenchError, match=r"unknown perturbation label 'p9' .*known labels: control, p1, p2"
    ):
        check_label(tiny, tiny_task, "p9")


def test_check_context_lists_known(tiny, tiny_task):
    check_context(tiny, tiny_task, "A")
    with pytest.raises(
        PertbenchError, match=r"unknown context label 'Z' in obs\['cell_type'\]; known labels: A, B"
    ):
        check_context(tiny, tiny_task, "Z")


def test_check_group_size():
    check_group_size(5, 5, "context 'A' perturbation 'p1'")
    with pytest.raises(PertbenchError, match=r"context 'A' perturbation 'p1' has 1 cell, fewer than the 2"):
        check_group_size(1, 2, "context 'A' perturbation 'p1'")


def test_long_label_lists_are_elided(tiny):
    tiny.obs["condition"] = [f"g{i}" for i in range(tiny.n_obs)]
    with pytest.raises(PertbenchError, match=r"\.\.\. \(12 more\)"):
        validate(tiny, Task("condition", "control"))
