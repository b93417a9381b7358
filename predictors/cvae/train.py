"""Training of the CVAE module, apart from the predictor: mini-batch AdamW with a KL warm-up counted in optimizer
steps, a step budget, early stopping on a paired validation loss, and progress on stderr."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from benchmark.core import progress as bars
from predictors.cvae.data import dense_rows, tensors
from predictors.cvae.module import CVAEModule

_MIN_REL_IMPROVEMENT = 1e-3
"""A validation loss counts as better only if it improves on the best by this fraction of |best|."""


@dataclass
class TrainData:
    """What training reads per mini-batch: expression (sparse stays sparse), covariates and MMD group ids."""

    x: Any
    covariates: tuple[np.ndarray, np.ndarray | None]
    context_id: np.ndarray
    condition_id: np.ndarray
    profiles: torch.Tensor | None = None  # context control profiles, rows in context_id order (None: unread)


@dataclass(frozen=True)
class TrainConfig:
    """The predictor's hyperparameters that shape the training loop (see CVAEPredictor)."""

    beta: float
    mmd_weight: float
    kl_warmup_steps: int
    max_epochs: int
    max_steps: int | None
    batch_size: int
    lr: float
    weight_decay: float
    patience: int
    random_state: int
    verbose: bool

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> TrainConfig:
        """The training settings among a predictor's parameters (get_params())."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})

    def step_budget(self, n_train: int) -> int:
        """Optimizer steps allowed: max_epochs whole epochs of n_train cells, capped at max_steps."""
        steps = self.max_epochs * max(1, math.ceil(n_train / self.batch_size))
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def step_beta(self, step: int) -> float:
        """Linear KL warm-up from beta / warmup to beta over the first kl_warmup_steps optimizer steps (counted in
        steps, not epochs, so that it ends at the same point of the step budget whatever the number of cells)."""
        if self.kl_warmup_steps <= 0:
            return float(self.beta)
        return float(self.beta) * min(1.0, (step + 1) / self.kl_warmup_steps)


class _EarlyStopping:
    """Tracks the best validation loss over the epochs that count (those ending after the KL warm-up); stops
    after `patience` counted epochs without improving."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best, self.best_epoch, self.best_state, self.stale, self.stopped = math.inf, -1, None, 0, False

    def update(self, epoch: int, loss: float, module: torch.nn.Module, counts: bool = True) -> bool:
        """Record one epoch (ignored unless it counts); True when training should stop."""
        if not counts:
            return False
        scale = abs(self.best) if math.isfinite(self.best) else abs(loss)
        if loss < self.best - _MIN_REL_IMPROVEMENT * scale:
            self.best, self.best_epoch, self.stale = loss, epoch, 0
            self.best_state = copy.deepcopy(module.state_dict())
        else:
            self.stale += 1
        self.stopped = self.stale > self.patience
        return self.stopped

    def restore_best(self, module: torch.nn.Module, last_epoch: int) -> int:
        """Load the best weights into module (if any epoch counted); returns the epoch they come from."""
        if self.best_state is None:
            return last_epoch
        module.load_state_dict(self.best_state)
        return self.best_epoch


class _Progress:
    """Training progress on stderr: a bar over epochs on an interactive terminal (benchmark.core.progress's style);
    when verbose, also a line every few epochs and a summary."""

    def __init__(self, verbose: bool, max_epochs: int, every: int = 5) -> None:
        self.verbose, self.every = verbose, every
        self.bar = bars.bar(max_epochs, "cvae", "epochs")

    def epoch(self, rec: dict[str, float], done: bool) -> None:
        self.bar.set_postfix_str(f"val {rec['val_loss']:.2f}", refresh=False)
        self.bar.update(1)
        if self.verbose and (rec["epoch"] % self.every == 0 or done):
            bars.write(
                f"[cvae] epoch {rec['epoch']:4d}  train {rec['train_loss']:11.2f}  val {rec['val_loss']:11.2f}  "
                f"recon {rec['recon']:11.2f}  kl {rec['kl']:7.2f}  mmd {rec['mmd']:.4f}  beta {rec['beta']:.2f}"
            )

    def close(self, stats: dict[str, Any]) -> None:
        self.bar.close()
        if not self.verbose:
            return
        print(
            f"[cvae] {stats['epochs']} epochs, {stats['steps']} of {stats['step_budget']} steps "
            f"(best {stats['best_epoch']}, stopped early: {stats['stopped_early']}), "
            f"{stats['train_seconds']:.1f} s, {stats['flops_per_second'] / 1e9:.1f} GFLOP/s",
            file=sys.stderr,
        )


class Trainer:
    """Trains a module on the cells of `data` under `config`; after `run`: history, best_epoch and stats."""

    def __init__(
        self, module: CVAEModule, data: TrainData, config: TrainConfig, device: torch.device, n_contexts: int
    ) -> None:
        self.module, self.data, self.config, self.device = module, data, config, device
        self.n_contexts = n_contexts  # the context profiles a step reads, for the FLOP count
        self.history: list[dict[str, float]] = []
        self.best_epoch = -1
        self.stats: dict[str, Any] = {}

    def _loss(self, idx: np.ndarray, beta: float, gen: torch.Generator):
        """The module's loss terms on the cells idx (densified here, one mini-batch at a time)."""
        data = self.data
        pert, ctx = data.covariates
        groups = tuple(torch.from_numpy(a[idx]).to(self.device) for a in (data.context_id, data.condition_id))
        return self.module(
            dense_rows(data.x, idx, self.device),
            *tensors(pert[idx], None if ctx is None else ctx[idx], self.device),
            beta,
            None if data.profiles is None else (data.profiles, groups[0]),
            gen,
            groups=groups,
            mmd_weight=float(self.config.mmd_weight),
        )

    def _batches(self, idx: np.ndarray) -> list[np.ndarray]:
        return np.array_split(idx, max(1, math.ceil(len(idx) / self.config.batch_size)))

    def _evaluate(self, idx: np.ndarray) -> float:
        """Validation loss: the training objective at the full beta, with fixed noise so epochs are comparable."""
        self.module.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.config.random_state + 1)
        with torch.no_grad():
            total = sum(
                float(self._loss(b, float(self.config.beta), gen).loss) * len(b) for b in self._batches(idx)
            )
        return total / len(idx)

    def _train_epoch(self, batches: list[np.ndarray], step: int, opt, gen) -> np.ndarray:
        """One pass over the given mini-batches (an epoch, or its start when the step budget ends inside it), the
        first being optimizer step `step`; returns the cell-averaged (loss, recon, kl, mmd)."""
        self.module.train()
        sums = np.zeros(4)
        for i, batch in enumerate(batches):
            parts = self._loss(batch, self.config.step_beta(step + i), gen)
            opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            opt.step()
            sums += len(batch) * np.array(
                [float(t.detach()) for t in (parts.loss, parts.recon, parts.kl, parts.mmd)]
            )
        return sums / sum(len(b) for b in batches)

    def run(self, train_idx: np.ndarray, val_idx: np.ndarray, rng: np.random.Generator) -> Trainer:
        """Mini-batch AdamW; early stopping on the validation loss once the KL warm-up is over; keeps the best.

        Stops after max_steps optimizer steps at the latest, inside an epoch if need be (that last epoch is
        validated and recorded like the others)."""
        module, cfg = self.module, self.config
        opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        gen = torch.Generator(device=self.device).manual_seed(cfg.random_state)
        self.history = []
        stopper = _EarlyStopping(cfg.patience)
        start = time.perf_counter()
        budget = steps_left = cfg.step_budget(len(train_idx))
        per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
        progress = _Progress(cfg.verbose, math.ceil(budget / per_epoch))
        cells = 0
        for epoch in range(cfg.max_epochs):
            if steps_left <= 0:
                break
            batches = self._batches(rng.permutation(train_idx))[:steps_left]
            step = budget - steps_left
            steps_left -= len(batches)
            cells += sum(len(b) for b in batches)
            beta = cfg.step_beta(step + len(batches) - 1)  # at the epoch's last step
            train_loss, recon, kl, mmd = self._train_epoch(batches, step, opt, gen)
            val_loss = self._evaluate(val_idx) if len(val_idx) else float(train_loss)
            record = {"epoch": epoch, "train_loss": float(train_loss), "val_loss": val_loss}
            record.update(recon=float(recon), kl=float(kl), beta=beta, mmd=float(mmd))
            self.history.append(record)
            stop = stopper.update(epoch, val_loss, module, counts=budget - steps_left >= cfg.kl_warmup_steps)
            progress.epoch(record, done=stop)
            if stop:
                break
        self.best_epoch = stopper.restore_best(module, last_epoch=len(self.history) - 1)
        module.eval()
        wall = time.perf_counter() - start
        flops = float(module.train_flops_per_cell(self.n_contexts)) * cells
        self.stats = {
            "epochs": len(self.history),
            "step_budget": budget,
            "steps": budget - steps_left,
            "budget_spent": cfg.max_steps is not None and budget - steps_left >= cfg.max_steps,
            "best_epoch": self.best_epoch,
            "stopped_early": stopper.stopped,
            "train_cells": len(train_idx),
            "val_cells": len(val_idx),
            "train_seconds": wall,
            "train_flops": flops,
            "flops_per_second": flops / max(wall, 1e-9),
        }
        progress.close(self.stats)
        return self
