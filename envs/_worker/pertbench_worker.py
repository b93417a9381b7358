"""The worker-side runner of a foreign predictor: `python -m pertbench_worker fit|predict ...` inside the model's
own environment. It imports only the standard library, numpy and anndata (never pertbench, whose pins the
environment may not meet), loads the model module named on the command line and calls its functions:

    fit(train: AnnData, task: dict, params: dict, seed: int) -> model
    predict(model, control: AnnData, perturbation: str, context: str | None, seed: int) -> ndarray | AnnData
    save(model, directory: str) / load(directory: str) -> model     (optional; else the model is pickled)

`train.obs` holds the columns "perturbation" and "context" (strings), X the log-normalized values and, for count
data, layers["counts"] the raw counts; `task` has control_label, combo_separator, has_context and has_counts. A
module raises `pertbench_worker.NotApplicable` (or any exception of that name) for a target it cannot predict.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import random
import sys
import zlib
from pathlib import Path

MODEL_DIR = "model"
PICKLE = "model.pkl"


class NotApplicable(Exception):
    """Raised by a model module for a target it cannot predict; the harness records it as not applicable."""


def _seed_everything(seed: int) -> None:
    """Seed Python's and numpy's global RNGs (and torch's, when the module imported it)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _target_seed(seed: int, perturbation: str, context: str | None) -> int:
    """A seed per (run seed, target): a prediction does not depend on the targets predicted before it."""
    return (seed * 1_000_003 + zlib.crc32(f"{perturbation}\x00{context}".encode())) % 2**32


def _fit(module, directory: Path) -> None:
    import anndata

    spec = json.loads((directory / "fit.json").read_text(encoding="utf-8"))
    train = anndata.read_h5ad(directory / "train.h5ad")
    _seed_everything(spec["seed"])
    model = module.fit(train, spec["task"], spec["params"], spec["seed"])
    if hasattr(module, "save"):
        (directory / MODEL_DIR).mkdir(exist_ok=True)
        module.save(model, str(directory / MODEL_DIR))
    else:
        with open(directory / PICKLE, "wb") as fh:
            pickle.dump(model, fh)


def _predict(module, directory: Path, control_path: Path, perturbation: str, context: str | None, out: Path):
    import anndata
    import numpy as np
    import pandas as pd

    spec = json.loads((directory / "fit.json").read_text(encoding="utf-8"))
    if hasattr(module, "load"):
        model = module.load(str(directory / MODEL_DIR))
    else:
        with open(directory / PICKLE, "rb") as fh:
            model = pickle.load(fh)  # noqa: S301 - the file this worker wrote at fit
    control = anndata.read_h5ad(control_path)
    seed = _target_seed(spec["seed"], perturbation, context)
    _seed_everything(seed)
    try:
        predicted = module.predict(model, control, perturbation, context, seed)
    except Exception as exc:
        if type(exc).__name__ != "NotApplicable":
            raise
        out.with_suffix(".json").write_text(json.dumps({"not_applicable": str(exc)}), encoding="utf-8")
        return
    if isinstance(predicted, anndata.AnnData):
        var_names = [str(v) for v in predicted.var_names]
        values = predicted.X
    else:
        var_names, values = [str(v) for v in control.var_names], predicted
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"the model returned an array of {values.ndim} dimensions, not cells x genes")
    result = anndata.AnnData(
        X=values.astype(np.float32),
        obs=pd.DataFrame(index=[f"pred_{i}" for i in range(values.shape[0])]),
        var=pd.DataFrame(index=var_names if len(var_names) == values.shape[1] else None),
    )
    result.write_h5ad(out)
    out.with_suffix(".json").write_text(json.dumps({"cells": int(values.shape[0])}), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pertbench_worker")
    parser.add_argument("step", choices=("fit", "predict"))
    parser.add_argument("--module", required=True, help="the model module (on PYTHONPATH)")
    parser.add_argument("--dir", type=Path, required=True, help="the fit's work directory")
    parser.add_argument("--control", type=Path)
    parser.add_argument("--perturbation")
    parser.add_argument("--context")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sys.modules.setdefault(
        "pertbench_worker", sys.modules[__name__]
    )  # one NotApplicable, run as a script too
    module = importlib.import_module(args.module)
    if args.step == "fit":
        _fit(module, args.dir)
    else:
        _predict(module, args.dir, args.control, args.perturbation, args.context, args.out)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: some frameworks leave non-daemon threads behind


if __name__ == "__main__":
    sys.exit(main())
