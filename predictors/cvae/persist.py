"""Saving and loading a fitted CVAEPredictor: weights as a torch state_dict, vocabularies, task, params and
history as JSON, the anchoring as a pickle."""

from __future__ import annotations

import json
import pathlib
import pickle
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from benchmark.core.task import Task

if TYPE_CHECKING:
    from predictors.cvae.model import CVAEPredictor

STATE_FILE = "cvae_state.json"
WEIGHTS_FILE = "cvae_weights.pt"
ANCHOR_FILE = "cvae_anchor.pkl"
_FITTED = (
    "likelihood",
    "var_names",
    "perturbation_genes",
    "contexts",
    "history",
    "best_epoch",
    "train_stats",
)
"""The fitted attributes (with a trailing underscore on the predictor) the JSON state holds besides params and task."""


def save(model: CVAEPredictor, directory: pathlib.Path) -> None:
    """Write the fitted state of `model` into directory (created if need be)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {"fit_params": model.fit_params(), "task": asdict(model.task_)}
    state.update({name: getattr(model, f"{name}_") for name in _FITTED})
    (directory / STATE_FILE).write_text(json.dumps(state))
    weights = {k: v.detach().cpu() for k, v in model.module_.state_dict().items()}
    torch.save(weights, directory / WEIGHTS_FILE)
    anchor = {k: getattr(model, k) for k in ("anchor_", "inner_scores_")}
    (directory / ANCHOR_FILE).write_bytes(pickle.dumps(anchor))


def load_fitted(model: CVAEPredictor, directory: pathlib.Path) -> CVAEPredictor:
    """Load a saved fitted state into `model`, which keeps its own mode, generate, verbose and device."""
    directory = pathlib.Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    model.set_params(**state["fit_params"])
    model.task_ = Task(**state["task"])
    for name in _FITTED:
        setattr(model, f"{name}_", state[name])
    model.device_ = model._torch_device()
    module = model._build_module()
    module.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.module_ = module.to(model.device_).eval()
    anchor_file = directory / ANCHOR_FILE
    anchor = pickle.loads(anchor_file.read_bytes()) if anchor_file.is_file() else {}
    model.anchor_, model.inner_scores_ = anchor.get("anchor_"), anchor.get("inner_scores_", {})
    return model
