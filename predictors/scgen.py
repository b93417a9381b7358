"""scGen (Lotfollahi et al. 2019, Nat Methods 16:715) through pertpy's `tl.Scgen`, an optional predictor.

scGen trains a VAE on all training cells (log-normalized), takes the latent shift delta = mean latent of the
perturbed cells - mean latent of the control cells (both balanced over contexts), and predicts by decoding the
latent of each given control cell plus delta. Nothing here changes pertpy's model or its prediction; this class
only feeds it the training cells and seeds it.

Install with the `scgen` extra (`pip install -c constraints.txt -e '.[scgen]'`). pertpy is imported in `fit` only, so the registry and `bench list`
never import it. Hyperparameters default to pertpy's Scgen defaults (n_hidden 800, n_latent 100, 2 layers,
dropout 0.2) and the training settings of pertpy's and scGen's documented examples (100 epochs, batch size 32,
early stopping with patience 25 on the validation ELBO); none was chosen by looking at scores.

Seeding: `random_state` sets `scvi.settings.seed` before the model is built, which seeds torch, numpy's and
Python's global RNGs (lightning's seed_everything), the train/validation split and the JAX parameter, dropout and
sampling keys. pertpy's `predict` balances the contexts and subsamples cells with `np.random.default_rng()` called
without a seed (seeding numpy's global RNG does not reach it), so every no-argument `default_rng()` call during
`predict` is answered with a Generator spawned from a seed derived from (random_state, perturbation, context).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.protocol import Predictor, predicted_anndata
from benchmark.core.task import Task
from predictors.params import ValidatedParams, check_bool, check_float, check_int
from predictors.registry import install_command

_CONDITION = "_pertbench_condition"
_CONTEXT = "_pertbench_context"
"""obs columns of the AnnData handed to pertpy (its batch and labels keys)."""

_NOISY_LOGGERS = ("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")


def _import_scgen() -> tuple[Any, Any]:
    """pertpy's Scgen class and scvi's settings, or a one-line PertbenchError saying how to install them."""
    try:
        import scvi
        from pertpy.tools import Scgen
    except ImportError as exc:
        cause = " ".join(str(exc).split())
        raise PertbenchError(
            f"predictor 'scgen' cannot import pertpy ({cause}); install it with: {install_command('scgen')}"
        ) from exc
    return Scgen, scvi.settings


def _label_seed(random_state: int, perturbation: str, context: str | None) -> np.random.SeedSequence:
    """A seed per (run seed, target), so that a target's prediction does not depend on the targets before it."""
    return np.random.SeedSequence([random_state, zlib.crc32(f"{perturbation}\x00{context}".encode())])


@contextmanager
def _seeded_default_rng(seed: np.random.SeedSequence) -> Iterator[None]:
    """While active, `np.random.default_rng()` without a seed returns Generators spawned from `seed` in call order
    (pertpy's predict and its balancer call it that way); calls that pass a seed are unchanged."""
    original = np.random.default_rng

    def seeded(seed_arg: Any = None) -> np.random.Generator:
        return original(seed.spawn(1)[0] if seed_arg is None else seed_arg)

    np.random.default_rng = seeded
    try:
        yield
    finally:
        np.random.default_rng = original


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence scvi-tools' and lightning's info logs and warnings (device banners, seed and logging tips)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _expression(adata: AnnData, task: Task) -> Any:
    """Log-normalized float32 values (CSR when sparse), the scale scGen models."""
    x = task.lognorm(adata)
    return sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)


class ScGen(ValidatedParams, Predictor):
    """scGen via pertpy: a VAE on log-normalized cells, predicting control latent + the perturbation's latent
    shift. Predicts any perturbation label seen in training (with control cells there); NotApplicable otherwise."""

    def __init__(
        self,
        n_latent: int = 100,
        n_hidden: int = 800,
        n_layers: int = 2,
        dropout_rate: float = 0.2,
        max_epochs: int = 100,
        batch_size: int = 32,
        early_stopping: bool = True,
        early_stopping_patience: int = 25,
        random_state: int = 0,
    ) -> None:
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        self.n_layers = n_layers
        self.dropout_rate = dropout_rate
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.early_stopping_patience = early_stopping_patience
        self.random_state = random_state
        self._validate()

    def _validate(self) -> None:
        """Raise ValueError (one line, naming the parameter and its allowed values) for the first bad one."""
        check_int("n_latent", self.n_latent, 1)
        check_int("n_hidden", self.n_hidden, 1)
        check_int("n_layers", self.n_layers, 1)
        check_float("dropout_rate", self.dropout_rate, 0.0, 1.0, high_open=True)
        check_int("max_epochs", self.max_epochs, 1)
        check_int("batch_size", self.batch_size, 2)  # batch norm needs two cells per batch
        check_bool("early_stopping", self.early_stopping)
        check_int("early_stopping_patience", self.early_stopping_patience, 1)
        check_int("random_state", self.random_state, 0, 2**32 - 1)

    # ---------------------------------------------------------------- applicability

    def check_applicable(self, train: AnnData, task: Task, perturbation: str, context: str | None) -> None:
        """Before fitting: NotApplicable unless `train` has cells of `perturbation` and control cells."""
        labels = set(np.unique(task.perturbations(train)))
        self._decline(perturbation, labels, task.control_label)

    @staticmethod
    def _decline(perturbation: str, labels: set[str], control: str) -> None:
        """scGen's latent shift needs perturbed and control training cells; a label never seen has no shift."""
        if perturbation == control:
            raise NotApplicable("scGen predicts a perturbation, not the control")
        if perturbation not in labels:
            raise NotApplicable(
                f"scGen never saw perturbation {perturbation!r} in training (no latent shift)"
            )
        if control not in labels:
            raise NotApplicable(f"scGen needs control cells ({control!r}) in training")

    # ---------------------------------------------------------------- fit / predict

    def fit(self, train: AnnData, task: Task) -> ScGen:
        """Train pertpy's Scgen on the log-normalized training cells (seeded by random_state)."""
        scgen_cls, scvi_settings = _import_scgen()
        obs = pd.DataFrame(
            {_CONDITION: task.perturbations(train), _CONTEXT: task.contexts(train)},
            index=train.obs_names.copy(),
        )
        adata = AnnData(X=_expression(train, task), obs=obs, var=pd.DataFrame(index=train.var_names.copy()))
        with _quiet():
            scvi_settings.seed = self.random_state  # before the model: its JAX keys are drawn at build time
            scgen_cls.setup_anndata(adata, batch_key=_CONDITION, labels_key=_CONTEXT)
            model = scgen_cls(
                adata,
                n_hidden=self.n_hidden,
                n_latent=self.n_latent,
                n_layers=self.n_layers,
                dropout_rate=self.dropout_rate,
            )
            model.train(
                max_epochs=self.max_epochs,
                batch_size=self.batch_size,
                early_stopping=self.early_stopping,
                early_stopping_patience=self.early_stopping_patience,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
        self.task_ = task
        self.var_names_ = [str(v) for v in train.var_names]
        self.labels_ = {str(v) for v in np.unique(obs[_CONDITION])}
        self.contexts_ = sorted({str(v) for v in np.unique(obs[_CONTEXT])})
        self.model_ = model
        return self

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """One predicted cell per control cell: decode(latent(control cell) + delta), delta from training cells."""
        if not hasattr(self, "model_"):
            raise RuntimeError("ScGen is not fitted")
        self._decline(perturbation, self.labels_, self.task_.control_label)
        if [str(v) for v in control.var_names] != self.var_names_:
            raise ValueError("control cells do not have the training genes in the training order")
        # scvi needs the setup's obs columns with known categories; scGen's encoder reads neither of them.
        obs = pd.DataFrame(
            {_CONDITION: self.task_.control_label, _CONTEXT: self.contexts_[0]},
            index=control.obs_names.copy(),
        )
        query = AnnData(X=_expression(control, self.task_), obs=obs, var=pd.DataFrame(index=self.var_names_))
        with _quiet(), _seeded_default_rng(_label_seed(self.random_state, perturbation, context)):
            predicted, _ = self.model_.predict(
                ctrl_key=self.task_.control_label, stim_key=perturbation, adata_to_predict=query
            )
        return predicted_anndata(np.asarray(predicted.X), control, perturbation, context)
