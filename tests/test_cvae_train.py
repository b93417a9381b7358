"""Tests of the CVAE's training loop on its own (predictors.cvae.train): a module and its data, no predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from predictors.cvae.data import gene_moments
from predictors.cvae.module import CVAEModule
from predictors.cvae.train import TrainConfig, TrainData, Trainer

CONFIG = dict(
    beta=1.0,
    mmd_weight=0.0,
    kl_warmup_steps=0,
    max_epochs=40,
    max_steps=None,
    batch_size=16,
    lr=3e-3,
    weight_decay=0.0,
    patience=100,
    random_state=0,
    verbose=False,
)


def _problem(n: int = 96, genes: int = 12) -> tuple[CVAEModule, TrainData]:
    """Gaussian cells whose mean depends on one of two conditions, and a small MLP-decoder module started at them."""
    rng = np.random.default_rng(0)
    condition = np.arange(n) % 2
    x = (rng.normal(size=(n, genes)) + 2.0 * condition[:, None]).astype(np.float32)
    pert = condition[:, None].astype(np.float32)
    torch.manual_seed(0)
    module = CVAEModule(n_genes=genes, n_pert=1, n_latent=2, n_hidden=8, decoder="mlp")
    mean, std = gene_moments(x)
    module.init_from_data(torch.from_numpy(mean), torch.from_numpy(std))
    return module, TrainData(x, (pert, None), np.zeros(n, dtype=np.int64), condition.astype(np.int64))


def _run(**overrides) -> Trainer:
    module, data = _problem()
    config = TrainConfig(**{**CONFIG, **overrides})
    idx = np.arange(len(data.x))
    return Trainer(module, data, config, torch.device("cpu"), 1).run(
        idx[:80], idx[80:], np.random.default_rng(0)
    )


def test_config_takes_its_fields_from_a_predictors_params_and_ignores_the_rest() -> None:
    config = TrainConfig.of({**CONFIG, "n_latent": 8, "mode": "B"})
    assert config == TrainConfig(**CONFIG)
    assert config.step_budget(80) == 40 * 5  # whole epochs of 80 cells in batches of 16
    assert TrainConfig(**{**CONFIG, "max_steps": 7}).step_budget(80) == 7
    assert TrainConfig(**{**CONFIG, "kl_warmup_steps": 4}).step_beta(1) == pytest.approx(0.5)


def test_trainer_spends_the_step_budget_and_stops_inside_an_epoch() -> None:
    trainer = _run(max_steps=23)
    assert trainer.stats["steps"] == 23 and trainer.stats["budget_spent"]
    assert len(trainer.history) == 5  # 5 + 5 + 5 + 5 + 3 steps


def test_trainer_keeps_the_best_epochs_weights() -> None:
    trainer = _run(lr=3e-2, max_epochs=30)  # a large step: the validation loss goes up again after its best
    best = min(range(len(trainer.history)), key=lambda e: trainer.history[e]["val_loss"])
    assert trainer.best_epoch == best < len(trainer.history) - 1
    # the module holds that epoch's weights: the same paired validation pass gives its loss again
    assert trainer._evaluate(np.arange(80, 96)) == trainer.history[best]["val_loss"]


def test_the_same_seed_trains_the_same_weights() -> None:
    a, b = _run(max_steps=10), _run(max_steps=10)
    assert a.history == b.history
    for (name, p), q in zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
