"""Caches fitted models per predictor family, dataset, split and seed, so e.g. CVAE Mode A and Mode B train once."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from anndata import AnnData

from benchmark.core.protocol import Predictor
from benchmark.core.task import Task

DONE_MARKER = "FITTED"


def default_cache_dir() -> Path:
    """PERTBENCH_CACHE_DIR, else `.pertbench/models` under the working directory (beside the MLflow store)."""
    return Path(os.environ.get("PERTBENCH_CACHE_DIR", ".pertbench/models"))


def code_digest(cls: type) -> str:
    """Hash of the Python files beside the class's source file (its package): a changed model invalidates its
    cached fits even when its parameters are unchanged. Empty when the source cannot be located."""
    try:
        source = Path(inspect.getsourcefile(cls) or "")
    except TypeError:
        return ""
    if not source.is_file():
        return ""
    digest = hashlib.sha256()
    for path in sorted(source.parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(predictor: Predictor, dataset_checksum: str, split_digest: str, seed: int) -> str:
    """A hash of everything that determines the fitted state (class, its code, fit parameters, data, split,
    seed); generation-only options are left out."""
    cls = type(predictor)
    payload = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "code": code_digest(cls),
        "fit_params": predictor.fit_params(),
        "dataset": dataset_checksum,
        "split": split_digest,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def fit_or_load(
    predictor: Predictor, train: AnnData, task: Task, key: str, cache_dir: Path | None
) -> tuple[Predictor, str]:
    """Fit, or load a cached fit; returns (predictor, 'hit' | 'miss' | 'off'). Writes are atomic.

    A lock file per key beside the entry makes a second process that wants the same fit (a `bench sweep` worker
    running cvae_modeA while another fits cvae_modeB on the same split) wait and load it instead of fitting twice;
    the lock dies with its process."""
    if cache_dir is None or not getattr(predictor, "cacheable", False):
        return predictor.fit(train, task), "off"
    from filelock import FileLock

    entry = Path(cache_dir) / key
    if (entry / DONE_MARKER).exists():
        return predictor.load_fitted(entry), "hit"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(entry.parent / f".{key}.lock"):
        if (entry / DONE_MARKER).exists():  # fitted by another process while this one waited
            return predictor.load_fitted(entry), "hit"
        return _fit_and_store(predictor, train, task, entry), "miss"


def _fit_and_store(predictor: Predictor, train: AnnData, task: Task, entry: Path) -> Predictor:
    """Fit, then save into a temp folder renamed to `entry` (readers never see half a fit)."""
    key = entry.name
    predictor.fit(train, task)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=entry.parent))
    try:
        predictor.save(tmp)
        (tmp / DONE_MARKER).write_text(json.dumps({"predictor": repr(predictor)}))
        if entry.exists():
            shutil.rmtree(entry)
        tmp.rename(entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return predictor


EMBEDDINGS_DIR = "embeddings"
"""Sub-folder of the model cache holding the scoring PCA of each (dataset, training cells)."""


def cached_embedding(
    train: AnnData, task: Task, dataset_checksum: str, split_digest: str, cache_dir: Path | None
):
    """The scoring PCA of a split's training cells, fitted once per (dataset, split, scoring code) and kept in the
    cache: every predictor of a split scores in the same embedding, so only the first run pays for it. Loaded
    arrays are the saved ones bit for bit; writes are atomic."""
    import numpy as np

    from benchmark.scoring.embedding import EMBED_COMPONENTS, PCAEmbedding, fit_embedding_cells

    if cache_dir is None:
        return fit_embedding_cells(train, task)
    payload = {
        "code": code_digest(PCAEmbedding),
        "components": EMBED_COMPONENTS,
        "dataset": dataset_checksum,
        "split": split_digest,
        "expression": task.expression,
        "cells": int(train.n_obs),
        "genes": hashlib.sha256("\x1f".join(map(str, train.var_names)).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / EMBEDDINGS_DIR / f"{key}.npz"
    try:
        with np.load(path) as saved:
            return PCAEmbedding(mean=saved["mean"], components=saved["components"])
    except (OSError, KeyError, ValueError):  # missing or unreadable: fit it (again)
        pass
    embedding = fit_embedding_cells(train, task)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, mean=embedding.mean, components=embedding.components)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the fit is still good, only not kept
        pass
    return embedding
