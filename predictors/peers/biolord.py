"""biolord (Piran et al. 2024, Nat Biotechnol 42:1678), run in its own environment (`bench env build biolord`).

biolord learns a decoder from disentangled latents: one embedding per value of each known attribute (here the
perturbation and the context, both categorical) and a per-cell latent for everything else. It predicts a control
cell under a perturbation by decoding that cell's latent with the perturbation attribute set to the target's,
so it reads each control cell individually (its unknown-attribute latent) and its context.

Settings are those of the authors' basic pipeline tutorial (docs/tutorials/biolord_pipeline.ipynb in
nitzanlab/biolord: the infected/uninfected liver-atlas example, the closest to a control vs stimulated task):
n_latent 32; decoder 1024 x 4, attribute networks 512 x 2, 4 latent dims per categorical attribute, normal
likelihood, reconstruction penalty 1e2, unknown-attribute penalty 1e1, noise 1e-1, attribute dropout 0.1, no
batch or layer norm; learning rates and weight decays 1e-4 (latent, decoder), 1e-2 / 4e-8 (attribute networks),
step size 45, cosine schedule to 1e-5; up to 500 epochs of batch 512, early stopping (patience 20) on the
validation biolord metric checked every 10 epochs. The tutorial splits cells with its own split column; here
biolord's random 90/10 split of the training cells gives the validation part, so no held-out cell is used.
Nothing was chosen by looking at scores.

Seeding: `random_state` sets scvi's seed (torch, numpy, Python and the train/validation split) and biolord's
module seed before the model is built; the worker seeds each prediction from (random_state, target).
"""

from __future__ import annotations

from benchmark.envs.foreign import DEFAULT_TIMEOUT, ForeignPredictor
from predictors.params import ValidatedParams, check_bool, check_float, check_int

LIKELIHOODS = ("normal", "nb", "poisson")


class Biolord(ValidatedParams, ForeignPredictor):
    """biolord with the tutorial's settings, fitted and predicted in a worker of the `biolord` environment;
    NotApplicable for a perturbation or context never seen in training."""

    env_name = "biolord"

    def __init__(
        self,
        n_latent: int = 32,
        decoder_width: int = 1024,
        decoder_depth: int = 4,
        attribute_nn_width: int = 512,
        attribute_nn_depth: int = 2,
        n_latent_attribute_categorical: int = 4,
        gene_likelihood: str = "normal",
        reconstruction_penalty: float = 1e2,
        unknown_attribute_penalty: float = 1e1,
        unknown_attribute_noise_param: float = 1e-1,
        attribute_dropout_rate: float = 0.1,
        use_batch_norm: bool = False,
        use_layer_norm: bool = False,
        n_epochs_warmup: int = 0,
        latent_lr: float = 1e-4,
        latent_wd: float = 1e-4,
        decoder_lr: float = 1e-4,
        decoder_wd: float = 1e-4,
        attribute_nn_lr: float = 1e-2,
        attribute_nn_wd: float = 4e-8,
        step_size_lr: int = 45,
        cosine_scheduler: bool = True,
        scheduler_final_lr: float = 1e-5,
        max_epochs: int = 500,
        batch_size: int = 512,
        early_stopping: bool = True,
        early_stopping_patience: int = 20,
        check_val_every_n_epoch: int = 10,
        random_state: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.n_latent = n_latent
        self.decoder_width = decoder_width
        self.decoder_depth = decoder_depth
        self.attribute_nn_width = attribute_nn_width
        self.attribute_nn_depth = attribute_nn_depth
        self.n_latent_attribute_categorical = n_latent_attribute_categorical
        self.gene_likelihood = gene_likelihood
        self.reconstruction_penalty = reconstruction_penalty
        self.unknown_attribute_penalty = unknown_attribute_penalty
        self.unknown_attribute_noise_param = unknown_attribute_noise_param
        self.attribute_dropout_rate = attribute_dropout_rate
        self.use_batch_norm = use_batch_norm
        self.use_layer_norm = use_layer_norm
        self.n_epochs_warmup = n_epochs_warmup
        self.latent_lr = latent_lr
        self.latent_wd = latent_wd
        self.decoder_lr = decoder_lr
        self.decoder_wd = decoder_wd
        self.attribute_nn_lr = attribute_nn_lr
        self.attribute_nn_wd = attribute_nn_wd
        self.step_size_lr = step_size_lr
        self.cosine_scheduler = cosine_scheduler
        self.scheduler_final_lr = scheduler_final_lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.early_stopping_patience = early_stopping_patience
        self.check_val_every_n_epoch = check_val_every_n_epoch
        super().__init__(random_state=random_state, timeout=timeout)
        self._validate()

    def _validate(self) -> None:
        """Raise ValueError (one line, naming the parameter) for the first bad hyperparameter."""
        for name in ("n_latent", "decoder_width", "decoder_depth", "attribute_nn_width", "attribute_nn_depth",
                     "n_latent_attribute_categorical", "step_size_lr", "max_epochs", "early_stopping_patience",
                     "check_val_every_n_epoch"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        check_int("n_epochs_warmup", self.n_epochs_warmup, 0)
        check_int("batch_size", self.batch_size, 2)
        for name in ("reconstruction_penalty", "unknown_attribute_penalty", "unknown_attribute_noise_param",
                     "latent_wd", "decoder_wd", "attribute_nn_wd"):  # fmt: skip
            check_float(name, getattr(self, name), 0.0)
        for name in ("latent_lr", "decoder_lr", "attribute_nn_lr", "scheduler_final_lr"):
            check_float(name, getattr(self, name), 0.0, low_open=True)
        check_float("attribute_dropout_rate", self.attribute_dropout_rate, 0.0, 1.0, high_open=True)
        for name in ("use_batch_norm", "use_layer_norm", "cosine_scheduler", "early_stopping"):
            check_bool(name, getattr(self, name))
        if self.gene_likelihood not in LIKELIHOODS:
            raise ValueError(
                f"gene_likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.gene_likelihood!r}"
            )
        check_int("random_state", self.random_state, 0, 2**32 - 1)
        check_float("timeout", self.timeout, 0.0, low_open=True)

    def check_applicable(self, train, task, perturbation: str, context: str | None) -> None:
        """Before fitting: biolord needs the perturbation among the training cells' attribute values."""
        import numpy as np

        from benchmark.core.errors import NotApplicable

        if perturbation == task.control_label or perturbation not in set(
            np.unique(task.perturbations(train))
        ):
            raise NotApplicable(f"biolord never saw perturbation {perturbation!r} in training")
