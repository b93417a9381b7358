"""Generation from a fitted CVAEModule: Mode A (z from the prior) or Mode B (z from the control cells), each
cell sampled from the likelihood, the decoder mean, or the counterfactual; Gaussian or NB, returned
log-normalized (the harness's `lognormalize` for counts)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from benchmark.core.task import Task, lognormalize
from predictors.cvae.data import dense_rows
from predictors.cvae.module import _EPS, CVAEModule, Likelihood

Mode = Literal["A", "B"]
Rule = Literal["counterfactual", "sample", "mean"]
GENERATE_OPTIONS = ("auto", "counterfactual", "sample", "mean")
"""What the predictor's `generate` hyperparameter takes; "auto" resolves by mode (see resolve_rule)."""
Covariates = tuple[torch.Tensor, torch.Tensor | None]
"""One covariate row: the perturbation multi-hot (1 x perturbation genes) and the context one-hot or None."""
BATCH_CELLS = 1024
"""Cells generated at once (bounds memory to a few batch x genes tensors)."""


@dataclass
class Controls:
    """What generation reads of the given control cells: one generated cell per control cell.

    x: the cells on the encoder's scale (counts for NB, log-normalized for Gaussian), sparse or dense; Mode B
    encodes them and the counterfactual starts from them, Mode A reads only their number. library (NB): each
    cell's total count, the library size of the cell generated from it. profile: (1 x genes) their mean
    log-normalized profile, the context control profile a decoder that reads profiles decodes under; None for
    one that does not.
    """

    x: Any
    library: np.ndarray | None
    profile: torch.Tensor | None


def controls_of(
    control: AnnData, task: Task, likelihood: Likelihood, reads_profiles: bool, device: torch.device
) -> Controls:
    """The Controls of the given control cells (for a decoder that reads profiles, their profile on device)."""
    x = control.X if likelihood == "nb" else task.lognorm(control)
    if sp.issparse(x):
        x = sp.csr_matrix(x)
    lib = None
    if likelihood == "nb":
        lib = np.asarray(control.X.sum(axis=1), dtype=np.float32).ravel()
    profile = None
    if reads_profiles:  # the target context's control profile, from these cells
        lognorm = x if likelihood == "gaussian" else task.lognorm(control)
        mean = np.asarray(lognorm.sum(axis=0), dtype=np.float64).reshape(1, -1) / control.n_obs
        profile = torch.from_numpy(mean.astype(np.float32)).to(device)
    return Controls(x, lib, profile)


def label_seed(random_state: int, *labels: str | None) -> int:
    """A stable per-target seed, so repeated predictions are identical and targets get distinct noise."""
    key = "\x1f".join("" if label is None else label for label in labels)
    return (int(random_state) * 1_000_003 + zlib.crc32(key.encode())) % (2**63 - 1)


def resolve_rule(mode: Mode, generate: str) -> Rule:
    """The generation rule in effect: 'auto' is counterfactual in mode B and sampling in mode A."""
    if generate not in GENERATE_OPTIONS:
        raise ValueError(f"unknown generate {generate!r}")
    if generate == "counterfactual" and mode == "A":
        raise ValueError("generate='counterfactual' needs mode B (mode A has no real cell to start from)")
    if generate == "auto":
        return "counterfactual" if mode == "B" else "sample"
    return generate  # type: ignore[return-value]


def generate(
    module: CVAEModule,
    mode: Mode,
    rule: Rule,
    controls: Controls,
    target: Covariates,
    control: Covariates,
    gen: torch.Generator,
) -> np.ndarray:
    """Log-normalized cells under `target`, one per control cell, BATCH_CELLS at a time.

    z: Mode A draws it from the prior N(0, I); Mode B encodes each control cell under `control` (the control
    condition in its context) and draws from q(z | x, control). The decoder then reads z, the target's
    covariates and (if it reads profiles) the controls' profile; the rule turns its output into cells.
    """
    if mode not in ("A", "B"):
        raise ValueError(f"unknown mode {mode!r}")
    module.eval()
    device = module.gene_param.device
    n = controls.x.shape[0]
    out = np.empty((n, module.gene_param.shape[0]), dtype=np.float32)
    for batch in np.array_split(np.arange(n), max(1, math.ceil(n / BATCH_CELLS))):
        if len(batch) == 0:
            continue
        rows = None if mode == "A" else dense_rows(controls.x, batch, device)
        if rows is None:
            z = torch.randn((len(batch), module.n_latent), generator=gen, device=device)
        else:
            mu, logvar = module.encode(rows, *_repeat(control, len(batch)))
            eps = torch.randn(mu.shape, generator=gen, device=device)
            z = mu + torch.exp(0.5 * logvar) * eps
        profiles = None
        if controls.profile is not None:
            profiles = (controls.profile, torch.zeros(len(batch), dtype=torch.long, device=device))
        decoded = module.decode(z, *_repeat(target, len(batch)), profiles)
        lib = None if controls.library is None else controls.library[batch]
        if rule == "counterfactual":
            if rows is None:
                raise ValueError("the counterfactual needs mode B (mode A has no real cell to start from)")
            base = module.decode(z, *_repeat(control, len(batch)), profiles)
            out[batch] = counterfactual(module, rows, base, decoded, lib, gen)
        else:
            out[batch] = to_lognorm(module, decoded, lib, rule, gen)
    return out


def _repeat(covariates: Covariates, n: int) -> Covariates:
    """n copies of one covariate row."""
    pert, ctx = covariates
    return pert.repeat(n, 1), None if ctx is None else ctx.repeat(n, 1)


def counterfactual(
    module: CVAEModule,
    x: torch.Tensor,
    base: torch.Tensor,
    decoded: torch.Tensor,
    lib: np.ndarray | None,
    gen: torch.Generator,
) -> np.ndarray:
    """The control cell with its own noise kept and the decoded change applied (abduction, then action).

    Gaussian: x + f(z, c_pert) - f(z, c_control), i.e. the residual x - f(z, c_control) is carried over.
    NB: each count is moved to the same (randomized) quantile of the perturbed cell's NB law.
    """
    if module.likelihood == "gaussian":
        return (x + decoded - base).cpu().numpy()
    lib_t = torch.from_numpy(lib).to(decoded.device).unsqueeze(1)
    counts = nb_quantile_transfer(x, base * lib_t, decoded * lib_t, module.theta(), gen)
    return lognormalize(counts.cpu().numpy())


def to_lognorm(
    module: CVAEModule, decoded: torch.Tensor, lib: np.ndarray | None, rule: Rule, gen: torch.Generator
) -> np.ndarray:
    """Log-normalized cells from the decoder output: "sample" draws from p(x | z, c), "mean" takes its mean.

    Gaussian: the mean plus (sample) N(0, sigma^2) noise. NB: counts ~ NB(l * rho, theta) (sample) or
    l * rho (mean), l the paired control's library size, then `lognormalize`.
    """
    if module.likelihood == "gaussian":
        if rule == "sample":
            noise = torch.randn(decoded.shape, generator=gen, device=decoded.device)
            decoded = decoded + noise * module.sigma()
        return decoded.cpu().numpy()
    mu = decoded * torch.from_numpy(lib).to(decoded.device).unsqueeze(1)
    counts = sample_nb(mu, module.theta(), gen) if rule == "sample" else mu
    return lognormalize(counts.cpu().numpy())


def sample_nb(mu: torch.Tensor, theta: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw NB counts as a Gamma-Poisson mixture: rate ~ Gamma(theta, theta / mu), counts ~ Poisson(rate)."""
    theta = theta.expand_as(mu)
    # torch's Gamma and Poisson samplers take no generator: seed a forked global RNG from `generator`.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with torch.random.fork_rng(devices=[mu.device] if mu.device.type == "cuda" else []):
        torch.manual_seed(seed)
        rate = torch.distributions.Gamma(theta, theta / mu.clamp_min(_EPS)).sample()
        return torch.poisson(rate)


def nb_quantile_transfer(
    x: torch.Tensor,
    mu_from: torch.Tensor,
    mu_to: torch.Tensor,
    theta: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Move counts x from NB(mu_from, theta) to the same quantile of NB(mu_to, theta), elementwise.

    Randomized probability integral transform (discrete laws): u ~ U(F_from(x - 1), F_from(x)), then
    F_to^-1(u). Keeps a cell's own position within its law (the counterfactual for count data); when the two
    laws are equal it returns x exactly. Computed with scipy's nbinom on the CPU.
    """
    from scipy.stats import nbinom

    theta_np = theta.expand_as(mu_from).detach().cpu().double().numpy()
    x_np = x.detach().cpu().double().numpy()
    p_from = theta_np / (theta_np + mu_from.detach().cpu().double().numpy() + _EPS)
    p_to = theta_np / (theta_np + mu_to.detach().cpu().double().numpy() + _EPS)
    lo = nbinom.cdf(x_np - 1.0, theta_np, p_from)
    hi = nbinom.cdf(x_np, theta_np, p_from)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    u = lo + (hi - lo) * np.random.default_rng(seed).random(x_np.shape)
    out = nbinom.ppf(np.clip(u, 1e-12, 1.0 - 1e-12), theta_np, p_to)
    return torch.from_numpy(out.astype(np.float32)).to(x.device)
