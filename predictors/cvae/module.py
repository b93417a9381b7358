"""The conditional VAE network and its loss (the scvi-tools style "module": tensors in, tensors out)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

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


def _linear_train_flops(layer: nn.Linear, input_is_data: bool) -> int:
    """Dense matmul FLOPs per cell of one training step through a Linear layer: forward 2*in*out, backward
    2*in*out for the weight gradient plus, unless its input is data (no gradient), 2*in*out for the input's."""
    return (4 if input_is_data else 6) * layer.in_features * layer.out_features


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

    def train_flops_per_cell(self, input_is_data: bool) -> int:
        """Dense matmul FLOPs per cell of one training step (the covariates are data: no input gradient)."""
        total = 0
        for i, block in enumerate(self.blocks):
            total += _linear_train_flops(block.linear, input_is_data and i == 0)
            if block.cov is not None:
                total += _linear_train_flops(block.cov, True)
        return total


@dataclass
class PseudobulkStart:
    """A start for a decoder's perturbation responses, estimated from the training cells' pseudobulks.

    shifts: (perturbation genes x genes) each single perturbation's mean shift on the decoder's output scale.
    readout: (axes, slopes, anchors) or None: up to rank x genes fixed read-out axes, perturbations x genes
    slopes of each shift on the context control profile's score along axes[0], and one anchor score per
    perturbation (see ResponseDecoder.initialize).
    """

    shifts: torch.Tensor
    readout: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


class Decoder(nn.Module):
    """What CVAEModule asks of a decoder: f(z, c) on the output scale, its own start and its cost.

    f(z, c) is the mean of log-normalized x (Gaussian) or the NB logits (before the softmax). A subclass sets
    `out`, the final Linear layer whose bias holds the per-gene baseline, and `reads_profiles`: whether forward
    reads the context control profiles (and initialize a PseudobulkStart); when False the model computes
    neither and passes profiles=None.
    """

    reads_profiles: ClassVar[bool] = False
    out: nn.Linear

    def forward(
        self, z: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None, profiles: Profiles | None
    ) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def initialize(self, baseline: torch.Tensor, start: PseudobulkStart | None) -> None:
        """Start the output at the data's per-gene baseline (decoder scale); a decoder that reads no
        pseudobulk start ignores `start`."""
        self.out.bias.copy_(baseline)

    def train_flops_per_cell(self, n_profiles: int) -> int:
        """Dense matmul FLOPs per cell of one training step (forward + backward); n_profiles: the rows of the
        context profile table it is trained with."""
        raise NotImplementedError


class MLPDecoder(Decoder):
    """The classic CVAE decoder: f(z, c) = V h, h = MLP(z) with perturbation and context injected in every layer.

    Its only start is the output bias at the per-gene baseline: no pseudobulk start, no context profiles.
    """

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

    def train_flops_per_cell(self, n_profiles: int = 0) -> int:
        """The MLP on z (covariate projections: data inputs) and the output layer."""
        return self.mlp.train_flops_per_cell(input_is_data=False) + _linear_train_flops(self.out, False)


class ResponseDecoder(Decoder):
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
    control profiles (initialize, from the PseudobulkStart's readout). A data set has only a handful of
    contexts, and a learned axis can separate them in any direction, so what it predicts for a new context was
    erratic. Without that start they are random unit directions (e.g. one
    context: k is constant). Gain and loadings start at zero.
    """

    reads_profiles = True

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

    @torch.no_grad()
    def initialize(self, baseline: torch.Tensor, start: PseudobulkStart | None) -> None:
        """Output bias and centre mu at the baseline; offsets at the start's shifts; read-out axes and the
        loadings on axes[0] at its regression, so that p's response in context k starts at
        shifts_p + slopes_p * (axes[0] . k - anchors_p).

        Why a start: Adam moves a parameter by about lr per step, so a zero start needs hundreds of steps to
        reach a shift of a few log units, and early stopping can end training first.
        """
        super().initialize(baseline, start)
        self.center.copy_(self.out.bias)
        if start is None:
            return
        self.offset.copy_(start.shifts)
        if start.readout is not None and self.rank > 0:
            axes, slopes, anchors = start.readout
            self.axes[: len(axes)] = axes[: self.rank]
            self.loadings[:, :, 0] = slopes
            # the decoder reads axes . (k - center): the constant part goes into the offsets
            self.offset += slopes * (axes[0] @ self.center - anchors)[:, None]

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
        self, z: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None, profiles: Profiles | None
    ) -> torch.Tensor:
        """m(z, context) plus each cell's summed responses: one (cells x k*perturbations) @ (k*perturbations x
        genes) product and one multiply-add for the gain, i.e. two passes over cells x genes."""
        if profiles is None:
            raise ValueError("the response decoder needs the context control profiles")
        table, index = profiles
        m = self.out(self.mlp(z, ctx))
        weights = F.one_hot(index, len(table)).to(pert.dtype).unsqueeze(2) * pert.unsqueeze(1)
        out = torch.addmm(m, weights.flatten(1), self.responses(table).flatten(0, 1))
        return torch.addcmul(out, pert @ self.gain, m) if self.use_gain else out

    def train_flops_per_cell(self, n_profiles: int = 1) -> int:
        """The MLP on z, the output layer, the responses' product (forward (cells x n_profiles*perturbations)
        @ (n_profiles*perturbations x genes), backward its gradient with respect to the responses; the weights
        are data) and the gain's (cells x perturbations) @ (perturbations x genes), forward and its gradient.
        The responses themselves (n_profiles x perturbations x genes, once per step, not per cell) are left out.
        """
        n_pert, n_genes = self.offset.shape
        mlp = self.mlp.train_flops_per_cell(input_is_data=False) + _linear_train_flops(self.out, False)
        return mlp + 4 * n_profiles * n_pert * n_genes + (4 * n_pert * n_genes if self.use_gain else 0)


DECODERS: dict[str, type[Decoder]] = {"response": ResponseDecoder, "mlp": MLPDecoder}
"""The decoders by the name the predictor's `decoder` hyperparameter takes."""


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
        if decoder not in DECODERS:
            raise ValueError(
                f"unknown decoder {decoder!r} (expected one of {', '.join(map(repr, DECODERS))})"
            )
        options = {"rank": rank, "gain": gain} if decoder == "response" else {}
        self.decoder: Decoder = DECODERS[decoder](
            n_latent, n_pert, n_ctx, n_hidden, n_layers, n_genes, **options
        )
        # Gaussian: log sigma per gene; NB: log theta per gene.
        self.gene_param = nn.Parameter(torch.zeros(n_genes))

    @torch.no_grad()
    def init_from_data(
        self, mean: torch.Tensor, std: torch.Tensor, start: PseudobulkStart | None = None
    ) -> None:
        """Start at the data's per-gene moments, which saves many epochs of fitting offsets; the decoder takes
        its own start from there (Decoder.initialize: the baseline, and the pseudobulk start if it reads one).

        Gaussian: baseline = mean, log sigma = log std (floored). NB: baseline = log mean fraction, theta by the
        method of moments, mean^2 / (var - mean), clipped to [0.1, 1000].
        """
        if self.likelihood == "nb":
            baseline = torch.log(mean / mean.sum().clamp_min(_EPS) + _EPS)
            excess = (std.pow(2) - mean).clamp_min(_EPS)
            self.gene_param.copy_(torch.log((mean.pow(2) / excess).clamp(0.1, 1000.0)))
        else:
            baseline = mean
            self.gene_param.copy_(torch.log(std.clamp_min(_EPS)).clamp_min(self.log_min_sigma))
        self.decoder.initialize(baseline, start)

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
        self, z: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None, profiles: Profiles | None
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
        profiles: Profiles | None,
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

    def train_flops_per_cell(self, n_profiles: int = 1) -> int:
        """Dense matmul FLOPs per cell for one training step (forward + backward): the encoder's Linear layers
        (its first layer and the covariate projections read data: no input gradient) plus what the decoder
        counts for itself (Decoder.train_flops_per_cell; n_profiles: the rows of its context profile table).
        """
        encoder = self.encoder.train_flops_per_cell(input_is_data=True)
        return (
            encoder + _linear_train_flops(self.enc_out, False) + self.decoder.train_flops_per_cell(n_profiles)
        )
