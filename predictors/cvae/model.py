"""The CVAE predictor (the scvi-tools style "model"): hyperparameters, the fit's orchestration and the generation
hooks. The network and its loss are module.py, the training loop train.py, the pseudobulk start start.py, the
anchoring anchor.py, generation generate.py and save/load persist.py."""

from __future__ import annotations

import pathlib
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from threadpoolctl import threadpool_limits

from benchmark.core.errors import NotApplicable
from benchmark.core.protocol import Predictor, predicted_anndata
from benchmark.core.task import Task
from predictors.cvae import anchor as anchoring
from predictors.cvae import generate as generation
from predictors.cvae import persist
from predictors.cvae import start as starting
from predictors.cvae.data import condition_ids, covariate_matrices, covariate_rows, gene_moments, tensors
from predictors.cvae.device import check_device, torch_threads
from predictors.cvae.module import DECODERS, CVAEModule, Likelihood
from predictors.cvae.train import TrainConfig, TrainData, Trainer
from predictors.params import (
    ValidatedParams,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_int,
)

_NON_FIT_PARAMS = ("mode", "generate", "verbose", "device")
_SMALL_STEP_FLOPS = 2e8
"""Below this many FLOPs per training step one thread is faster: the overhead of a second one (and its
busy-waiting on a loaded machine) dominates small matmuls."""
_CPU_THREADS = 2
"""CPU threads of a network above _SMALL_STEP_FLOPS, unless `n_threads` says otherwise: fixed, not the core count."""
_MAX_VAL_CELLS = 2048
"""At most this many cells are held out for validation (val_fraction of the cells below 20,480): a validation
pass costs at most 8 forward mini-batches of 256 per epoch, not a growing tenth of the data, and the cells beyond
it train. Epochs are compared on the same cells with the same noise (a paired comparison)."""


class CVAEPredictor(ValidatedParams, Predictor):
    """Conditional VAE: z ~ q(z | x, c), x ~ p(x | z, c), c = multi-hot single perturbations (+ context).

    mode "A" decodes z ~ N(0, I) under the target condition; mode "B" encodes the control cells under
    c = control and decodes their z under the target (the counterfactual). Both modes share one fit.

    generate: "auto" (default) is "counterfactual" in mode B and "sample" in mode A. "counterfactual" keeps
    each control cell's own deviation from the decoder and applies only the decoded change (abduction, then
    action): Gaussian x + f(z, c_pert) - f(z, c_control); NB: every count moves to the same randomized quantile
    of its NB law under the perturbation. "sample" draws from p(x | z, c); "mean" returns the decoder mean.
    Why counterfactual by default: sampling puts the fitted per-gene noise on every gene, genes flat in the
    real cells included (over-dispersed cells: a large var_ratio and energy distance), and the decoder mean has
    no cell-to-cell spread at all; both scored worse on validation splits. Mode A has
    no real cell to start from, so it samples.

    NB to log-normalized values: each generated cell is paired with one control cell and takes its library
    size l (the control's total count). "sample": counts ~ NB(l * rho(z, c), theta), then the harness's
    `lognormalize` (log1p(counts / sum(counts) * 1e4)). "mean": `lognormalize(l * rho)` = log1p(1e4 * rho),
    since the fractions rho sum to 1. "counterfactual": the control cell's own counts, quantile-mapped from
    NB(l * rho(z, control), theta) to NB(l * rho(z, c), theta), then `lognormalize`.

    likelihood "auto" follows task.expression ("counts" -> NB, "lognorm" -> Gaussian). use_context adds the
    context one-hot to encoder and decoder covariates (a context unseen in training is then NotApplicable); on
    kang2018 holdout_context (7 cell types x 3 seeds, this decoder) it raises r from 0.73 to 0.90, J(100) from
    0.41 to 0.59 and cuts the energy distance from 3.69 to 0.52. decoder "response" (default) = unperturbed
    profile m(z, context) plus a per-perturbation response with a gain on m and a read-out of the context's
    control profile along `rank` fixed principal axes of the training contexts' control profiles, which predict
    takes from the given control cells (see ResponseDecoder; readout_penalty is the ridge penalty of its
    pseudobulk start, see predictors.cvae.start); "mlp" = the classic CVAE decoder with the condition injected into
    every hidden layer. mmd_weight weighs an MMD penalty between the control
    and perturbed cells' z within each context: without it z encodes the condition (a linear probe separated
    them with 95-100% accuracy on kang2018) and decoding a control cell under the perturbation recovered only
    60-80% of the effect; with it the probe is near chance and the in-distribution effect is recovered (slope 1).

    max_steps bounds training by optimizer steps (mini-batches), the last epoch cut short if need be, so the
    training loop's cost is at most max_steps steps whatever the number of cells (early stopping may end it
    sooner); the setup (moments, pseudobulks) is linear in the cells and a validation pass is capped at
    _MAX_VAL_CELLS cells. The default, 1,500, was chosen on cost, not on any score (docs/results.md gives the
    measured cost per step).

    mean_response and spread anchor each predicted group (predictors.cvae.anchor): the CVAE supplies the cells'
    deviations from their group mean, the group's mean shift is w x the linear baseline's + (1 - w) x the CVAE's
    ("cvae": w = 0, "baseline": w = 1, "auto": w in {0, .25, .5, .75, 1} chosen on inner folds of the training
    cells, at most inner_folds of them), and spread "perturbed" rescales the deviations per gene to the perturbed
    cells' spread ("auto": chosen on the same folds). mean_response="cvae" with spread="model" is the network
    alone. After fit: mean_weight_, spread_ and the inner table inner_scores_ (also in selection_).

    The registered names (cvae_modeA/B, cvae_mlp_modeA/B) take the defaults that benchmark.selection.choose_defaults chose
    on validation splits of the visible datasets' training cells (predictors/cvae/defaults.json, `make
    cvae-defaults`); this constructor's defaults are that search's starting point (its candidate 0).

    Every hyperparameter is checked on construction and by set_params (ValueError naming the parameter and
    what it accepts; see _validate).
    """

    cacheable = True

    #: What `bench tune` searches (benchmark.selection.tuning): capacity, regularization, optimizer, step budget and
    #: the decoder (response or plain MLP), so validation, not the registered name, picks the architecture.
    search_space: dict[str, tuple] = {
        "n_latent": ("int", 8, 64, True),
        "n_hidden": ("categorical", [64, 128, 256, 512]),
        "beta": ("float", 0.1, 4.0, True),
        "mmd_weight": ("float", 1.0, 1e5, True),
        "dropout": ("float", 0.0, 0.3, False),
        "lr": ("float", 3e-4, 1e-2, True),
        "weight_decay": ("float", 1e-6, 1e-2, True),
        "kl_warmup_steps": ("categorical", [0, 100, 300, 1000]),
        "max_steps": ("int", 500, 3_000, True),
        "decoder": ("categorical", ["response", "mlp"]),
        "mean_response": ("categorical", ["auto", "cvae", "baseline"]),
        "spread": ("categorical", ["auto", "model", "perturbed"]),
    }

    def __init__(
        self,
        mode: Literal["A", "B"] = "B",
        likelihood: Literal["auto", "gaussian", "nb"] = "auto",
        n_latent: int = 32,
        n_hidden: int = 256,
        n_layers: int = 1,
        use_context: bool = True,
        decoder: Literal["response", "mlp"] = "response",
        rank: int = 1,
        gain: bool = True,
        readout_penalty: float = 0.3,
        beta: float = 1.0,
        mmd_weight: float = 10000.0,
        kl_warmup_steps: int = 300,
        dropout: float = 0.0,
        max_epochs: int = 300,
        max_steps: int | None = 1_500,
        batch_size: int = 256,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        val_fraction: float = 0.1,
        patience: int = 10,
        generate: Literal["auto", "counterfactual", "sample", "mean"] = "auto",
        mean_response: Literal["auto", "cvae", "baseline"] = "auto",
        spread: Literal["auto", "model", "perturbed"] = "auto",
        inner_folds: int = 1,
        random_state: int = 0,
        device: str = "auto",
        n_threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.mode = mode
        self.likelihood = likelihood
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        self.n_layers = n_layers
        self.use_context = use_context
        self.decoder = decoder
        self.rank = rank
        self.gain = gain
        self.readout_penalty = readout_penalty
        self.beta = beta
        self.mmd_weight = mmd_weight
        self.kl_warmup_steps = kl_warmup_steps
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.generate = generate
        self.mean_response = mean_response
        self.spread = spread
        self.inner_folds = inner_folds
        self.random_state = random_state
        self.device = device
        self.n_threads = n_threads
        self.verbose = verbose
        self._validate()

    def _validate(self) -> None:
        """Raise ValueError (one line, naming the parameter and its allowed values) for the first bad one."""
        check_choice("mode", self.mode, ("A", "B"))
        check_choice("likelihood", self.likelihood, ("auto", "gaussian", "nb"))
        check_int("n_latent", self.n_latent, 1)
        check_int("n_hidden", self.n_hidden, 1)
        check_int("n_layers", self.n_layers, 1)
        check_bool("use_context", self.use_context)
        check_choice("decoder", self.decoder, tuple(DECODERS))
        check_int("rank", self.rank, 0)
        check_bool("gain", self.gain)
        check_float("readout_penalty", self.readout_penalty, 0.0)
        check_float("beta", self.beta, 0.0)
        check_float("mmd_weight", self.mmd_weight, 0.0)
        check_int("kl_warmup_steps", self.kl_warmup_steps, 0)
        check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_int("max_epochs", self.max_epochs, 1)
        check_optional_int("max_steps", self.max_steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_float("lr", self.lr, 0.0, low_open=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_float("val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        check_int("patience", self.patience, 0)
        check_choice("generate", self.generate, generation.GENERATE_OPTIONS)
        if self.generate == "counterfactual" and self.mode == "A":
            raise ValueError(
                "generate='counterfactual' needs mode='B' (mode A has no real cell to start from)"
            )
        check_choice("mean_response", self.mean_response, anchoring.MEAN_RESPONSES)
        check_choice("spread", self.spread, anchoring.SPREADS)
        check_int("inner_folds", self.inner_folds, 1)
        check_int("random_state", self.random_state, 0, 2**32 - 1)
        check_device("device", self.device)
        check_optional_int("n_threads", self.n_threads, 1)
        check_bool("verbose", self.verbose)

    # ---------------------------------------------------------------- configuration

    def fit_params(self) -> dict[str, Any]:
        """Everything but the generation-time settings (mode, generate, verbose, device) shapes the fit."""
        return {k: v for k, v in self.get_params().items() if k not in _NON_FIT_PARAMS}

    def _resolve_likelihood(self, task: Task) -> Likelihood:
        """'auto' -> NB for counts, Gaussian for log-normalized data; NB on log-normalized data is an error."""
        if self.likelihood == "auto":
            return "nb" if task.expression == "counts" else "gaussian"
        if self.likelihood == "nb" and task.expression != "counts":
            raise ValueError("likelihood='nb' needs count data (task.expression == 'counts')")
        if self.likelihood not in ("gaussian", "nb"):
            raise ValueError(f"unknown likelihood {self.likelihood!r}")
        return self.likelihood

    def _torch_device(self) -> torch.device:
        """'auto' -> CUDA if available, else CPU; anything else is passed to torch.device."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _covariates(self, genes: list[str], context: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n identical covariate rows: the perturbation multi-hot, and the context one-hot when used."""
        contexts = self.contexts_ if self.use_context else None
        return tensors(*covariate_rows(genes, context, n, self.perturbation_genes_, contexts), self.device_)

    def _n_threads(self) -> int | None:
        """CPU threads of training and generation: `n_threads`, else one for small networks (see
        _SMALL_STEP_FLOPS) and _CPU_THREADS otherwise. Never the machine's core count or load: float sums depend on
        the thread count, so the same seed gives the same fit on any machine. None on a GPU."""
        if self.device_.type != "cpu":
            return None
        if self.n_threads is not None:
            return self.n_threads
        small = self.module_.train_flops_per_cell(len(self.contexts_)) * self.batch_size < _SMALL_STEP_FLOPS
        return 1 if small else _CPU_THREADS

    def _build_module(self) -> CVAEModule:
        return CVAEModule(
            n_genes=len(self.var_names_),
            n_pert=len(self.perturbation_genes_),
            n_ctx=len(self.contexts_) if self.use_context else 0,
            decoder=self.decoder,
            n_latent=self.n_latent,
            n_hidden=self.n_hidden,
            n_layers=self.n_layers,
            likelihood=self.likelihood_,
            dropout=self.dropout,
            rank=self.rank,
            gain=self.gain,
        )

    # ---------------------------------------------------------------- training

    def _blas_threads(self) -> int:
        """numpy's BLAS threads during fit and predict: `n_threads`, else _CPU_THREADS; fixed, never the load."""
        return self.n_threads if self.n_threads is not None else _CPU_THREADS

    def fit(self, train: AnnData, task: Task) -> CVAEPredictor:
        """Train on all given cells (val_fraction held out for early stopping), then anchor the mean and spread.

        Unless mean_response is "cvae" and spread "model", the baseline (predictors.linear) is fitted on the same
        cells, and an "auto" choice runs the inner validation of predictors.cvae.anchor: per inner fold one more
        CVAE and baseline fit on the fold's training cells, so an "auto" fit costs about 1 + inner_folds CVAE fits.
        """
        with threadpool_limits(limits=self._blas_threads(), user_api="blas"):
            self._fit_cvae(train, task)
            self._fit_anchor(train, task)
        return self

    def _fit_anchor(self, train: AnnData, task: Task) -> None:
        """The baseline, the inner tables and the chosen weight and spread rule of each generation mode (one fit
        serves both modes, so each is chosen for each; see predictors.cvae.anchor)."""
        self.anchor_: anchoring.Anchor | None = None
        self.inner_scores_: dict[str, Any] = {}
        if self.mean_response == "cvae" and self.spread == "model":
            return
        inner_params = {**self.get_params(), "mean_response": "cvae", "spread": "model", "verbose": False}

        def fit_inner(cells: AnnData) -> CVAEPredictor:  # a fresh network alone, per inner fold
            return type(self)(**inner_params).fit(cells, task)

        modes = ("B",) if self.generate == "counterfactual" else ("A", "B")
        self.anchor_, self.inner_scores_ = anchoring.fit(
            fit_inner,
            train,
            task,
            modes,
            self.mean_response,
            self.spread,
            self.inner_folds,
            self.random_state,
        )
        self.train_stats_.update(
            mean_weight=self.anchor_.weights,
            spread=self.anchor_.spreads,
            inner_seconds=self.inner_scores_["seconds"],
        )

    @property
    def mean_weight_(self) -> float:
        """The baseline's weight in the mean shift of this predictor's mode (0: the network's own mean)."""
        anchor = self._fitted_anchor()
        return 0.0 if anchor is None else anchor.weights[self.mode]

    @property
    def spread_(self) -> str:
        """The spread rule in effect for this predictor's mode: "model" or "perturbed"."""
        anchor = self._fitted_anchor()
        return "model" if anchor is None else anchor.spreads[self.mode]

    def _fitted_anchor(self) -> anchoring.Anchor | None:
        if not hasattr(self, "inner_scores_"):
            raise AttributeError("not fitted")
        return self.anchor_

    @property
    def selection_(self) -> dict[str, Any]:
        """How the mean response and spread were chosen (logged by the runner with the fit)."""
        return {
            "mean_response": self.mean_response,
            "mean_weight": self.mean_weight_,
            "spread_param": self.spread,
            "spread": self.spread_,
            "inner_scores": self.inner_scores_.get(self.mode, {}),
            "inner_seconds": self.inner_scores_.get("seconds", 0.0),
        }

    def _fit_cvae(self, train: AnnData, task: Task) -> None:
        """Train the network on all given cells, holding out val_fraction of them for early stopping."""
        self.task_ = task
        self.likelihood_ = self._resolve_likelihood(task)
        self.device_ = self._torch_device()
        self.var_names_ = [str(v) for v in train.var_names]
        perts = task.perturbations(train)
        contexts = task.contexts(train).astype(str)
        self.perturbation_genes_ = sorted({g for label in np.unique(perts) for g in task.genes_of(label)})
        self.contexts_ = sorted(set(contexts))
        x = train.X if self.likelihood_ == "nb" else task.lognorm(train)
        data = TrainData(
            x=sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x),
            covariates=covariate_matrices(
                perts, contexts, task, self.perturbation_genes_, self.contexts_ if self.use_context else None
            ),
            context_id=np.unique(contexts, return_inverse=True)[1],
            condition_id=condition_ids(perts, task.control_label),
        )
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(train.n_obs)
        n_val = min(int(round(self.val_fraction * train.n_obs)), _MAX_VAL_CELLS) if train.n_obs >= 10 else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.module_ = self._build_module()
        fit_idx = np.sort(order[n_val:])
        mean, std = gene_moments(data.x[fit_idx])
        start = None
        if self.module_.decoder.reads_profiles:  # the context profiles and the response start, from fit cells
            starter = starting.PseudobulkStarter(
                self.likelihood_, self.perturbation_genes_, self.contexts_, self.rank, self.readout_penalty
            )
            start, table = starter.start(data.x, train, fit_idx, perts[fit_idx], contexts[fit_idx], task)
            data.profiles = table.to(self.device_)
        self.module_.init_from_data(torch.from_numpy(mean), torch.from_numpy(std), start)
        self.module_.to(self.device_)
        self.n_threads_ = self._n_threads()  # recorded: the fit depends on it
        # Dropout draws from torch's global generator: seed it for the fit alone, so a fit never depends on what
        # ran before it in the process (other splits, a model-cache hit that skipped a fit).
        cuda = [self.device_] if self.device_.type == "cuda" else []
        with torch_threads(self.n_threads_), torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.random_state + 2)
            self._train(data, order[n_val:], np.sort(order[:n_val]), rng)

    def _step_budget(self, n_train: int) -> int:
        """Optimizer steps allowed for n_train training cells (see TrainConfig.step_budget)."""
        return TrainConfig.of(self.get_params()).step_budget(n_train)

    def _train(
        self, data: TrainData, train_idx: np.ndarray, val_idx: np.ndarray, rng: np.random.Generator
    ) -> None:
        """Train module_ (predictors.cvae.train) and keep its history, best epoch and statistics."""
        trainer = Trainer(
            self.module_, data, TrainConfig.of(self.get_params()), self.device_, len(self.contexts_)
        )
        trainer.run(train_idx, val_idx, rng)
        self.history_, self.best_epoch_, self.train_stats_ = (
            trainer.history,
            trainer.best_epoch,
            trainer.stats,
        )

    # ---------------------------------------------------------------- prediction

    def check_applicable(self, train: AnnData, task: Task, perturbation: str, context: str | None) -> None:
        """Before fitting: NotApplicable when `train` lacks a gene of the perturbation (or the context, if used)."""
        seen = {g for label in np.unique(task.perturbations(train)) for g in task.genes_of(label)}
        contexts = set(task.contexts(train).astype(str))
        self._decline(task.genes_of(perturbation), seen, context, contexts)

    def _decline(self, genes: list[str], seen: set[str], context: str | None, contexts: set[str]) -> str:
        """Raise NotApplicable for a gene never seen in training, or an unseen context when used; else the
        context key the covariates use."""
        unseen = [g for g in genes if g not in seen]
        if unseen:
            raise NotApplicable(f"CVAE never saw perturbation(s) {', '.join(unseen)} in training")
        ctx = "all" if context is None else str(context)
        if self.use_context and ctx not in contexts:
            raise NotApplicable(f"CVAE (use_context=True) never saw context {ctx!r} in training")
        return ctx

    def _check_applicable(self, perturbation: str, context: str | None) -> tuple[list[str], str]:
        """After fitting: the perturbation's genes and the context key, or NotApplicable (see _decline)."""
        genes = self.task_.genes_of(perturbation)
        return genes, self._decline(genes, set(self.perturbation_genes_), context, set(self.contexts_))

    def predict(self, control: AnnData, perturbation: str, context: str | None) -> AnnData:
        """One cell per control cell under `perturbation` (mode A: from the prior; B: from the controls), its
        group's mean shift and spread anchored as fitted (see predictors.cvae.anchor)."""
        with threadpool_limits(limits=self._blas_threads(), user_api="blas"):
            cells = self.generate_cells(control, perturbation, context)
            anchor = getattr(self, "anchor_", None)
            if anchor is not None:
                cells = anchor.compose(
                    cells,
                    control,
                    self.task_,
                    perturbation,
                    context,
                    lambda: self.generate_cells(control, perturbation, context, "sample"),
                    self.mode,
                )
        return predicted_anndata(cells, control, perturbation, context)

    def generate_cells(
        self,
        control: AnnData,
        perturbation: str,
        context: str | None,
        rule: str | None = None,
        mode: str | None = None,
    ) -> np.ndarray:
        """The network's own cells (log-normalized, no anchoring) in `mode` (default: the predictor's) under
        `rule` (default: `generate` resolved for that mode)."""
        mode = self.mode if mode is None else mode
        if not hasattr(self, "module_"):
            raise RuntimeError("CVAEPredictor is not fitted")
        genes, ctx = self._check_applicable(perturbation, context)
        if [str(v) for v in control.var_names] != self.var_names_:
            raise ValueError("control cells do not have the training genes in the training order")
        rule = generation.resolve_rule(mode, self.generate) if rule is None else rule
        reads_profiles = self.module_.decoder.reads_profiles
        controls = generation.controls_of(control, self.task_, self.likelihood_, reads_profiles, self.device_)
        gen = torch.Generator(device=self.device_).manual_seed(
            generation.label_seed(self.random_state, perturbation, context)
        )
        with torch.no_grad(), torch_threads(self._n_threads()):
            out = generation.generate(
                self.module_,
                mode,
                rule,
                controls,
                self._covariates(genes, ctx, 1),
                self._covariates([], ctx, 1),
                gen,
            )
        return out

    # ---------------------------------------------------------------- persistence

    def save(self, directory: pathlib.Path) -> None:
        """Write the fitted state: weights, vocabularies, task, params, history and anchoring (see persist)."""
        persist.save(self, directory)

    def load_fitted(self, directory: pathlib.Path) -> CVAEPredictor:
        """Load a saved fitted state into self; self keeps its own mode, generate, verbose and device."""
        return persist.load_fitted(self, directory)
