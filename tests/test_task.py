"""Task.lognorm: the one way predictors and the harness read log-normalized values."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.task import LOGNORM_LAYER, Task


def test_lognorm_of_counts_is_computed_without_writing_into_the_anndata():
    counts = sp.csr_matrix(np.array([[1, 0, 3], [0, 2, 2]], dtype=np.float32))
    adata = AnnData(X=counts)
    task = Task("condition", "control", expression="counts")
    values = task.lognorm(adata[[0, 1]])  # a view: writing a layer into it would copy or warn
    expected = np.log1p(np.array([[1, 0, 3], [0, 2, 2]]) / np.array([[4], [4]]) * 1e4)
    np.testing.assert_allclose(values.toarray(), expected, rtol=1e-6)
    assert LOGNORM_LAYER not in adata.layers
    adata.layers[LOGNORM_LAYER] = np.full((2, 3), 7.0, dtype=np.float32)  # a stored layer is used as is
    assert task.lognorm(adata).max() == 7
