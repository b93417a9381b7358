"""A toy model for the worker: control cells + the perturbation's mean shift (perturbed mean - control mean, per
training context, averaged over the contexts that have both). It needs only numpy and anndata, whatever their
versions; docs/peers.md walks through it."""

from __future__ import annotations

import numpy as np
from pertbench_worker import NotApplicable


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def fit(train, task: dict, params: dict, seed: int) -> dict:
    """The mean shift of every perturbation seen in training, as {label: shift vector}."""
    x = _dense(train.X)
    labels = train.obs["perturbation"].astype(str).to_numpy()
    contexts = train.obs["context"].astype(str).to_numpy()
    control = task["control_label"]
    shifts: dict[str, list[np.ndarray]] = {}
    for context in np.unique(contexts):
        here = contexts == context
        base = here & (labels == control)
        if not base.any():
            continue
        for label in np.unique(labels[here]):
            if label != control:
                shift = x[here & (labels == label)].mean(axis=0) - x[base].mean(axis=0)
                shifts.setdefault(str(label), []).append(shift)
    scale = float(params.get("scale", 1.0))
    return {label: scale * np.mean(s, axis=0) for label, s in shifts.items()}


def predict(model: dict, control, perturbation: str, context, seed: int) -> np.ndarray:
    """One predicted cell per control cell: its values plus the shift (clipped at 0, the log scale's floor)."""
    if perturbation not in model:
        raise NotApplicable(f"mean shift never saw {perturbation!r} in training")
    return np.clip(_dense(control.X) + model[perturbation], 0.0, None)
