"""biolord inside its own environment (run by pertbench_worker): setup with the perturbation and the context as
categorical attributes, train, and predict a control (training) cell's expression from its learned latent with its
perturbation attribute set to the target's. The settings arrive from predictors/peers/biolord.py, which documents where they come from."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pandas as pd
from pertbench_worker import NotApplicable

ATTRIBUTES = ["perturbation", "context"]
MODULE_KEYS = (
    "decoder_width", "decoder_depth", "attribute_nn_width", "attribute_nn_depth", "n_latent_attribute_categorical",
    "gene_likelihood", "reconstruction_penalty", "unknown_attribute_penalty", "unknown_attribute_noise_param",
    "attribute_dropout_rate", "use_batch_norm", "use_layer_norm",
)  # fmt: skip
PLAN_KEYS = (
    "n_epochs_warmup", "latent_lr", "latent_wd", "decoder_lr", "decoder_wd", "attribute_nn_lr", "attribute_nn_wd",
    "step_size_lr", "cosine_scheduler", "scheduler_final_lr",
)  # fmt: skip


def _quiet() -> None:
    warnings.simplefilter("ignore")
    for name in ("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _categorical(adata, categories: dict[str, list[str]]) -> None:
    for key in ATTRIBUTES:
        adata.obs[key] = pd.Categorical(adata.obs[key].astype(str), categories=categories[key])


def fit(train, task: dict, params: dict, seed: int):
    """Train biolord on the training cells (log-normalized X); biolord holds out a random tenth of them for its
    validation metric and early stopping."""
    _quiet()
    import biolord
    import scvi

    scvi.settings.seed = seed
    adata = train.copy()
    categories = {key: sorted(adata.obs[key].astype(str).unique()) for key in ATTRIBUTES}
    _categorical(adata, categories)
    biolord.Biolord.setup_anndata(adata, ordered_attributes_keys=None, categorical_attributes_keys=ATTRIBUTES)
    module_params = {key: params[key] for key in MODULE_KEYS}
    module_params["seed"] = seed
    model = biolord.Biolord(
        adata=adata, n_latent=params["n_latent"], module_params=module_params, train_classifiers=False
    )
    model.train(
        max_epochs=params["max_epochs"],
        batch_size=params["batch_size"],
        plan_kwargs={key: params[key] for key in PLAN_KEYS},
        early_stopping=params["early_stopping"],
        early_stopping_patience=params["early_stopping_patience"],
        check_val_every_n_epoch=params["check_val_every_n_epoch"],
        num_workers=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    cells = [str(v) for v in adata.obs_names]
    return {"model": model, "categories": categories, "control": task["control_label"], "cells": cells}


def save(state, directory: str) -> None:
    import json

    state["model"].save(os.path.join(directory, "biolord"), overwrite=True, save_anndata=True)
    meta = {key: state[key] for key in ("categories", "control", "cells")}
    with open(os.path.join(directory, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh)


def load(directory: str):
    import json

    _quiet()
    import biolord

    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    meta["model"] = biolord.Biolord.load(os.path.join(directory, "biolord"), accelerator="cpu")
    return meta


def predict(state, control, perturbation: str, context, seed: int) -> np.ndarray:
    """The model's mean expression of each control cell with its perturbation attribute set to `perturbation`."""
    categories = state["categories"]
    if perturbation == state["control"] or perturbation not in categories["perturbation"]:
        raise NotApplicable(f"biolord has no attribute value for {perturbation!r} (never seen in training)")
    contexts = set(control.obs["context"].astype(str))
    unseen = sorted(contexts - set(categories["context"]))
    if unseen:
        raise NotApplicable(f"biolord never saw context {unseen[0]!r} in training")
    # biolord learns each training cell's unknown-attribute latent (an embedding indexed by its position): a
    # control cell is predicted from its own latent, so it must be one of the training cells.
    positions = pd.Index(state["cells"]).get_indexer([str(v) for v in control.obs_names])
    if (positions < 0).any():
        raise NotApplicable(
            f"biolord learns a latent per training cell; {int((positions < 0).sum())} of the control cells "
            "were not training cells"
        )
    query = control.copy()
    query.obs["perturbation"] = perturbation
    query.obs["_indices"] = positions
    _categorical(query, categories)
    mean, _ = state["model"].predict(query)
    return np.asarray(mean.X, dtype=np.float32)
