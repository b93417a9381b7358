"""A model module for the worker's fault tests (runs inside the worker, never imports pertbench): mean shift,
except for the targets named after a fault, which the worker then shows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback

import anndata
import numpy as np
import pandas as pd
from mean_shift_model import fit as _fit
from mean_shift_model import predict as _predict


def fit(train, task: dict, params: dict, seed: int):
    if params.get("fail_fit"):
        raise ValueError("the model refused the training cells")
    return _fit(train, task, params, seed)


def predict(model, control, perturbation: str, context, seed: int):
    fault, _, label = perturbation.partition("@")
    if fault == "crash":
        sys.stdout.flush()
        os._exit(3)
    if fault == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["PERTBENCH_TEST_PID_FILE"], "w") as fh:
            fh.write(f"{os.getpid()} {child.pid}")
        time.sleep(600)
    if fault == "traceback":
        try:
            raise RuntimeError("a swallowed error")
        except RuntimeError:
            traceback.print_exc()
    values = _predict(model, control, label or perturbation, context, seed)
    if fault == "shape":
        return values[:-1]
    if fault == "nan":
        values[0, 0] = np.nan
    if fault == "genes":
        return anndata.AnnData(X=values, var=pd.DataFrame(index=[f"g{i}" for i in range(values.shape[1])]))
    return values
