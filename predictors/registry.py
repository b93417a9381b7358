"""Maps predictor names to classes and default parameters.

Built-ins are listed in BUILTINS (one line each, imported lazily so that `bench list` stays fast). Third-party
predictors plug in through the `pertbench.predictors` entry-point group, or ad hoc as `module:Class`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from benchmark.core.errors import PertbenchError
from benchmark.core.protocol import Predictor

ENTRY_POINT_GROUP = "pertbench.predictors"
CHOSEN_DEFAULTS = Path(__file__).parent / "cvae" / "defaults.json"
"""The CVAE defaults chosen on validation splits of the visible datasets (`make cvae-defaults`, i.e.
benchmark.selection.choose_defaults); the registered cvae_* names take their entry's params."""


@dataclass(frozen=True)
class PredictorSpec:
    """Where a predictor class lives and the parameters its registered name fixes."""

    target: str  # "module:Class"
    params: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    requires: str | None = None  # a module that only the optional extra `extra` installs
    extra: str = ""
    chosen: str | None = None  # whose entry of CHOSEN_DEFAULTS gives the defaults (under `params`)
    env: str | None = None  # the environment (envs/<env>/) its worker runs in: `bench env build <env>`


BUILTINS: dict[str, PredictorSpec] = {
    "no_change": PredictorSpec("predictors.baselines:NoChange", {}, "the control cells themselves"),
    "mean_shift": PredictorSpec(
        "predictors.baselines:MeanShift", {}, "control + mean shift over training contexts"
    ),
    "additive": PredictorSpec(
        "predictors.baselines:Additive", {}, "control + sum of the single shifts (combos)"
    ),
    "linear": PredictorSpec(
        "predictors.linear:Linear", {}, "ridge on training pseudobulks, CV-chosen penalty"
    ),
    "linear_cv": PredictorSpec("predictors.baselines:LinearCV", {}, "CV choice among 41 ridge models"),
    "collapsed_mean": PredictorSpec("predictors.gaming:CollapsedMean", {}, "gaming: mean_shift's mean only"),
    "inflated_variance": PredictorSpec("predictors.gaming:InflatedVariance", {}, "gaming: 2x spread"),
    "wrong_context": PredictorSpec("predictors.gaming:WrongContext", {}, "gaming: farthest context's shift"),
    "cvae_modeA": PredictorSpec(
        "predictors.cvae:CVAEPredictor", {"mode": "A"}, "CVAE, z ~ N(0, I)", chosen="cvae_modeB"
    ),
    "cvae_modeB": PredictorSpec(
        "predictors.cvae:CVAEPredictor", {"mode": "B"}, "CVAE, encode control cells", chosen="cvae_modeB"
    ),
    "cvae_mlp_modeA": PredictorSpec(
        "predictors.cvae:CVAEPredictor",
        {"mode": "A", "decoder": "mlp"},
        "plain CVAE (MLP decoder), z ~ N(0, I)",
        chosen="cvae_mlp_modeB",
    ),
    "cvae_mlp_modeB": PredictorSpec(
        "predictors.cvae:CVAEPredictor",
        {"mode": "B", "decoder": "mlp"},
        "plain CVAE (MLP decoder), encode controls",
        chosen="cvae_mlp_modeB",
    ),
    "scgen": PredictorSpec(
        "predictors.scgen:ScGen",
        {},
        "scGen (pertpy; extra 'scgen'): VAE latent arithmetic",
        requires="pertpy",
        extra="scgen",
    ),
    "biolord": PredictorSpec(
        "predictors.peers.biolord:Biolord", {}, "biolord (own env): disentangled attributes", env="biolord"
    ),
}


def _plugin_specs() -> dict[str, PredictorSpec]:
    """Predictors registered by installed packages under the entry-point group."""
    specs = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        specs[ep.name] = PredictorSpec(ep.value, {}, f"plug-in from {ep.value}")
    return specs


def available_predictors() -> dict[str, PredictorSpec]:
    """Every registered name: built-ins first, then plug-ins (a plug-in cannot shadow a built-in)."""
    specs = dict(_plugin_specs())
    specs.update(BUILTINS)
    return specs


def load_class(target: str) -> type[Predictor]:
    """Import `module:Class` and check that it follows the predictor protocol."""
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise PertbenchError(f"predictor {target!r} is not of the form module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PertbenchError(f"cannot import module {module_name!r} for predictor {target!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PertbenchError(f"module {module_name!r} has no class {class_name!r}")
    if not (callable(getattr(cls, "fit", None)) and callable(getattr(cls, "predict", None))):
        raise PertbenchError(f"{target} does not implement fit and predict")
    return cls


def check_installed(name: str) -> None:
    """A one-line PertbenchError, saying how to install it, when a registered predictor's optional extra is
    missing. Looks the module up without importing it (pertpy takes tens of seconds to import)."""
    spec = available_predictors().get(name)
    if spec is not None and spec.env is not None:
        from benchmark.envs.spec import load_spec

        load_spec(spec.env).require_built()
    if spec is None or spec.requires is None:
        return
    try:
        found = importlib.util.find_spec(spec.requires) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise PertbenchError(
            f"predictor {name!r} needs {spec.requires}, which is not installed; install it with: "
            f"{install_command(spec.extra)}"
        )


def install_command(extra: str) -> str:
    """The command that installs one of pertbench's optional extras (from the repository root)."""
    return f"pip install -c constraints.txt -e '.[{extra}]'"


def make_predictor(
    name: str, data_key: tuple[str, str] | None = None, **overrides: Any
) -> tuple[str, Predictor]:
    """Build a predictor from a registered name or `module:Class`; returns (display name, instance). data_key,
    the (name, checksum) of the dataset it will run on, picks that dataset's leave-it-out chosen defaults."""
    specs = available_predictors()
    if name in specs:
        spec = specs[name]
        cls = load_class(spec.target)
        params = {**chosen_params(spec.chosen, data_key), **spec.params, **overrides}
    elif ":" in name:
        cls = load_class(name)
        params = dict(overrides)
    else:
        known = ", ".join(sorted(specs))
        raise PertbenchError(f"unknown predictor {name!r}; known predictors: {known} (or give module:Class)")
    try:
        return name, cls(**params)
    except (TypeError, ValueError) as exc:  # an unknown parameter, or a value out of its range
        raise PertbenchError(
            f"cannot build predictor {name!r} with parameters {params}: {_one_line(exc)}"
        ) from exc


@functools.cache
def _chosen_file() -> dict[str, Any]:
    try:
        return json.loads(CHOSEN_DEFAULTS.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PertbenchError(f"cannot read the chosen defaults {CHOSEN_DEFAULTS}: {_one_line(exc)}") from exc


def chosen_params(key: str | None, data_key: tuple[str, str] | None = None) -> dict[str, Any]:
    """The chosen defaults of `key` (a predictor name in CHOSEN_DEFAULTS); {} for None. On one of the datasets the
    choice was made on (data_key = its name and checksum), the choice made without that dataset, so that no
    dataset's scores use a default its own cells helped to choose."""
    if key is None:
        return {}
    entry = _chosen_file().get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
        raise PertbenchError(
            f"{CHOSEN_DEFAULTS} has no chosen params for {key!r}; rerun `make cvae-defaults`"
        )
    left_out = leave_out_choice(key, data_key)
    if left_out is not None:
        return next(dict(c["params"]) for c in entry["candidates"] if c["index"] == left_out)
    return dict(entry["params"])


def leave_out_choice(key: str | None, data_key: tuple[str, str] | None) -> int | None:
    """The candidate chosen without the dataset data_key, where that differs from the pooled choice; else None."""
    if key is None or data_key is None:
        return None
    name, checksum = data_key
    if _chosen_file().get("datasets", {}).get(name) != checksum:
        return None
    lodo = _chosen_file()[key].get("leave_one_dataset_out", {}).get(name)
    return None if lodo is None or lodo["same"] else int(lodo["chosen"])


def _one_line(exc: Exception) -> str:
    """The exception's message on one line (a TypeError about an unknown keyword names the parameter)."""
    return " ".join(str(exc).split()) or type(exc).__name__
