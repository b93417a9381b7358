"""`bench sweep` files: a grid of predictors x datasets x split kinds x seeds x parameter sets, read from TOML
(or YAML), checked up front, and expanded into groups (one parent run each, as `bench run` makes) and split-level
tasks (one predictor, dataset, split kind, split, seed and parameter set each).

    [settings]                       # all optional
    seeds = [0, 1, 2]                # default for every grid block
    embedding = "pca"
    store = "sqlite:///leaderboard.db"
    cache_dir = ".pertbench/models"
    cpus_per_task = 1                # Ray: CPUs a task reserves; torch and BLAS threads match it
    max_retries = 3                  # Ray: retries of a task whose worker died
    leaderboard = "leaderboard/LEADERBOARD.md"
    readme = "README.md"

    [datasets.mine]                  # a `--data`-style file, named for the grid blocks
    data = "screen.h5ad"
    perturbation_key = "condition"
    control = "ctrl"

    [[grid]]                         # the sweep is the union of its blocks, each a full product
    predictors = ["no_change", "mean_shift"]
    datasets = ["kang2018", "mine"]  # dataset cards, `synthetic`, or names under [datasets]
    splits = ["default"]             # split kinds; "default" = each dataset's own
    params = [{}]                    # parameter sets, each applied to every predictor of the block
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.core.errors import PertbenchError

SETTINGS_KEYS = {
    "seeds",
    "embedding",
    "figures",
    "save_predictions",
    "max_splits",
    "store",
    "cache_dir",
    "cpus_per_task",
    "max_retries",
    "leaderboard",
    "readme",
}
GRID_KEYS = {"predictors", "datasets", "splits", "seeds", "params"}
DATA_KEYS = {"data", "perturbation_key", "control", "context_key", "expression"}
TOP_KEYS = {"settings", "datasets", "grid"}
DEFAULT_SPLIT = "default"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as a sweep names it: a card (or `synthetic`), or a file with its keys like `bench run --data`."""

    name: str
    data: str | None = None
    perturbation_key: str | None = None
    control: str | None = None
    context_key: str | None = None
    expression: str = "lognorm"

    def load(self):
        """The loaded Dataset (checksum verified), as `bench run` loads it."""
        from benchmark.data.datasets import load_dataset, load_h5ad

        if self.data is None:
            return load_dataset(self.name)
        assert self.perturbation_key is not None and self.control is not None
        return load_h5ad(self.data, self.perturbation_key, self.control, self.context_key, self.expression)


@dataclass
class Settings:
    """Sweep-wide settings: what every task logs, where, and what a Ray task reserves."""

    seeds: tuple[int, ...] = (0,)
    embedding: str = "umap"
    figures: bool = True
    save_predictions: bool = False
    max_splits: int | None = None
    store: str | None = None
    cache_dir: str | None = None
    cpus_per_task: int = 1
    max_retries: int = 3
    leaderboard: str | None = None
    readme: str | None = None


@dataclass(frozen=True)
class Group:
    """One parent run: a predictor with one parameter set on one dataset, split kind and seed list."""

    predictor: str
    params: tuple[tuple[str, Any], ...]
    dataset: DatasetSpec
    split_kind: str  # a split kind, or "default" until the dataset is loaded
    seeds: tuple[int, ...]

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def label(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return (
            f"{self.predictor}{f' ({params})' if params else ''} on {self.dataset.name} · {self.split_kind}"
        )


@dataclass
class Sweep:
    """A parsed sweep file: its settings and its groups, in the file's order."""

    source: str
    settings: Settings
    groups: list[Group] = field(default_factory=list)


def _fail(path: Path | str, message: str) -> PertbenchError:
    return PertbenchError(f"sweep file {path}: {message}")


def read_file(path: Path) -> dict[str, Any]:
    """The file's mapping: TOML (.toml), or YAML (.yaml / .yml, needs PyYAML, which MLflow brings)."""
    if not path.is_file():
        raise PertbenchError(f"no such sweep file: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise _fail(path, "YAML needs PyYAML (pip install pyyaml); or write the sweep as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _fail(path, f"not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    elif suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _fail(path, f"not valid TOML ({exc})") from None
    else:
        raise _fail(path, f"unknown format {suffix or '(no suffix)'}; use .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise _fail(path, "must hold a mapping with [settings], [datasets] and [[grid]] blocks")
    return data


PLUGIN_FORM = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
"""A `module:Class` predictor name, checked without importing the module."""


def load_sweep(path: Path | str, import_code: bool = True) -> Sweep:
    """Parse and check a sweep file; every problem is a one-line PertbenchError naming the file. With
    import_code False (`--dry-run`), a `module:Class` predictor is checked by its form only: nothing is imported."""
    path = Path(path)
    return parse_sweep(read_file(path), str(path), import_code)


def parse_sweep(data: dict[str, Any], source: str, import_code: bool = True) -> Sweep:
    """The checked sweep of a file's mapping: known keys, known predictors and datasets, a non-empty grid."""
    _known(source, "top level", data, TOP_KEYS)
    settings = _settings(source, data.get("settings", {}))
    named = _named_datasets(source, data.get("datasets", {}))
    blocks = data.get("grid", [])
    if isinstance(blocks, dict):
        blocks = [blocks]
    if not isinstance(blocks, list) or not blocks:
        raise _fail(source, "empty grid: add a [[grid]] block with predictors and datasets")
    groups: list[Group] = []
    for number, block in enumerate(blocks, start=1):
        groups += _block_groups(source, number, block, settings, named, import_code)
    if not groups:
        raise _fail(source, "empty grid: its blocks expand to no run")
    duplicate = _first_duplicate(groups)
    if duplicate is not None:
        raise _fail(source, f"{duplicate.label()} appears twice in the grid")
    return Sweep(source, settings, groups)


def _known(source: str, where: str, table: Any, keys: set[str]) -> None:
    if not isinstance(table, dict):
        raise _fail(source, f"{where} must be a table")
    unknown = sorted(set(table) - keys)
    if unknown:
        raise _fail(source, f"unknown key {unknown[0]!r} in {where}; known keys: {', '.join(sorted(keys))}")


def _seeds(source: str, where: str, value: Any) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise _fail(source, f"{where} seeds must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(values)) != len(values):
        raise _fail(source, f"{where} seeds repeat a seed: {value!r}")
    return tuple(values)


def _settings(source: str, table: Any) -> Settings:
    _known(source, "[settings]", table, SETTINGS_KEYS)
    settings = Settings()
    for key, value in table.items():
        if key == "seeds":
            settings.seeds = _seeds(source, "[settings]", value)
        elif key in ("figures", "save_predictions"):
            if not isinstance(value, bool):
                raise _fail(source, f"[settings] {key} must be true or false, got {value!r}")
            setattr(settings, key, value)
        elif key in ("max_splits", "cpus_per_task"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _fail(source, f"[settings] {key} must be an integer >= 1, got {value!r}")
            setattr(settings, key, value)
        elif key == "max_retries":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _fail(source, f"[settings] max_retries must be an integer >= 0, got {value!r}")
            settings.max_retries = value
        elif key == "embedding":
            if value not in ("umap", "pca"):
                raise _fail(source, f"[settings] embedding must be umap or pca, got {value!r}")
            settings.embedding = value
        else:
            if not isinstance(value, str) or not value:
                raise _fail(source, f"[settings] {key} must be a non-empty string, got {value!r}")
            setattr(settings, key, value)
    return settings


def _named_datasets(source: str, table: Any) -> dict[str, DatasetSpec]:
    """The [datasets.NAME] files; a relative path is read from the sweep file's folder."""
    if not isinstance(table, dict):
        raise _fail(source, "[datasets] must be a table of named data files")
    named = {}
    for name, spec in table.items():
        where = f"[datasets.{name}]"
        _known(source, where, spec, DATA_KEYS)
        for key in ("data", "perturbation_key", "control"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise _fail(source, f"{where} needs {key} (a string)")
        expression = spec.get("expression", "lognorm")
        if expression not in ("lognorm", "counts"):
            raise _fail(source, f"{where} expression must be lognorm or counts, got {expression!r}")
        data = Path(spec["data"])
        if not data.is_absolute():
            data = Path(source).resolve().parent / data
        if not data.is_file():
            raise _fail(source, f"{where} data file {data} does not exist")
        named[name] = DatasetSpec(
            name, str(data), spec["perturbation_key"], spec["control"], spec.get("context_key"), expression
        )
    return named


def _dataset(source: str, where: str, name: Any, named: dict[str, DatasetSpec]) -> DatasetSpec:
    from benchmark.data.datasets import SYNTHETIC, dataset_names

    if not isinstance(name, str):
        raise _fail(source, f"{where} datasets must be names, got {name!r}")
    if name in named:
        return named[name]
    if name == SYNTHETIC or name in dataset_names():
        return DatasetSpec(name)
    known = ", ".join([*dataset_names(), SYNTHETIC, *named])
    raise _fail(source, f"{where} unknown dataset {name!r}; known: {known}")


def _names(source: str, where: str, block: dict, key: str, default: list | None = None) -> list:
    value = block.get(key, default)
    if value is None:
        raise _fail(source, f"{where} needs {key}")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _fail(source, f"empty grid: {where} {key} is empty")
    return values


def _block_groups(
    source: str,
    number: int,
    block: Any,
    settings: Settings,
    named: dict[str, DatasetSpec],
    import_code: bool = True,
) -> list[Group]:
    from benchmark.data.splits import SPLIT_KINDS
    from predictors.registry import make_predictor

    where = f"[[grid]] block {number}"
    _known(source, where, block, GRID_KEYS)
    predictors = _names(source, where, block, "predictors")
    datasets = [_dataset(source, where, d, named) for d in _names(source, where, block, "datasets")]
    kinds = _names(source, where, block, "splits", [DEFAULT_SPLIT])
    for kind in kinds:
        if kind != DEFAULT_SPLIT and kind not in SPLIT_KINDS:
            raise _fail(
                source, f"{where} unknown split kind {kind!r}; known: {', '.join(SPLIT_KINDS)}, default"
            )
    seeds = _seeds(source, where, block["seeds"]) if "seeds" in block else settings.seeds
    param_sets = _names(source, where, block, "params", [{}])
    for params in param_sets:
        if not isinstance(params, dict):
            raise _fail(source, f"{where} params must be a list of tables, got {params!r}")
    for predictor in predictors:
        if not isinstance(predictor, str):
            raise _fail(source, f"{where} predictors must be names, got {predictor!r}")
        if ":" in predictor and not import_code:  # importing the module would run its code
            if not PLUGIN_FORM.fullmatch(predictor):
                raise _fail(source, f"{where}: predictor {predictor!r} is not of the form module:Class")
            continue
        for params in param_sets:
            try:
                make_predictor(predictor, **params)
            except PertbenchError as exc:
                raise _fail(source, f"{where}: {exc}") from None
    return [
        Group(predictor, tuple(sorted(params.items())), dataset, kind, seeds)
        for dataset in datasets
        for kind in kinds
        for predictor in predictors
        for params in param_sets
    ]


def _first_duplicate(groups: list[Group]) -> Group | None:
    seen = set()
    for group in groups:
        key = (group.predictor, repr(group.params), group.dataset, group.split_kind)
        if key in seen:
            return group
        seen.add(key)
    return None


# ---------------------------------------------------------------------------------------------- expansion


def group_key(group: Group, checksum: str, split_kind: str, options_record: dict[str, Any]) -> str:
    """A digest naming a group's parent run in the store (tag pertbench.sweep_key): the same grid entry on the
    same data with the same options finds its parent again, so a restarted sweep resumes it."""
    payload = {
        "predictor": group.predictor,
        "params": [[k, repr(v)] for k, v in group.params],
        "dataset": group.dataset.name,
        "checksum": checksum,
        "split_kind": split_kind,
        "seeds": list(group.seeds),
        **options_record,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TaskRef:
    """One split-level task of a group: the seed and the split's position among that seed's splits."""

    seed: int
    index: int
    split_name: str
    n_targets: int


def expand(splits_by_seed: dict[int, list]) -> list[TaskRef]:
    """A group's tasks, in `bench run`'s order (seed by seed, split by split)."""
    return [
        TaskRef(seed, index, split.name, len(split.targets))
        for seed, splits in splits_by_seed.items()
        for index, split in enumerate(splits)
    ]
