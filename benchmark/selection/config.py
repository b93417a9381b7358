"""Tuning config files: the parameters each block chose, written as TOML by `bench tune` and read, checked and
assigned to outer splits by `bench run --config`."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.errors import PertbenchError
from benchmark.core.files import file_to_write
from benchmark.data.splits import Split

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _common(param_sets) -> dict[str, Any]:
    """The parameters every block chose with the same value."""
    sets = list(param_sets)
    if not sets:
        return {}
    return {k: v for k, v in sets[0].items() if all(k in s and _eq(s[k], v) for s in sets[1:])}


def _eq(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def write_config(config: dict[str, Any], path: Path | str) -> Path:
    """Write the config as TOML."""
    path = file_to_write(path, "--output", ".toml file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(config), encoding="utf-8")
    return path


def load_config(path: Path | str, predictor_name: str | None = None) -> dict[str, Any]:
    """Read and check a config written by `bench tune` (predictor name, blocks and their parameters)."""
    path = Path(path)
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PertbenchError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PertbenchError(f"config {path} is not valid TOML: {exc}") from exc
    if not isinstance(config.get("predictor"), str):
        raise PertbenchError(f"config {path} names no predictor")
    if predictor_name is not None and predictor_name != config["predictor"]:
        raise PertbenchError(
            f"config {path} was made for predictor {config['predictor']!r}, not {predictor_name!r}"
        )
    for block in config.get("blocks", []):
        if not isinstance(block.get("params"), dict) or not isinstance(block.get("outer_digests"), list):
            raise PertbenchError(
                f"config {path}: block {block.get('name', '?')} lacks params or outer_digests"
            )
    return config


def split_params(config: dict[str, Any], split: Split) -> dict[str, Any]:
    """The parameters a config assigns to an outer split: its block's, else the top-level `params` when the
    config has no blocks; a split no block covers is an error (its tuning might have seen its test cells)."""
    blocks = config.get("blocks", [])
    if not blocks:
        return dict(config.get("params", {}))
    digest = split.digest()
    for block in blocks:
        if digest in block["outer_digests"]:
            return dict(block["params"])
    tuning = config.get("tuning", {})
    raise PertbenchError(
        f"split {split.name} ({split.kind}, seed {split.seed}) is not covered by the config (tuned on "
        f"{tuning.get('dataset', '?')} {tuning.get('split_kind', '?')} seed {tuning.get('seed', '?')}); "
        "run `bench tune` for this dataset, split kind and seed"
    )


def config_digest(config: dict[str, Any]) -> str:
    """A short hash of a config's content."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dump_toml(config: dict[str, Any]) -> str:
    """TOML text for the config's shape: top-level scalars, tables of scalars, arrays of tables (no tomli_w)."""
    lines: list[str] = []
    tables, arrays = [], []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables:
        lines += ["", f"[{_key(key)}]", *(f"{_key(k)} = {_value(v)}" for k, v in table.items())]
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_key(key)}]]", *(f"{_key(k)} = {_value(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        raise PertbenchError("a config value is None, which TOML cannot hold")
    return json.dumps(str(value))
