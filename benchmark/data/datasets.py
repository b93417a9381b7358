"""Dataset cards and loading: a dataset is a TOML card in `datasets/` plus a checksummed h5ad file.

A card names the file, where to download it, its SHA-256, and the task (perturbation key, control label,
context key, expression scale). `load_dataset` finds the file in the data folder (`PERTBENCH_DATA_DIR`, else a
per-user cache), verifies it, downloads it when missing and a URL is known (set `PERTBENCH_OFFLINE=1` to never
try), applies the card's obs filters, tidies obs and validates. "synthetic" is built in code.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data import synthetic
from benchmark.data.splits import SPLIT_KINDS, default_split_kind, joined_labels
from benchmark.data.validation import format_labels, validate

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
EXPRESSIONS = ("lognorm", "counts")
DOWNLOAD_TIMEOUT_S = 60.0
BACKED_MIN_BYTES = 1 << 30
"""An h5ad file this large or larger is opened backed: X stays on disk and the harness reads the cells it needs (a
split's groups, a batch of `task.BATCH_CELLS` cells) when it needs them; smaller files are read whole (faster)."""
REQUIRED_FIELDS = ("name", "file", "sha256", "perturbation_key", "control", "expression", "default_split")


@dataclass(frozen=True, kw_only=True)
class DatasetCard:
    """What a `datasets/<name>.toml` card says about one dataset (fields as in the TOML)."""

    name: str
    description: str = ""
    file: str
    url: str = ""  # direct download of exactly this file; empty when none exists (then see source_url)
    sha256: str
    citation: str = ""
    perturbation_key: str
    control: str
    context_key: str | None = None
    expression: str
    filters: dict[str, str] = field(default_factory=dict)  # obs column -> value: keep only these cells
    default_split: str
    source_url: str = ""  # the public source the file was derived from, when it is not the file itself

    @property
    def summary(self) -> str:
        """The description's first sentence, for one-line listings."""
        return re.split(r"(?<!\bal)\.(?:\s|$)", self.description.strip(), maxsplit=1)[0]

    def task(self) -> Task:
        """The Task (keys and labels) this dataset is benchmarked with."""
        return Task(
            perturbation_key=self.perturbation_key,
            control_label=self.control,
            context_key=self.context_key,
            expression=self.expression,  # type: ignore[arg-type]
        )


@dataclass
class Dataset:
    """A loaded dataset: the cells, their task, and where they came from."""

    name: str
    adata: AnnData
    task: Task
    checksum: str
    source: str
    default_split: str


# ---------------------------------------------------------------------------------------------- cards


def cards_dir() -> Path:
    """The folder of dataset cards: $PERTBENCH_CARDS_DIR, else the repository's datasets/ folder."""
    env = os.environ.get("PERTBENCH_CARDS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "datasets"


def parse_card(path: Path) -> DatasetCard:
    """Read and check one card; a malformed card is a PertbenchError naming the file and the problem."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PertbenchError(f"cannot read dataset card {path}: {e}") from e
    known = {f.name for f in fields(DatasetCard)}
    problems = [f"unknown field {k!r}" for k in raw if k not in known]
    problems += [f"missing field {k!r}" for k in REQUIRED_FIELDS if not raw.get(k)]
    if raw.get("name") and raw["name"] != Path(path).stem:
        problems.append(f"name {raw['name']!r} differs from the file name {Path(path).stem!r}")
    if raw.get("expression") and raw["expression"] not in EXPRESSIONS:
        problems.append(f"expression must be one of {', '.join(EXPRESSIONS)}")
    if raw.get("default_split") and raw["default_split"] not in SPLIT_KINDS:
        problems.append(f"default_split must be one of {', '.join(SPLIT_KINDS)}")
    if raw.get("file") and not _plain_file_name(str(raw["file"])):
        problems.append(
            f"file {raw['file']!r} must be a plain file name inside the data folder (no folders, no ..)"
        )
    if raw.get("sha256") and not re.fullmatch(r"[0-9a-f]{64}", str(raw["sha256"])):
        problems.append("sha256 must be 64 lowercase hex digits")
    if not isinstance(raw.get("filters", {}), dict):
        problems.append("filters must be a table of obs column = value")
    if problems:
        raise PertbenchError(f"dataset card {path}: {'; '.join(problems)}")
    raw["filters"] = {str(k): str(v) for k, v in raw.get("filters", {}).items()}
    raw["context_key"] = raw.get("context_key") or None
    return DatasetCard(**raw)


def list_cards() -> list[DatasetCard]:
    """Every card in cards_dir(), sorted by name."""
    return [parse_card(p) for p in sorted(cards_dir().glob("*.toml"))]


def dataset_names() -> list[str]:
    """Names load_dataset accepts: every card, plus the built-in 'synthetic'."""
    return [c.name for c in list_cards()] + [SYNTHETIC]


def get_card(name: str) -> DatasetCard:
    """The card called `name`; an unknown name is an error listing the known datasets."""
    path = cards_dir() / f"{name}.toml"
    if not re.fullmatch(r"[\w.-]+", name) or not path.is_file():
        raise PertbenchError(
            f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())} (cards in {cards_dir()})"
        )
    return parse_card(path)


# ---------------------------------------------------------------------------------------------- files


def data_dir() -> Path:
    """Where data files live: $PERTBENCH_DATA_DIR, else $XDG_CACHE_HOME (or ~/.cache)/pertbench/data."""
    env = os.environ.get("PERTBENCH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pertbench" / "data"


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, memoized per process by (path, size, mtime) to avoid re-hashing."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH_MEMO[key] = digest.hexdigest()
    return _HASH_MEMO[key]


def verify_checksum(path: Path, expected: str) -> None:
    """Raise unless the file's SHA-256 is `expected`."""
    actual = sha256_file(path)
    if actual != expected:
        raise PertbenchError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}; "
            "the file is corrupt or a different version: delete it and download it again"
        )


def _fetch(url: str, dest: Path) -> None:
    """Stream `url` into the file `dest` (network errors propagate as OSError)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def _missing_message(card: DatasetCard, folder: Path) -> str:
    """How to obtain a missing file: where to put it and where it comes from."""
    if card.url:
        origin = f"download it from {card.url}"
    else:
        origin = f"no direct download exists: build it from {card.source_url or 'its source'} (see the card)"
    return (
        f"dataset {card.name!r} needs {card.file} in {folder} (or set PERTBENCH_DATA_DIR to its folder); "
        f"{origin}; expected sha256 {card.sha256}"
    )


def _make_dirs(folder: Path) -> list[Path]:
    """Create `folder` and missing parents; return the ones created, outermost first (to undo on failure)."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _download(card: DatasetCard, target: Path) -> None:
    """Fetch card.url to a temp file next to `target`, verify it, then rename it into place atomically.

    On any failure nothing is left behind: neither the temp file nor folders this call created.
    """
    if not card.url or os.environ.get("PERTBENCH_OFFLINE"):
        raise PertbenchError(_missing_message(card, target.parent))
    tmp: Path | None = None
    created: list[Path] = []
    try:
        created = _make_dirs(target.parent)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(name)
        log.info("downloading %s from %s", card.file, card.url)
        _fetch(card.url, tmp)
        actual = sha256_file(tmp)
        if actual != card.sha256:
            raise PertbenchError(
                f"downloaded {card.url} but its sha256 is {actual}, not the card's {card.sha256}: "
                f"the source changed or the transfer was corrupted; nothing was saved to {target.parent}"
            )
        os.replace(tmp, target)
    except OSError as e:
        raise PertbenchError(f"{_missing_message(card, target.parent)} (download failed: {e})") from e
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        if not target.exists():
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _plain_file_name(name: str) -> bool:
    """A card's file is one name inside the data folder: no separator, no '..', not absolute, not hidden."""
    return bool(re.fullmatch(r"[\w][\w.+-]*", name)) and ".." not in name and Path(name).name == name


def locate_file(card: DatasetCard, folder: Path | None = None) -> Path:
    """The card's verified file in `folder` (default data_dir()), downloading it if missing; a file name that
    would resolve outside the folder is refused before anything is read or written."""
    folder = Path(folder) if folder is not None else data_dir()
    if not _plain_file_name(card.file):
        raise PertbenchError(
            f"dataset {card.name!r}: file {card.file!r} must be a plain file name inside the data folder {folder}"
        )
    path = folder / card.file
    if not path.is_file():
        _download(card, path)
    verify_checksum(path, card.sha256)
    return path


# ---------------------------------------------------------------------------------------------- loading


def read_h5ad(path: Path, backed: bool | None = False) -> AnnData:
    """Read an h5ad file (backed: X left on disk; None: backed when the file is at least BACKED_MIN_BYTES),
    silencing the old-format warnings old anndata files trigger on read."""
    if backed is None:
        backed = Path(path).stat().st_size >= BACKED_MIN_BYTES
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Moving element from \.uns\['neighbors'\]", category=FutureWarning
        )
        warnings.filterwarnings("ignore", category=ad.OldFormatWarning)
        try:
            return ad.read_h5ad(path, backed="r" if backed else None)
        except (OSError, KeyError, ValueError) as e:
            raise PertbenchError(f"cannot read {path} as h5ad: {e}") from e


def apply_filters(adata: AnnData, filters: dict[str, str]) -> AnnData:
    """Keep the cells whose obs columns equal the given values (one file can hold several datasets)."""
    if not filters:
        return adata
    keep = np.ones(adata.n_obs, dtype=bool)
    for key, value in filters.items():
        if key not in adata.obs.columns:
            raise PertbenchError(
                f"filter column {key!r} is not an obs column; available: {format_labels(adata.obs.columns)}"
            )
        column = adata.obs[key].astype(str).to_numpy()
        if value not in set(column):
            raise PertbenchError(f"filter {key} == {value!r} keeps no cells; values: {format_labels(column)}")
        keep &= column == value
    kept = adata[keep]
    return kept.to_memory() if kept.isbacked else kept.copy()


def _string_categorical(column: pd.Series) -> pd.Categorical:
    """Labels as a categorical of strings, keeping an existing category order; missing values stay missing."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = [str(c) for c in column.cat.categories]
        if len(set(names)) == len(names):
            return column.cat.rename_categories(names).array
    return pd.Categorical(column.astype(str).where(column.notna()))


def tidy(adata: AnnData, task: Task) -> AnnData:
    """Task labels as string categoricals, no unused categories, unique names, X as float32 (CSR if sparse)."""
    for key in (task.perturbation_key, task.context_key):
        if key is not None and key in adata.obs.columns:
            adata.obs[key] = _string_categorical(adata.obs[key])
    for key in adata.obs.columns:
        if isinstance(adata.obs[key].dtype, pd.CategoricalDtype):
            adata.obs[key] = adata.obs[key].cat.remove_unused_categories()
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    if adata.X is None:  # validate names the problem
        return adata
    if adata.isbacked:  # X stays on disk as stored; the cells read from it are converted as they are used
        pass
    elif sp.issparse(adata.X):
        adata.X = one_index_dtype(sp.csr_matrix(adata.X, dtype=np.float32))
    else:
        adata.X = np.asarray(adata.X, dtype=np.float32)
    return adata


def one_index_dtype(x: sp.csr_matrix) -> sp.csr_matrix:
    """indices and indptr of one integer type (int32 while nnz fits), cast once at load: scipy upcasts a mixed
    pair on every row pick, an O(nnz) copy each time a target's cells are taken."""
    if x.indices.dtype == x.indptr.dtype:
        return x
    wide = x.nnz >= np.iinfo(np.int32).max or max(x.shape) >= np.iinfo(np.int32).max
    dtype = np.int64 if wide else np.int32
    x.indices, x.indptr = x.indices.astype(dtype, copy=False), x.indptr.astype(dtype, copy=False)
    return x


def prepare(adata: AnnData, task: Task, filters: dict[str, str] | None = None) -> AnnData:
    """Filter, tidy and validate. Count data are log-normalized when read (a group or batch at a time), never
    stored twice."""
    adata = tidy(apply_filters(adata, filters or {}), task)
    validate(adata, task)
    return adata


def load_synthetic() -> Dataset:
    """The built-in synthetic dataset with fixed default parameters (counts, holdout_context)."""
    task = Task(synthetic.PERTURBATION_KEY, synthetic.CONTROL, synthetic.CONTEXT_KEY, expression="counts")
    adata = prepare(synthetic.make_synthetic(), task)
    return Dataset(
        SYNTHETIC,
        adata,
        task,
        synthetic.describe(),
        "benchmark.data.synthetic.make_synthetic()",
        "holdout_context",
    )


def load_dataset(name: str, data_dir: Path | None = None, backed: bool | None = None) -> Dataset:
    """Load a dataset by card name (or 'synthetic'): verified file, filtered, tidied and validated (`backed` as in
    `read_h5ad`: None opens a large file backed)."""
    if name == SYNTHETIC:
        return load_synthetic()
    card = get_card(name)
    path = locate_file(card, data_dir)
    task = card.task()
    adata = prepare(read_h5ad(path, backed), task, card.filters)
    return Dataset(card.name, adata, task, card.sha256, str(path), card.default_split)


def _guess_split(adata: AnnData, task: Task) -> str:
    """A sensible default split for a card-less file: the first registered kind that applies (contexts if several,
    else combinations if any, else random)."""
    kind = default_split_kind(adata, task)
    joined = joined_labels(adata, task)
    if joined:
        print(
            f"bench: warning: label {str(joined[0])!r} has {task.combo_separator!r} but its parts are not labels of "
            f"their own, so it is not treated as a combination; default split: {kind}",
            file=sys.stderr,
        )
    return kind


def load_h5ad(
    path: Path | str,
    perturbation_key: str,
    control: str,
    context_key: str | None = None,
    expression: str = "lognorm",
    backed: bool | None = None,
) -> Dataset:
    """Load any user h5ad file without a card; the checksum is the file's SHA-256 (`backed` as in `read_h5ad`)."""
    path = Path(path)
    if not path.is_file():
        raise PertbenchError(f"no such file: {path}")
    if expression not in EXPRESSIONS:
        raise PertbenchError(f"expression must be one of {', '.join(EXPRESSIONS)}, got {expression!r}")
    task = Task(perturbation_key, control, context_key, expression=expression)  # type: ignore[arg-type]
    adata = prepare(read_h5ad(path, backed), task)
    return Dataset(path.stem, adata, task, sha256_file(path), str(path), _guess_split(adata, task))
