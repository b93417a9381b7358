"""The conditional VAE network and its loss (the scvi-tools style "module": tensors in, tensors out)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Likelihood = Literal["gaussian", "nb"]
Profiles = tuple[torch.Tensor, torch.Tensor]
"""Context control profiles for the response decoder: a (k x genes) table and each cell's row in it (long)."""

_LOG_2PI = math.log(2.0 * math.pi)
_EPS = 1e-8


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row, in closed form."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


class _GaussianLogProb(torch.autograd.Function):
    """log N(x; mean, exp(log_sigma)^2) summed over genes, with a hand-written backward.

    Autograd's version of the same formula makes about ten passes over the cells x genes tensors per training
    step (subtract, scale, square, sum and their gradients); this one writes four: r = x - mean and s = r / sigma^2
    forward (plus a row dot product that writes nothing), and g * s (the mean's gradient) and its product with
    r (summed over cells, the log sigma gradient) backward. x is data (no gradient).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        r = x - mean
        s = r * torch.exp(-2.0 * log_sigma)
        quad = torch.linalg.vecdot(r, s)
        ctx.save_for_backward(r, s)
        return -0.5 * quad - (log_sigma.sum() + 0.5 * _LOG_2PI * x.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.needs_input_grad[0]:
            raise NotImplementedError("gaussian_log_prob takes no gradient with respect to the data x")
        r, s = ctx.saved_tensors
        grad_mean = s * grad.unsqueeze(1)  # d/d mean of -0.5 r^2 / sigma^2 is r / sigma^2
        grad_log_sigma = None
        if ctx.needs_input_grad[2]:  # d/d log sigma: r^2 / sigma^2 - 1, per cell, weighted by grad
            grad_log_sigma = (grad_mean * r).sum(dim=0) - grad.sum()
        return None, grad_mean if ctx.needs_input_grad[1] else None, grad_log_sigma


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, sigma^2) summed over genes, per row; log_sigma is per gene (see _GaussianLogProb)."""
    return _GaussianLogProb.apply(x, mean, log_sigma)


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mean mu, inverse dispersion theta), elementwise (variance mu + mu^2 / theta).

    Same law as scipy.stats.nbinom(n=theta, p=theta / (theta + mu)).
    """
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


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


MMD_SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)
"""Squared bandwidths of the RBF kernels summed in the MMD: from within-cluster to prior-scale distances."""


def _rbf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over MMD_SCALES of exp(-|x_i - y_j|^2 / (2 s)), as a matrix."""
    d2 = (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2.0 * x @ y.T).clamp_min(0.0)
    return sum(torch.exp(-d2 / (2.0 * s)) for s in MMD_SCALES)


def mmd_rbf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased (V-statistic) squared MMD between two samples with the multi-scale RBF kernel."""
    return _rbf(x, x).mean() + _rbf(y, y).mean() - 2.0 * _rbf(x, y).mean()


def condition_mmd(z: torch.Tensor, context: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """Mean MMD between the control cells' z (condition 0) and each perturbed group's z, within each context.

    Pushes z to carry the cell state but not the perturbation, so that decoding a control cell's z under a
    perturbation gives the whole effect (the counterfactual); a context's cells are never compared with another's.
    Vectorized: one kernel matrix for the batch, group-averaged by a (cells x groups) weight matrix.
    """
    key = context * (int(condition.max()) + 1) + condition
    groups, member = torch.unique(key, return_inverse=True)
    weights = F.one_hot(member, len(groups)).to(z.dtype)
    sizes = weights.sum(dim=0)
    weights = weights / sizes
    mean_k = weights.T @ _rbf(z, z) @ weights  # mean kernel between every pair of groups
    n_cond = int(condition.max()) + 1
    g_ctx, g_cond = (groups // n_cond).tolist(), (groups % n_cond).tolist()
    control_of = {
        c: i for i, (c, k) in enumerate(zip(g_ctx, g_cond, strict=True)) if k == 0 and sizes[i] >= 2
    }
    pairs = [
        (control_of[c], i)
        for i, (c, k) in enumerate(zip(g_ctx, g_cond, strict=True))
        if k != 0 and c in control_of and sizes[i] >= 2
    ]
    if not pairs:
        return z.new_zeros(())
    ctrl, pert = (torch.tensor(idx, device=z.device) for idx in zip(*pairs, strict=True))
    return (mean_k[ctrl, ctrl] + mean_k[pert, pert] - 2.0 * mean_k[ctrl, pert]).mean()


class _Block(nn.Module):
    """Linear layer plus a covariate projection, then LayerNorm and SiLU (covariates injected, no concat)."""

    def __init__(self, n_in: int, n_cov: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.cov = nn.Linear(n_cov, n_out, bias=False) if n_cov > 0 else None
        self.norm = nn.LayerNorm(n_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor, cov: torch.Tensor | None) -> torch.Tensor:
        out = self.linear(h)
        if self.cov is not None and cov is not None:
            out = out + self.cov(cov)
        return self.dropout(F.silu(self.norm(out)))


class _MLP(nn.Module):
    """A stack of blocks, each one receiving the covariates (deep injection keeps the condition visible)."""

    def __init__(self, n_in: int, n_cov: int, n_hidden: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [n_in] + [n_hidden] * n_layers
        self.blocks = nn.ModuleList(
            _Block(a, n_cov, b, dropout) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, h: torch.Tensor, cov: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, cov)
        return h


class MLPDecoder(nn.Module):
    """The classic CVAE decoder: f(z, c) = V h, h = MLP(z) with perturbation and context injected in every layer."""

    def __init__(
        self, n_latent: int, n_pert: int, n_ctx: int, n_hidden: int, n_layers: int, n_genes: int
    ) -> None:
        super().__init__()
        self.mlp = _MLP(n_latent, n_pert + n_ctx, n_hidden, n_layers, 0.0)
        self.out = nn.Linear(n_hidden, n_genes)

    def forward(
        self, z: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None, profiles: Profiles | None = None
    ) -> torch.Tensor:
        """Ignores the context profiles (the condition enters every hidden layer instead)."""
        return self.out(self.mlp(z, _cat(pert, ctx)))


class ResponseDecoder(nn.Module):
    """The cell's unperturbed profile plus a response that reads the cell and its context's control profile.

    f(z, c) = m + sum_p c_p r_p(m, k), with m = V MLP(z, context) + bias the unperturbed profile (log-normalized
    mean, or NB logits) and k the mean log-normalized profile of the control cells of the cell's context. Each single
    perturbation p responds with r_p = a_p + b_p * (m - mu) + U_p A (k - mu) (mu = training mean): a per-gene
    offset, a per-gene gain on the cell's own centred profile (within-context heterogeneity) and a read-out of
    its context's centred control profile along `rank` fixed axes A (how the response changes across contexts,
    the cell-level analogue of regressing a context's shift on its control profile), with learned per-gene
    loadings U_p. Combinations add their singles' responses. The context enters only through profiles, never
    through its one-hot, so the response transfers to a context whose perturbed cells were never seen.

    The axes are a buffer, not trained: the model sets them to the top principal axes of the training contexts'
    control profiles (CVAEModule.init_from_data). A data set has only a handful of contexts, and a learned axis
    can separate them in any direction, so what it predicts for a new context was erratic (issue #3's note has
    the measurements). Without that start they are random unit directions (e.g. one context: k is constant).
    Gain and loadings start at zero.
    """

    def __init__(
        self,
        n_latent: int,
        n_pert: int,
        n_ctx: int,
        n_hidden: int,
        n_layers: int,
        n_genes: int,
        rank: int = 1,
        gain: bool = True,
    ) -> None:
        super().__init__()
        self.rank, self.use_gain = rank, gain
        self.mlp = _MLP(n_latent, n_ctx, n_hidden, n_layers, 0.0)
        self.out = nn.Linear(n_hidden, n_genes)
        self.register_buffer("center", torch.zeros(n_genes))
        self.offset = nn.Parameter(torch.zeros(n_pert, n_genes))
        self.gain = nn.Parameter(torch.zeros(n_pert, n_genes))
        self.register_buffer("axes", F.normalize(torch.randn(rank, n_genes), dim=1))
        self.loadings = nn.Parameter(torch.zeros(n_pert, n_genes, rank))

    def responses(self, profiles: torch.Tensor) -> torch.Tensor:
        """(k, genes) context control profiles -> (k, perturbations, genes): each response's part that does not
        depend on the cell, a_p - b_p * mu + U_p A (k - mu)."""
        out = self.offset - self.gain * self.center if self.use_gain else self.offset
        out = out.expand(len(profiles), -1, -1)
        if self.rank > 0:
            scores = (profiles - self.center) @ self.axes.T
            out = out + torch.einsum("pgr,kr->kpg", self.loadings, scores)
        return out

    def forward(
        self, z: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None, profiles: Profiles
    ) -> torch.Tensor:
        """m(z, context) plus each cell's summed responses: one (cells x k*perturbations) @ (k*perturbations x
        genes) product and one multiply-add for the gain, i.e. two passes over cells x genes."""
        table, index = profiles
        m = self.out(self.mlp(z, ctx))
        weights = F.one_hot(index, len(table)).to(pert.dtype).unsqueeze(2) * pert.unsqueeze(1)
        out = torch.addmm(m, weights.flatten(1), self.responses(table).flatten(0, 1))
        return torch.addcmul(out, pert @ self.gain, m) if self.use_gain else out


def _cat(pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    return pert if ctx is None else torch.cat([pert, ctx], dim=1)


@dataclass
class LossParts:
    """The ELBO terms of a mini-batch, averaged over cells."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    mmd: torch.Tensor


class CVAEModule(nn.Module):
    """Encoder q(z | x, c), decoder p(x | z, c); c = perturbation multi-hot (and the context one-hot, if used).

    Gaussian: x is log-normalized, p(x | z, c) = N(f(z, c), diag sigma_g^2) with a learned per-gene sigma.
    NB: x is counts, p(x | z, c) = NB(mean = softmax(f(z, c))_g * library, per-gene inverse dispersion theta_g).
    """

    def __init__(
        self,
        n_genes: int,
        n_pert: int,
        n_ctx: int = 0,
        n_latent: int = 32,
        n_hidden: int = 256,
        n_layers: int = 1,
        likelihood: Likelihood = "gaussian",
        decoder: str = "response",
        dropout: float = 0.0,
        min_sigma: float = 0.1,
        rank: int = 1,
        gain: bool = True,
    ) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.log_min_sigma = math.log(min_sigma)
        self.n_latent = n_latent
        self.encoder = _MLP(n_genes, n_pert + n_ctx, n_hidden, n_layers, dropout)
        self.enc_out = nn.Linear(n_hidden, 2 * n_latent)
        if decoder == "response":
            self.decoder = ResponseDecoder(n_latent, n_pert, n_ctx, n_hidden, n_layers, n_genes, rank, gain)
        elif decoder == "mlp":
            self.decoder = MLPDecoder(n_latent, n_pert, n_ctx, n_hidden, n_layers, n_genes)
        else:
            raise ValueError(f"unknown decoder {decoder!r} (expected 'response' or 'mlp')")
        # Gaussian: log sigma per gene; NB: log theta per gene.
        self.gene_param = nn.Parameter(torch.zeros(n_genes))

    @torch.no_grad()
    def init_from_data(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        shifts: torch.Tensor | None = None,
        readout: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Start the decoder at the data's per-gene moments, which saves many epochs of fitting offsets.

        Gaussian: output bias = mean, log sigma = log std (floored). NB: output bias = log mean fraction,
        theta by the method of moments, mean^2 / (var - mean), clipped to [0.1, 1000]. shifts (perturbation
        genes x genes, on the decoder's output scale) start the response decoder's offsets at each
        perturbation's mean shift (the caller's estimate; the CVAE's is averaged over contexts): Adam moves a parameter by about lr per step, so a zero start needs
        hundreds of steps to reach a shift of a few log units, and early stopping can end training first.
        readout = (axes, slopes, anchors) (up to rank x genes; perturbations x genes; one per perturbation) sets
        the response decoder's read-out axes and starts the loadings on axes[0] at a regression of each shift on
        the context's control profile k along that axis, for the same reason: p's response in context k starts
        at shifts_p + slopes_p * (axes[0] . k - anchors_p).
        """
        if self.likelihood == "nb":
            self.decoder.out.bias.copy_(torch.log(mean / mean.sum().clamp_min(_EPS) + _EPS))
            excess = (std.pow(2) - mean).clamp_min(_EPS)
            self.gene_param.copy_(torch.log((mean.pow(2) / excess).clamp(0.1, 1000.0)))
        else:
            self.decoder.out.bias.copy_(mean)
            self.gene_param.copy_(torch.log(std.clamp_min(_EPS)).clamp_min(self.log_min_sigma))
        if isinstance(self.decoder, ResponseDecoder):
            self.decoder.center.copy_(self.decoder.out.bias)
            if shifts is not None:
                self.decoder.offset.copy_(shifts)
            if readout is not None and self.decoder.rank > 0:
                axes, slopes, anchors = readout
                self.decoder.axes[: len(axes)] = axes[: self.decoder.rank]
                self.decoder.loadings[:, :, 0] = slopes
                # the decoder reads axes . (k - center): the constant part goes into the offsets
                self.decoder.offset += slopes * (axes[0] @ self.decoder.center - anchors)[:, None]

    def sigma(self) -> torch.Tensor:
        """Per-gene Gaussian standard deviation (floored at min_sigma)."""
        return self.gene_param.clamp_min(self.log_min_sigma).exp()

    def theta(self) -> torch.Tensor:
        """Per-gene NB inverse dispersion."""
        return self.gene_param.exp()

    @staticmethod
    def encoder_input(x: torch.Tensor, likelihood: Likelihood) -> torch.Tensor:
        """What the encoder sees: log-normalized values (counts are size-normalized and log1p'd first)."""
        if likelihood == "nb":
            lib = x.sum(dim=1, keepdim=True).clamp_min(1.0)
            return torch.log1p(x / lib * 1e4)
        return x

    def encode(
        self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of z."""
        h = self.encoder(self.encoder_input(x, self.likelihood), _cat(pert, ctx))
        mu, logvar = self.enc_out(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(
        self, z: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None, profiles: Profiles
    ) -> torch.Tensor:
        """Gaussian: the mean of x. NB: the per-gene expression fractions (rows sum to 1)."""
        out = self.decoder(z, pert, ctx, profiles)
        return F.softmax(out, dim=-1) if self.likelihood == "nb" else out

    def log_likelihood(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """log p(x | z, c) per cell."""
        if self.likelihood == "nb":
            lib = x.sum(dim=1, keepdim=True)
            return nb_log_prob(x, decoded * lib, self.theta()).sum(dim=-1)
        return gaussian_log_prob(x, decoded, self.gene_param.clamp_min(self.log_min_sigma))

    def forward(
        self,
        x: torch.Tensor,
        pert: torch.Tensor,
        ctx: torch.Tensor | None,
        beta: float,
        profiles: Profiles,
        generator: torch.Generator | None = None,
        groups: tuple[torch.Tensor, torch.Tensor] | None = None,
        mmd_weight: float = 0.0,
    ) -> LossParts:
        """Negative ELBO (recon + beta * KL), one reparameterized z, plus mmd_weight * the condition MMD of z.

        profiles: the context control profiles and each cell's row (see Profiles; the response decoder reads
        them). groups: per-cell (context id, condition id; 0 = control) for the MMD term (skipped when None).
        """
        mu, logvar = self.encode(x, pert, ctx)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = -self.log_likelihood(x, self.decode(z, pert, ctx, profiles)).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        mmd = condition_mmd(z, *groups) if groups is not None and mmd_weight > 0 else z.new_zeros(())
        return LossParts(loss=recon + beta * kl + mmd_weight * mmd, recon=recon, kl=kl, mmd=mmd)

    def train_flops_per_cell(self) -> int:
        """Dense matmul FLOPs per cell for one training step (forward + backward), counted per Linear layer.

        Forward 2*in*out; backward 2*in*out for the weight gradient plus 2*in*out for the input gradient,
        except where the input is data (the encoder's first layer on x, the covariate projections). The
        response decoder's per-context responses (contexts x perturbations x genes, tiny) and their product with
        the cells' (context, perturbation) weights (cells x genes x contexts*perturbations) are left out.
        """
        data_inputs = {id(self.encoder.blocks[0].linear)}
        for block in [*self.encoder.blocks, *self.decoder.mlp.blocks]:
            if block.cov is not None:
                data_inputs.add(id(block.cov))
        total = 0
        for module in self.modules():
            if isinstance(module, nn.Linear):
                total += (4 if id(module) in data_inputs else 6) * module.in_features * module.out_features
        return total
