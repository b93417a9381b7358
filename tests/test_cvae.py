"""Tests of the conditional VAE predictor: loss terms, recovery of a known shift, modes, determinism, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
import torch
from anndata import AnnData

from benchmark.core.errors import NotApplicable
from benchmark.core.task import Task, dense, lognormalize, mean_profile
from benchmark.data.synthetic import make_synthetic, true_lfc
from predictors.cvae import CVAEPredictor
from predictors.cvae.generate import nb_quantile_transfer, sample_nb
from predictors.cvae.module import (
    CVAEModule,
    MLPDecoder,
    PseudobulkStart,
    ResponseDecoder,
    condition_mmd,
    gaussian_log_prob,
    kl_standard_normal,
    mmd_rbf,
    nb_log_prob,
)
from predictors.registry import make_predictor

COUNTS_TASK = Task("condition", "control", "cell_type", expression="counts")
LOGNORM_TASK = Task("condition", "control", "cell_type", expression="lognorm")
SMALL = dict(
    n_latent=8,
    n_hidden=64,
    batch_size=128,
    lr=3e-3,
    max_epochs=150,
    patience=8,
    kl_warmup_steps=50,
    mean_response="cvae",
    spread="model",
)
"""A small, fast network for 100-gene synthetic data, alone (no baseline anchoring: tests/test_cvae_anchor.py)."""


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def synth() -> AnnData:
    """NB counts with a deep library (log-normalized shifts then follow the true log-fold changes) and a combo."""
    return make_synthetic(
        n_genes=100,
        n_contexts=3,
        n_perturbations=2,
        cells_per_group=80,
        seed=3,
        n_combos=1,
        library_size=5000,
    )


def _without(adata: AnnData, label: str) -> AnnData:
    """The dataset minus every cell of one perturbation label."""
    return adata[adata.obs["condition"].astype(str) != label].copy()


@pytest.fixture(scope="module")
def fitted_nb(synth: AnnData) -> CVAEPredictor:
    """A CVAE (NB likelihood) trained on the synthetic counts, without the combination P0+P1."""
    return CVAEPredictor(**SMALL, random_state=0).fit(_without(synth, "P0+P1"), COUNTS_TASK)


def _controls(adata: AnnData, context: str) -> AnnData:
    obs = adata.obs
    return adata[(obs["cell_type"].astype(str) == context) & (obs["condition"].astype(str) == "control")]


def _delta_vs_truth(model: CVAEPredictor, adata: AnnData, context: str, pert: str) -> float:
    """Pearson r of the predicted log-normalized shift against the true log-fold change."""
    control = _controls(adata, context)
    pred = model.predict(control, pert, context)
    delta = mean_profile(pred.X) - mean_profile(model.task_.lognorm(control))
    return float(np.corrcoef(delta, true_lfc(adata, context, pert))[0, 1])


# ------------------------------------------------------------------------------------------------ loss terms


def test_kl_matches_closed_form_of_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    assert torch.all(kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_nb_log_prob_matches_scipy_nbinom() -> None:
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.05, 50.0, size=200)
    theta = rng.uniform(0.1, 20.0, size=200)
    x = rng.poisson(mu).astype(float)
    # torch NB(mean mu, inverse dispersion theta) == scipy nbinom(n=theta, p=theta / (theta + mu))
    expected = scipy.stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    got = nb_log_prob(*(torch.tensor(a, dtype=torch.float64) for a in (x, mu, theta))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_gaussian_log_prob_matches_scipy_norm() -> None:
    rng = np.random.default_rng(1)
    x, mean, log_sigma = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=4)
    expected = scipy.stats.norm.logpdf(x, mean, np.exp(log_sigma)).sum(axis=-1)
    got = gaussian_log_prob(*(torch.tensor(a) for a in (x, mean, log_sigma))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_gaussian_log_prob_gradients_match_autograd_of_the_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    mean = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    log_sigma = (0.3 * torch.randn(6, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: gaussian_log_prob(x, m, s), (mean, log_sigma))
    weights = torch.randn(5, generator=gen, dtype=torch.float64)  # any downstream use of the per-cell values
    ours = torch.autograd.grad((gaussian_log_prob(x, mean, log_sigma) * weights).sum(), (mean, log_sigma))
    formula = torch.distributions.Normal(mean, log_sigma.exp()).log_prob(x).sum(dim=-1)
    reference = torch.autograd.grad((formula * weights).sum(), (mean, log_sigma))
    for got, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, expected)


def test_nb_sampler_has_the_nb_mean_and_variance() -> None:
    mu, theta = torch.full((20000, 2), 8.0), torch.tensor([0.5, 5.0])
    draws = sample_nb(mu, theta, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(draws.mean(axis=0), [8.0, 8.0], rtol=0.05)
    np.testing.assert_allclose(draws.var(axis=0), 8.0 + 64.0 / theta.numpy(), rtol=0.1)


def test_nb_quantile_transfer_keeps_counts_under_the_same_law_and_maps_one_nb_onto_another() -> None:
    gen = torch.Generator().manual_seed(0)
    theta = torch.tensor([0.5, 5.0])
    same = sample_nb(torch.full((5000, 2), 4.0), theta, gen)
    np.testing.assert_array_equal(
        nb_quantile_transfer(same, torch.full_like(same, 4.0), torch.full_like(same, 4.0), theta, gen), same
    )
    moved = nb_quantile_transfer(
        same, torch.full_like(same, 4.0), torch.full_like(same, 12.0), theta, gen
    ).numpy()
    np.testing.assert_allclose(moved.mean(axis=0), [12.0, 12.0], rtol=0.08)
    np.testing.assert_allclose(moved.var(axis=0), 12.0 + 144.0 / theta.numpy(), rtol=0.15)
    assert np.all(moved >= same.numpy())  # the same quantile of a law with a larger mean


def test_response_decoder_adds_each_perturbations_response_to_the_cell_and_its_context() -> None:
    torch.manual_seed(0)
    dec = ResponseDecoder(n_latent=3, n_pert=2, n_ctx=2, n_hidden=8, n_layers=1, n_genes=5, rank=2)
    for param in (dec.offset, dec.gain, dec.loadings, dec.center):
        param.data.normal_()
    z, pert, ctx = (
        torch.randn(4, 3),
        torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]]),
        torch.eye(2)[[0, 1, 0, 1]],
    )
    table, index = torch.randn(3, 5), torch.tensor([2, 0, 1, 2])  # each cell's context profile row
    m = dec.out(dec.mlp(z, ctx))
    expected = m.clone()
    for i in range(4):
        k = table[index[i]] - dec.center
        for p in range(2):  # r_p = a_p + b_p * (m - mu) + U_p A (k - mu); combinations add
            response = dec.offset[p] + dec.gain[p] * (m[i] - dec.center) + dec.loadings[p] @ (dec.axes @ k)
            expected[i] += pert[i, p] * response
    torch.testing.assert_close(dec(z, pert, ctx, (table, index)), expected)
    assert torch.equal(dec(z, torch.zeros_like(pert), ctx, (table, index)), m)  # control: m(z, context)


@pytest.mark.parametrize("decoder", ["response", "mlp"])
@pytest.mark.parametrize("gain", [True, False])
def test_training_flops_counted_by_each_decoder_match_torchs_flop_counter(decoder: str, gain: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cells, genes, n_pert, n_ctx, k = 64, 7, 3, 4, 5
    module = CVAEModule(genes, n_pert, n_ctx, n_latent=3, n_hidden=8, n_layers=2, decoder=decoder, gain=gain)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cells, genes, generator=gen)
    pert = torch.eye(n_pert)[torch.randint(0, n_pert, (cells,), generator=gen)]
    ctx = torch.eye(n_ctx)[torch.randint(0, n_ctx, (cells,), generator=gen)]
    profiles = (torch.randn(k, genes, generator=gen), torch.randint(0, k, (cells,), generator=gen))
    with FlopCounterMode(display=False) as counter:
        module(x, pert, ctx, 1.0, profiles).loss.backward()
    per_step = 6 * k * n_pert * genes if decoder == "response" else 0  # the responses, once per step
    assert 0 <= counter.get_total_flops() - cells * module.train_flops_per_cell(k) <= per_step


def test_decoders_own_their_start_the_mlp_reads_no_pseudobulk() -> None:
    baseline = torch.arange(5.0)
    start = PseudobulkStart(shifts=torch.ones(2, 5))
    mlp = MLPDecoder(n_latent=3, n_pert=2, n_ctx=1, n_hidden=8, n_layers=1, n_genes=5)
    mlp.initialize(baseline, start)  # the start is ignored: no parameter can hold it
    assert torch.equal(mlp.out.bias, baseline) and not MLPDecoder.reads_profiles
    response = ResponseDecoder(n_latent=3, n_pert=2, n_ctx=1, n_hidden=8, n_layers=1, n_genes=5)
    response.initialize(baseline, start)
    assert ResponseDecoder.reads_profiles
    assert torch.equal(response.center, baseline) and torch.equal(response.offset, start.shifts)


def test_thread_heuristic_asks_the_decoder_for_its_cost(synth: AnnData, monkeypatch) -> None:
    model = CVAEPredictor(**{**SMALL, "max_epochs": 1, "n_hidden": 8}).fit(synth, COUNTS_TASK)
    assert model._n_threads() == 1  # a small network: one thread
    decoder = type(model.module_.decoder)
    monkeypatch.setattr(decoder, "train_flops_per_cell", lambda self, n_profiles=1: 10**9)
    assert model._n_threads() == 2  # a decoder that says it is costly gets the fixed count, not the machine's


def test_mmd_is_zero_for_one_sample_and_grows_with_a_shift() -> None:
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    assert float(mmd_rbf(z, z)) == pytest.approx(0.0, abs=1e-6)
    shifts = [float(mmd_rbf(z[:20], z[20:] + d)) for d in (0.0, 0.5, 2.0)]
    assert shifts[0] < shifts[1] < shifts[2]


def test_condition_mmd_compares_perturbed_with_control_cells_of_the_same_context_only() -> None:
    z = torch.randn(80, 2, generator=torch.Generator().manual_seed(1))
    context = torch.tensor([0] * 40 + [1] * 40)
    condition = torch.tensor(([0] * 20 + [1] * 20) * 2)
    aligned = float(condition_mmd(z, context, condition))
    shifted = z + 3.0 * (condition == 1).unsqueeze(1)
    assert float(condition_mmd(shifted, context, condition)) > aligned + 0.5
    between_contexts = z + 3.0 * (context == 1).unsqueeze(1)  # contexts differ, conditions do not
    assert float(condition_mmd(between_contexts, context, condition)) == pytest.approx(aligned, abs=1e-5)


# ------------------------------------------------------------------------------------------------ learning


def test_trained_model_recovers_the_true_shift_and_a_broken_one_does_not(
    synth: AnnData, fitted_nb: CVAEPredictor
) -> None:
    bound = 0.8
    r_trained = min(_delta_vs_truth(fitted_nb, synth, c, "P0") for c in ("C0", "C1"))
    shuffled = synth.copy()  # broken: every cell's perturbation label is a random one
    shuffled.obs["condition"] = np.random.default_rng(0).permutation(shuffled.obs["condition"].to_numpy())
    broken = CVAEPredictor(**SMALL, random_state=0).fit(shuffled, COUNTS_TASK)
    r_broken = _delta_vs_truth(broken, synth, "C0", "P0")
    assert r_trained > bound, r_trained
    assert r_broken < bound, r_broken


def test_response_offsets_start_at_the_context_averaged_mean_shift_of_each_single(synth: AnnData) -> None:
    obs = synth.obs
    keep = ~((obs["condition"].astype(str) == "P0") & (obs["cell_type"].astype(str) == "C1"))
    data = synth[keep.to_numpy()]  # P0 is missing from C1, whose controls stay: pooling would be confounded
    lognorm = AnnData(X=lognormalize(data.X), obs=data.obs.copy(), var=data.var.copy())
    # one epoch at a negligible learning rate: the decoder as initialised (max_epochs must be >= 1)
    start = {**SMALL, "max_epochs": 1, "lr": 1e-12, "val_fraction": 0.0}
    model = CVAEPredictor(**start).fit(lognorm, LOGNORM_TASK)
    labels = lognorm.obs["condition"].astype(str).to_numpy()
    contexts = lognorm.obs["cell_type"].astype(str).to_numpy()
    x = dense(lognorm.X)

    def shift(gene: str, context: str) -> np.ndarray:
        in_context = contexts == context
        return x[(labels == gene) & in_context].mean(axis=0) - x[(labels == "control") & in_context].mean(
            axis=0
        )

    def control(context: str) -> np.ndarray:
        return x[(labels == "control") & (contexts == context)].mean(axis=0)

    # averaged over the gene's contexts the response starts at its mean shift (P1's read-out starts at a
    # regression through those contexts, which averages out; P0, in two contexts only, starts constant)
    for gene, seen_in in (("P0", ("C0", "C2")), ("P1", ("C0", "C1", "C2"))):
        expected = np.mean([shift(gene, c) for c in seen_in], axis=0)
        profiles = torch.from_numpy(np.array([control(c) for c in seen_in], dtype=np.float32))
        with torch.no_grad():
            got = model.module_.decoder.responses(profiles)[:, model.perturbation_genes_.index(gene)]
        np.testing.assert_allclose(got.mean(dim=0).numpy(), expected, atol=1e-5)
    p0 = model.perturbation_genes_.index("P0")
    assert (
        model.module_.decoder.loadings[p0].abs().max() < 1e-9
    )  # started at zero (moved by lr = 1e-12 at most)


def test_combination_is_predicted_from_its_singles(synth: AnnData, fitted_nb: CVAEPredictor) -> None:
    assert "P0+P1" not in set(fitted_nb.task_.perturbations(_without(synth, "P0+P1")))
    assert _delta_vs_truth(fitted_nb, synth, "C0", "P0+P1") > 0.7


def test_gaussian_likelihood_on_lognormalized_data(synth: AnnData) -> None:
    lognorm = AnnData(X=lognormalize(synth.X), obs=synth.obs.copy(), var=synth.var.copy(), uns=synth.uns)
    model = CVAEPredictor(**SMALL, random_state=0).fit(lognorm, LOGNORM_TASK)
    assert model.likelihood_ == "gaussian"
    assert _delta_vs_truth(model, lognorm, "C1", "P1") > 0.8


def test_history_has_one_entry_per_epoch_and_training_stopped_early(fitted_nb: CVAEPredictor) -> None:
    history = fitted_nb.history_
    assert [h["epoch"] for h in history] == list(range(len(history)))
    assert {"epoch", "train_loss", "val_loss", "recon", "kl", "beta"} <= set(history[0])
    assert history[0]["beta"] < history[-1]["beta"] == 1.0  # KL warm-up
    assert len(history) < SMALL["max_epochs"]  # early stopping on the validation loss
    assert history[-1]["val_loss"] < history[0]["val_loss"]


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("mode", ["A", "B"])
def test_modes_return_one_cell_per_control_in_gene_order(
    synth: AnnData, fitted_nb: CVAEPredictor, mode: str
) -> None:
    fitted_nb.set_params(mode=mode)
    control = _controls(synth, "C2")
    pred = fitted_nb.predict(control, "P1", "C2")
    fitted_nb.set_params(mode="B")
    assert isinstance(pred, AnnData)
    assert pred.shape == control.shape
    assert list(pred.var_names) == list(control.var_names)
    assert np.all(np.isfinite(pred.X)) and pred.X.min() >= 0.0  # NB draws, log-normalized


@pytest.mark.parametrize("generate", ["auto", "counterfactual", "sample", "mean"])
def test_generate_options_give_lognormalized_values(
    synth: AnnData, fitted_nb: CVAEPredictor, generate: str
) -> None:
    fitted_nb.set_params(generate=generate)
    pred = fitted_nb.predict(_controls(synth, "C0"), "P0", "C0")
    fitted_nb.set_params(generate="auto")
    sums = np.expm1(np.asarray(pred.X, dtype=np.float64)).sum(axis=1)  # inverts log1p(x / lib * 1e4)
    np.testing.assert_allclose(sums, 1e4, rtol=1e-3)


@pytest.mark.parametrize("task", [COUNTS_TASK, LOGNORM_TASK])
def test_counterfactual_returns_the_control_cells_when_the_response_is_zero(
    synth: AnnData, task: Task
) -> None:
    data = synth if task is COUNTS_TASK else AnnData(X=lognormalize(synth.X), obs=synth.obs, var=synth.var)
    model = CVAEPredictor(**{**SMALL, "max_epochs": 2}).fit(data, task)
    for param in (
        model.module_.decoder.offset,
        model.module_.decoder.gain,
        model.module_.decoder.loadings,
    ):
        param.data.zero_()  # decode(z, perturbation) == decode(z, control): no change to apply
    control = _controls(data, "C1")
    pred = model.predict(control, "P0", "C1")
    np.testing.assert_allclose(pred.X, dense(task.lognorm(control)), atol=1e-5)
    with pytest.raises(ValueError, match="needs mode='B'"):  # rejected when set, before any prediction
        model.set_params(mode="A", generate="counterfactual")
    assert (model.mode, model.generate) == ("B", "auto")


def test_mode_b_response_reads_the_given_control_cells_profile(synth: AnnData) -> None:
    data = AnnData(X=lognormalize(synth.X), obs=synth.obs.copy(), var=synth.var.copy())
    model = CVAEPredictor(**{**SMALL, "max_epochs": 2}).fit(data, LOGNORM_TASK)
    decoder = model.module_.decoder
    for param in (decoder.offset, decoder.gain):
        param.data.zero_()
    decoder.loadings.data.normal_()  # the response is now the read-out of the context profile only
    p0 = model.perturbation_genes_.index("P0")
    shifts = []
    for context in ("C0", "C1"):
        control = _controls(data, context)
        cells = dense(control.X)
        profile = torch.from_numpy(cells.mean(axis=0, keepdims=True).astype(np.float32))
        with torch.no_grad():
            expected = decoder.responses(profile)[0, p0].numpy()
        shift = model.predict(control, "P0", context).X - cells  # Gaussian counterfactual: x + r
        np.testing.assert_allclose(shift, np.broadcast_to(expected, shift.shape), atol=1e-4)
        shifts.append(expected)
    assert np.abs(shifts[0] - shifts[1]).max() > 1e-2  # different control profiles, different responses


def test_readout_starts_at_the_pseudobulk_regression_along_the_controls_fixed_top_axis(
    synth: AnnData,
) -> None:
    data = AnnData(X=lognormalize(synth.X), obs=synth.obs.copy(), var=synth.var.copy())
    contexts = sorted(set(data.obs["cell_type"].astype(str)))  # C0, C1, C2: P0 is seen in all three
    x, obs = dense(data.X), data.obs.astype(str)
    group = lambda t, p: x[((obs["cell_type"] == t) & (obs["condition"] == p)).to_numpy()].mean(axis=0)  # noqa: E731
    controls = np.array([group(t, "control") for t in contexts])
    shifts = np.array([group(t, "P0") - controls[i] for i, t in enumerate(contexts)])
    axis = np.linalg.svd(controls - controls.mean(axis=0))[2][0]
    scores = controls @ axis - (controls @ axis).mean()
    # readout_penalty 0.3 x 3 contexts x the variance of every context's score (here the same three contexts)
    slope = scores @ (shifts - shifts.mean(axis=0)) / (scores @ scores * 1.3)
    expected = shifts.mean(axis=0) + np.outer(scores, slope)  # P0's start in each context

    # lr 1e-12 (lr must be > 0): every parameter stays at its start (val_fraction 0: the start uses all cells)
    start = CVAEPredictor(**{**SMALL, "max_epochs": 1, "lr": 1e-12, "val_fraction": 0.0}).fit(
        data, LOGNORM_TASK
    )
    decoder, p0 = start.module_.decoder, start.perturbation_genes_.index("P0")
    table = torch.from_numpy(controls.astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(decoder.responses(table)[:, p0].numpy(), expected, atol=2e-4)

    # training moves the loadings but never the axis: it is a buffer, still the controls' top principal axis
    trained = CVAEPredictor(**{**SMALL, "max_epochs": 3, "val_fraction": 0.0}).fit(data, LOGNORM_TASK)
    assert "decoder.axes" not in dict(trained.module_.named_parameters())
    axes = trained.module_.decoder.axes.numpy()
    assert axes.shape == (1, synth.n_vars) and abs(float(axes[0] @ axis)) == pytest.approx(1.0, abs=1e-4)
    assert not torch.equal(trained.module_.decoder.loadings, decoder.loadings)


def test_counterfactual_keeps_each_cells_own_deviation(synth: AnnData, fitted_nb: CVAEPredictor) -> None:
    control = _controls(synth, "C0")
    cells = dense(lognormalize(control.X))
    shifted = {g: fitted_nb.set_params(generate=g).predict(control, "P0", "C0").X for g in ("auto", "sample")}
    fitted_nb.set_params(generate="auto")
    # distance of each predicted cell from its own control cell once the mean shift is taken out
    spread = {
        g: np.median(np.abs(x - x.mean(axis=0) - (cells - cells.mean(axis=0)))) for g, x in shifted.items()
    }
    assert spread["auto"] < spread["sample"]  # cells stay close to their own control cell, up to the shift


def test_not_applicable_for_unseen_gene_or_context(synth: AnnData, fitted_nb: CVAEPredictor) -> None:
    control = _controls(synth, "C0")
    with pytest.raises(NotApplicable, match="P7"):
        fitted_nb.predict(control, "P0+P7", "C0")
    with pytest.raises(NotApplicable, match="C9"):
        fitted_nb.predict(control, "P0", "C9")
    no_context = CVAEPredictor(**{**SMALL, "max_epochs": 1, "use_context": False}).fit(synth, COUNTS_TASK)
    assert no_context.predict(control, "P0", "C9").shape == control.shape


def test_check_applicable_declines_before_fitting_what_predict_would_decline(synth: AnnData) -> None:
    model = CVAEPredictor(**SMALL)
    train = _without(_without(synth, "P1"), "P0+P1")  # no cell carries gene P1
    with pytest.raises(NotApplicable, match="P1"):
        model.check_applicable(train, COUNTS_TASK, "P0+P1", "C0")
    model.check_applicable(synth, COUNTS_TASK, "P0+P1", "C0")  # both genes seen: no objection
    with pytest.raises(NotApplicable, match="C9"):
        model.check_applicable(synth, COUNTS_TASK, "P0", "C9")
    model.set_params(use_context=False).check_applicable(synth, COUNTS_TASK, "P0", "C9")
    assert not hasattr(model, "module_")  # nothing was fitted


def test_same_seed_gives_identical_predictions_and_another_seed_does_not(synth: AnnData) -> None:
    params = {**SMALL, "max_epochs": 6}
    control = _controls(synth, "C1")
    preds = [
        CVAEPredictor(**params, random_state=seed).fit(synth, COUNTS_TASK).predict(control, "P1", "C1").X
        for seed in (5, 5, 6)
    ]
    np.testing.assert_array_equal(preds[0], preds[1])
    assert not np.array_equal(preds[0], preds[2])


def test_save_load_round_trip_keeps_predictions_and_own_mode(
    tmp_path, synth: AnnData, fitted_nb: CVAEPredictor
) -> None:
    fitted_nb.save(tmp_path)
    control = _controls(synth, "C1")
    for mode in ("A", "B"):
        fitted_nb.set_params(mode=mode)
        loaded = CVAEPredictor(mode=mode, max_epochs=1).load_fitted(tmp_path)
        assert loaded.mode == mode and loaded.fit_params() == fitted_nb.fit_params()
        np.testing.assert_array_equal(
            loaded.predict(control, "P1", "C1").X, fitted_nb.predict(control, "P1", "C1").X
        )
        assert loaded.history_ == fitted_nb.history_
    fitted_nb.set_params(mode="B")


def test_fit_params_leave_out_generation_settings() -> None:
    model = CVAEPredictor(mode="A", generate="mean", verbose=True, device="cpu")
    assert CVAEPredictor.cacheable
    assert not {"mode", "generate", "verbose", "device"} & set(model.fit_params())
    assert model.fit_params() == CVAEPredictor(mode="B").fit_params()
    assert {"random_state", "n_latent", "likelihood", "use_context"} <= set(model.fit_params())


def test_nb_likelihood_on_lognormalized_data_is_an_error(synth: AnnData) -> None:
    with pytest.raises(ValueError, match="count"):
        CVAEPredictor(likelihood="nb").fit(synth, LOGNORM_TASK)


def test_sparse_input_is_not_densified_whole(synth: AnnData, monkeypatch) -> None:
    seen: list[int] = []
    original = sp.csr_matrix.toarray

    def spy(self, *args, **kwargs):
        seen.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    CVAEPredictor(**{**SMALL, "max_epochs": 2, "batch_size": 64}).fit(synth, COUNTS_TASK)
    assert seen and max(seen) <= 64 < synth.n_obs


def test_classic_mlp_decoder_and_no_mmd_also_train_and_predict(synth: AnnData) -> None:
    model = CVAEPredictor(**{**SMALL, "max_epochs": 3}, decoder="mlp", mmd_weight=0.0).fit(synth, COUNTS_TASK)
    control = _controls(synth, "C1")
    assert model.predict(control, "P0+P1", "C1").shape == control.shape
    assert all(h["mmd"] == 0.0 for h in model.history_)


def test_registered_plain_cvae_uses_the_mlp_decoder_without_pseudobulk_starts(synth: AnnData) -> None:
    _, model = make_predictor("cvae_mlp_modeB", **{**SMALL, "max_epochs": 2})
    assert model.get_params()["decoder"] == "mlp" and model.mode == "B"
    model.fit(_without(synth, "P0+P1"), COUNTS_TASK)
    decoder = model.module_.decoder
    assert isinstance(decoder, MLPDecoder)
    assert not any(
        name.startswith(("offset", "gain", "loadings", "axes")) for name, _ in decoder.named_parameters()
    )
    control = _controls(synth, "C1")
    pred = model.predict(control, "P0+P1", "C1")
    assert pred.shape == control.shape and np.isfinite(pred.X).all()
    # Mode A and Mode B of the plain CVAE share one fit (same cache key), as the response-decoder pair does
    assert (
        make_predictor("cvae_mlp_modeA")[1].fit_params() == make_predictor("cvae_mlp_modeB")[1].fit_params()
    )


def test_max_steps_caps_training_at_exactly_that_many_optimizer_steps(synth: AnnData) -> None:
    params = {**SMALL, "max_epochs": 50, "patience": 50, "kl_warmup_steps": 1, "n_hidden": 16}
    model = CVAEPredictor(**params, max_steps=15).fit(synth, COUNTS_TASK)
    per_epoch = math.ceil((synth.n_obs - round(0.1 * synth.n_obs)) / params["batch_size"])  # 7 batches
    stats = model.train_stats_
    assert stats["steps"] == stats["step_budget"] == 15 and stats["budget_spent"]
    assert len(model.history_) == math.ceil(15 / per_epoch) == 3  # 7 + 7 + 1: the last epoch cut short
    free = CVAEPredictor(**params, max_steps=None).fit(synth, COUNTS_TASK)
    assert free.train_stats_["steps"] == 50 * per_epoch and not free.train_stats_["budget_spent"]
    assert CVAEPredictor()._step_budget(3400) == 1500  # the default: 300 epochs x 12 batches would be 3,600


def test_kl_warmup_is_counted_in_steps_and_early_stopping_waits_for_it(synth: AnnData) -> None:
    per_epoch = math.ceil((synth.n_obs - round(0.1 * synth.n_obs)) / SMALL["batch_size"])  # 7 batches
    params = {**SMALL, "max_epochs": 6, "patience": 0, "n_hidden": 16, "beta": 2.0}
    params.pop("kl_warmup_steps")
    model = CVAEPredictor(**params, kl_warmup_steps=3 * per_epoch).fit(synth, COUNTS_TASK)
    betas = [h["beta"] for h in model.history_]
    # beta at each epoch's last step: a linear ramp over 21 steps, then the full beta
    assert betas[:3] == pytest.approx([2.0 * (e + 1) * per_epoch / (3 * per_epoch) for e in range(3)])
    assert len(betas) < 4 or betas[3] == 2.0
    # a warm-up longer than training: no epoch counts, so patience 0 never stops it and the last weights stay
    long = CVAEPredictor(**params, kl_warmup_steps=10 * per_epoch).fit(synth, COUNTS_TASK)
    assert len(long.history_) == 6 and not long.train_stats_["stopped_early"]
    assert long.best_epoch_ == 5


def test_validation_cells_are_capped_and_the_rest_train(synth: AnnData, monkeypatch) -> None:
    import predictors.cvae.model as cvae_model

    monkeypatch.setattr(cvae_model, "_MAX_VAL_CELLS", 20)
    model = CVAEPredictor(**{**SMALL, "max_epochs": 1}).fit(synth, COUNTS_TASK)
    assert round(0.1 * synth.n_obs) > 20
    assert model.train_stats_["val_cells"] == 20
    assert model.train_stats_["train_cells"] == synth.n_obs - 20


def test_fits_a_view_of_a_backed_file_as_it_fits_the_same_cells_in_memory(synth: AnnData, tmp_path) -> None:
    """Large files open backed and a split's training cells are a view of them, which anndata cannot index again."""
    import anndata as ad
    import scipy.sparse as sparse

    on_disk = synth.copy()
    on_disk.X = sparse.csr_matrix(on_disk.X)
    on_disk.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    rows = np.flatnonzero(synth.obs["condition"].astype(str) != "P0")
    params = {**SMALL, "max_steps": 20, "n_hidden": 16}
    from_disk = CVAEPredictor(**params).fit(backed[rows], COUNTS_TASK)
    in_memory = CVAEPredictor(**params).fit(on_disk[rows].copy(), COUNTS_TASK)
    assert from_disk.history_ == in_memory.history_


def test_the_fit_does_not_follow_the_machines_thread_count(synth: AnnData, monkeypatch) -> None:
    """Float sums depend on the thread count: the predictor fixes its own (recorded as n_threads_), so a caller
    that changed torch's global count (a sweep worker, another core count) gets the same fit."""
    import predictors.cvae.model as model_module

    monkeypatch.setattr(model_module, "_SMALL_STEP_FLOPS", 0)  # a "large" network: not the one-thread rule
    params = {**SMALL, "max_epochs": 3}
    control = _controls(synth, "C1")
    before = torch.get_num_threads()
    preds, threads = [], []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            model = CVAEPredictor(**params, random_state=5).fit(synth, COUNTS_TASK)
            preds.append(model.predict(control, "P1", "C1").X)
            threads.append(model.n_threads_)
            assert torch.get_num_threads() == n  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert threads == [model_module._CPU_THREADS] * 2
    np.testing.assert_array_equal(preds[0], preds[1])
    explicit = CVAEPredictor(**params, n_threads=1, random_state=5).fit(synth, COUNTS_TASK)
    assert explicit.n_threads_ == 1


def test_a_fit_with_dropout_does_not_depend_on_what_ran_before_it(synth: AnnData) -> None:
    """Dropout draws from torch's global generator; the fit seeds it, so the same seed gives the same fit whatever
    the process did before (another split's fit, a model-cache hit that skipped one)."""
    params = {**SMALL, "max_epochs": 3, "dropout": 0.3}
    control = _controls(synth, "C1")
    preds = []
    for draws in (0, 1000):
        torch.rand(draws)  # what an earlier fit would have consumed
        preds.append(
            CVAEPredictor(**params, random_state=5).fit(synth, COUNTS_TASK).predict(control, "P1", "C1").X
        )
    np.testing.assert_array_equal(preds[0], preds[1])
