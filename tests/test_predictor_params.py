"""Every registered predictor checks every hyperparameter on construction and in set_params (one-line ValueError
naming the parameter), get_params/set_params round-trip, and the run seed reaches every predictor that uses
randomness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data.synthetic import make_synthetic
from benchmark.execution.runner import _fresh
from predictors.baselines import LinearCV
from predictors.cvae import CVAEPredictor
from predictors.gaming import InflatedVariance
from predictors.linear import Linear
from predictors.peers.biolord import Biolord
from predictors.registry import BUILTINS, load_class, make_predictor
from predictors.scgen import ScGen

NAN, INF = math.nan, math.inf
INTS_GE_1 = [0, -5, 2.5, 3.0, "4", True, None]
INTS_GE_0 = [-1, 1.5, "2", True, None]
NONNEG_FLOATS = [-0.1, NAN, INF, "1", True, None]
BOOLS = ["false", "True", 0, 1, None]

BAD: dict[type, dict[str, list]] = {
    InflatedVariance: {"factor": [0.0, -1.0, NAN, INF, "2", True, None]},
    Linear: {"penalties": [(), [0.0], (1.0, -1.0), (INF,), (NAN,), 1.0, "1", (True,)]},
    LinearCV: {
        "penalties": [(), (0.0,), (INF,), 1.0, "0.1"],
        "ranks": [(), (0,), (1.5,), 2, (True,)],
        "min_cv_gain": NONNEG_FLOATS,
        "max_cv_folds": INTS_GE_1,
        "random_state": INTS_GE_0,
    },
    CVAEPredictor: {
        "mode": ["C", "b", 1, None],
        "likelihood": ["poisson", "NB", None],
        "n_latent": INTS_GE_1,
        "n_hidden": INTS_GE_1,
        "n_layers": INTS_GE_1,
        "use_context": BOOLS,
        "decoder": ["transformer", None],
        "rank": INTS_GE_0,
        "gain": BOOLS,
        "readout_penalty": NONNEG_FLOATS,
        "beta": NONNEG_FLOATS,
        "mmd_weight": NONNEG_FLOATS,
        "kl_warmup_steps": INTS_GE_0,
        "dropout": [-0.1, 1.0, 1.5, NAN, "0.1"],
        "max_epochs": INTS_GE_1,
        "max_steps": [0, -1, 10.5, "100", True],
        "batch_size": INTS_GE_1,
        "lr": [0.0, -1e-3, NAN, INF, "1e-3", None],
        "weight_decay": NONNEG_FLOATS,
        "val_fraction": [-0.1, 1.0, NAN, "0.1"],
        "patience": INTS_GE_0,
        "generate": ["samples", "", None],
        "mean_response": ["linear", "AUTO", 0.5, None],
        "spread": ["control", "", 1, None],
        "inner_folds": [0, -1, 1.5, "2", True, None],
        "random_state": [-1, 2**40, 0.5, "0", True, None],
        "device": (["cuda", "cuda:0"] if not torch.cuda.is_available() else []) + ["gpu", "", 0, None],
        "n_threads": [0, -1, 1.5, "2", True],
        "verbose": BOOLS,
    },
    ScGen: {
        "n_latent": INTS_GE_1,
        "n_hidden": INTS_GE_1,
        "n_layers": INTS_GE_1,
        "dropout_rate": [-0.1, 1.0, NAN, "0.2", None],
        "max_epochs": INTS_GE_1,
        "batch_size": [1, *INTS_GE_1],
        "early_stopping": BOOLS,
        "early_stopping_patience": INTS_GE_1,
        "random_state": [-1, 2**40, 0.5, "0", True, None],
    },
    Biolord: {
        **{
            name: INTS_GE_1
            for name in (
                "n_latent",
                "decoder_width",
                "decoder_depth",
                "attribute_nn_width",
                "attribute_nn_depth",
                "n_latent_attribute_categorical",
                "step_size_lr",
                "max_epochs",
                "early_stopping_patience",
                "check_val_every_n_epoch",
            )  # fmt: skip
        },
        "n_epochs_warmup": INTS_GE_0,
        "batch_size": [1, *INTS_GE_1],
        **{
            name: NONNEG_FLOATS
            for name in (
                "reconstruction_penalty",
                "unknown_attribute_penalty",
                "unknown_attribute_noise_param",
                "latent_wd",
                "decoder_wd",
                "attribute_nn_wd",
            )  # fmt: skip
        },
        **{
            name: [0.0, *NONNEG_FLOATS]
            for name in ("latent_lr", "decoder_lr", "attribute_nn_lr", "scheduler_final_lr")
        },
        "attribute_dropout_rate": [-0.1, 1.0, NAN, "0.2", None],
        **{
            name: BOOLS for name in ("use_batch_norm", "use_layer_norm", "cosine_scheduler", "early_stopping")
        },
        "gene_likelihood": ["gaussian", 1, None],
        "random_state": [-1, 2**40, 0.5, "0", True, None],
        "timeout": [0.0, -1.0, NAN, INF, "60", True, None],
    },
}
"""Values every predictor must reject, per constructor parameter (each is checked for being listed below)."""

GOOD: dict[type, dict[str, object]] = {
    InflatedVariance: {"factor": 3},
    Linear: {"penalties": [0.5, 5]},
    LinearCV: {"penalties": (0.5,), "ranks": [3], "min_cv_gain": 0, "max_cv_folds": 5, "random_state": 7},
    CVAEPredictor: {
        "mode": "A",
        "likelihood": "nb",
        "n_latent": np.int64(4),
        "use_context": np.bool_(False),
        "decoder": "mlp",
        "rank": 0,
        "beta": 2,
        "dropout": 0.5,
        "max_steps": None,
        "val_fraction": 0.0,
        "patience": 0,
        "generate": "sample",
        "mean_response": "baseline",
        "spread": "perturbed",
        "inner_folds": np.int64(3),
        "random_state": 3,
        "device": "cpu",
        "n_threads": 1,
        "verbose": True,
    },
    ScGen: {
        "n_latent": np.int64(10),
        "dropout_rate": 0,
        "early_stopping": np.bool_(False),
        "random_state": 5,
    },
    Biolord: {"n_latent": np.int64(8), "decoder_lr": 1, "use_batch_norm": np.bool_(True), "timeout": 60},
}
"""Accepted non-default values (ints for floats, numpy scalars, None where allowed)."""

CASES = [
    (cls, name, value) for cls, params in BAD.items() for name, values in params.items() for value in values
]


def _classes() -> set[type]:
    """Every built-in predictor class that has constructor parameters."""
    classes = {load_class(spec.target) for spec in BUILTINS.values()}
    return {cls for cls in classes if cls._param_names()}


def test_every_parameter_of_every_builtin_predictor_has_bad_values_listed():
    assert _classes() == set(BAD)
    for cls in BAD:
        assert set(BAD[cls]) == set(cls._param_names()), cls.__name__


@pytest.mark.parametrize(
    ("cls", "name", "value"), CASES, ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v in CASES]
)
def test_bad_value_is_rejected_on_construction_and_by_set_params(cls, name, value):
    with pytest.raises(ValueError) as info:
        cls(**{name: value})
    message = str(info.value)
    assert message.startswith(f"{name} must be") and "\n" not in message and "got" in message
    model = cls()
    before = model.get_params()
    with pytest.raises(ValueError, match=f"^{name} must be"):
        model.set_params(**{name: value})
    assert repr(model.get_params()) == repr(before)  # a rejected value leaves the predictor unchanged


@pytest.mark.parametrize("cls", list(BAD), ids=lambda c: c.__name__)
def test_defaults_validate_and_params_round_trip(cls):
    default = cls()
    assert repr(cls(**default.get_params()).get_params()) == repr(default.get_params())
    model = cls().set_params(**GOOD[cls])
    for name, value in GOOD[cls].items():
        assert model.get_params()[name] is value
    assert repr(cls(**model.get_params()).get_params()) == repr(model.get_params())


def test_cross_parameter_rule_and_messages_users_see():
    with pytest.raises(ValueError, match="generate='counterfactual' needs mode='B'"):
        CVAEPredictor(mode="A", generate="counterfactual")
    with pytest.raises(ValueError, match=r"^max_epochs must be an integer >= 1, got -5$"):
        CVAEPredictor(max_epochs=-5)
    with pytest.raises(ValueError, match=r"^n_latent must be an integer >= 1, got 0$"):
        CVAEPredictor(n_latent=0)
    with pytest.raises(ValueError, match="use_context must be True or False, got the string 'false'"):
        CVAEPredictor(use_context="false")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device must be 'auto' or 'cpu' \(.*CUDA.*\), got 'cuda'"):
            CVAEPredictor(device="cuda")


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("cvae_modeB", {"max_epochs": -5}, "max_epochs must be an integer >= 1, got -5"),
        ("cvae_modeB", {"max_epochs": "abc"}, "max_epochs must be an integer >= 1, got 'abc'"),
        ("linear", {"penalties": 0.1}, "penalties must be a non-empty tuple"),
        ("linear_cv", {"seed": 3}, "seed"),
        ("mean_shift", {"random_state": 3}, "random_state"),
    ],
)
def test_make_predictor_turns_bad_parameters_into_one_line_errors(name, params, needle):
    with pytest.raises(PertbenchError) as info:
        make_predictor(name, **params)
    assert needle in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ run seed

DETERMINISTIC = {
    "no_change",
    "mean_shift",
    "additive",
    "linear",
    "collapsed_mean",
    "inflated_variance",
    "wrong_context",
}
"""Registered predictors without any randomness: they take no random_state (checked below to be deterministic)."""


def test_the_run_seed_reaches_every_predictor_that_uses_randomness():
    for name in BUILTINS:
        _, template = make_predictor(name)
        params = template.get_params()
        if name in DETERMINISTIC:
            assert "random_state" not in params, name
            continue
        assert params["random_state"] == 0, name
        fresh = _fresh(template, 11)
        assert fresh.get_params()["random_state"] == 11 and type(fresh) is type(template), name
        assert {k: v for k, v in fresh.get_params().items() if k != "random_state"} == {
            k: v for k, v in params.items() if k != "random_state"
        }


def test_predictors_without_random_state_are_deterministic():
    adata = make_synthetic(
        n_genes=20, n_contexts=4, n_perturbations=2, cells_per_group=12, seed=1, n_combos=1
    )
    task = Task("condition", "control", "cell_type", expression="counts")
    train = adata[~((adata.obs["cell_type"] == "C0") & (adata.obs["condition"] == "P0")).to_numpy()].copy()
    control = adata[
        ((adata.obs["cell_type"] == "C0") & (adata.obs["condition"] == "control")).to_numpy()
    ].copy()
    for name in sorted(DETERMINISTIC):
        label = "P0+P1" if name == "additive" else "P0"  # additive predicts combinations only
        preds = [make_predictor(name)[1].fit(train, task).predict(control, label, "C0").X for _ in range(2)]
        np.testing.assert_array_equal(preds[0], preds[1])
