"""The split record: a split's training cells and held-out targets, its digest, and its .npz file.

A split is saved as integer positions into the dataset's cell ids, with the names they point at, so a run can
be repeated exactly and a file that no longer matches its dataset is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.errors import PertbenchError

SPLIT_FORMAT = 1
"""Version of the .npz layout `Split.save` writes."""


@dataclass(frozen=True)
class Target:
    """One held-out group to predict: its perturbation, context, real cells and the control cells given."""

    perturbation: str
    context: str
    test_cells: tuple[str, ...]
    control_cells: tuple[str, ...]


class TrainingCells(Sequence[str]):
    """A split's training cells: every id of the dataset but the held-out positions, in dataset order. Kept as
    the held-out positions until first read, so a dataset with 20,000 contexts makes its 20,000 splits in
    O(cells) memory and time; reading one split's cells costs O(cells) once (then cached)."""

    def __init__(self, ids: np.ndarray, held_out: np.ndarray) -> None:
        self._ids = ids
        self.held_out = np.unique(np.asarray(held_out, dtype=np.int64))
        self._cells: tuple[str, ...] | None = None

    def _all(self) -> tuple[str, ...]:
        if self._cells is None:
            keep = np.ones(len(self._ids), dtype=bool)
            keep[self.held_out] = False
            self._cells = tuple(self._ids[keep])
        return self._cells

    def __len__(self) -> int:
        return len(self._ids) - len(self.held_out)

    def __getitem__(self, index):  # type: ignore[override]
        return self._all()[index]

    def __iter__(self):
        return iter(self._all())

    def __contains__(self, cell: object) -> bool:
        return cell in set(self._all())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        return f"TrainingCells({len(self)} cells, {len(self.held_out)} held out)"

    def held_out_ids(self) -> set[str]:
        return set(self._ids[self.held_out])


@dataclass(frozen=True)
class Split:
    """Training cells and the held-out targets of one split; `name` is unique within a kind."""

    name: str
    kind: str
    seed: int
    train_cells: tuple[str, ...]
    targets: tuple[Target, ...]
    skipped: tuple[str, ...] = field(default=())

    def digest(self) -> str:
        """A short hash of the split's cell ids: two runs with the same digest trained on the same cells.

        Computed once and cached. The value is the SHA-256 of `json.dumps([kind, train_cells, [asdict(t) for t in
        targets]])` (its first 16 hex digits), fed to the hash piece by piece so a cell-id tuple that several
        targets share (the controls of a context) is JSON-encoded once.
        """
        cached = self.__dict__.get("_digest")
        if cached is None:
            cached = _digest(self.kind, self.train_cells, self.targets)
            self.__dict__["_digest"] = cached  # a frozen dataclass: bypass __setattr__ (not a field)
        return cached

    def save(self, path: Path | str, obs_names: pd.Index) -> Path:
        """Write the split as integer positions into `obs_names` (the dataset's) plus the names they point at.

        An .npz file: `train` positions, every target's test positions (`test`, split by `test_offsets`), each
        distinct control set once (`controls`, `control_offsets`; `target_controls` says which one a target
        uses), the referenced cells' names and positions (`names`, `name_positions`) that `load` checks the
        positions against, and the rest (name, kind, seed, digest, labels, skipped) as JSON in `meta`.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        obs_names = pd.Index(obs_names)
        locate = _Locator(obs_names)
        train = locate(self.train_cells)
        tests = [locate(t.test_cells) for t in self.targets]
        sets: dict[int, int] = {}
        control_sets: list[np.ndarray] = []
        target_controls = []
        for t in self.targets:
            key = id(t.control_cells)
            if key not in sets:
                sets[key] = len(control_sets)
                control_sets.append(locate(t.control_cells))
            target_controls.append(sets[key])
        used = np.unique(np.concatenate([train, *tests, *control_sets]))
        meta = {
            "format": SPLIT_FORMAT,
            "name": self.name,
            "kind": self.kind,
            "seed": self.seed,
            "digest": self.digest(),
            "skipped": list(self.skipped),
            "targets": [[t.perturbation, t.context] for t in self.targets],
        }
        with open(path, "wb") as f:
            np.savez_compressed(
                f,
                meta=np.array(json.dumps(meta)),
                train=train,
                test=_concat(tests),
                test_offsets=_offsets(tests),
                controls=_concat(control_sets),
                control_offsets=_offsets(control_sets),
                target_controls=np.asarray(target_controls, dtype=np.int64),
                names=np.asarray(obs_names[used], dtype=str),
                name_positions=used,
            )
        return path

    @classmethod
    def load(cls, path: Path | str, obs_names: pd.Index | None = None) -> Split:
        """Read a split written by `save`, checking its digest, and (given the dataset's `obs_names`) that its
        positions still point at the same cells."""
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
            meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError) as e:
            raise PertbenchError(f"cannot read split file {path}: {e}") from e
        names, where = data["names"].astype(object), data["name_positions"]
        if obs_names is not None:
            inside = where < len(obs_names)
            if not inside.all() or not np.array_equal(np.asarray(obs_names[where], dtype=str), data["names"]):
                raise PertbenchError(
                    f"split file {path} does not match this dataset: its positions point at other cells"
                )

        def ids(positions: np.ndarray) -> tuple[str, ...]:
            return tuple(names[np.searchsorted(where, positions)])

        tests = np.split(data["test"], data["test_offsets"][1:-1])
        sets = [ids(c) for c in np.split(data["controls"], data["control_offsets"][1:-1])]
        split = cls(
            name=meta["name"],
            kind=meta["kind"],
            seed=int(meta["seed"]),
            train_cells=ids(data["train"]),
            targets=tuple(
                Target(perturbation=p, context=c, test_cells=ids(test), control_cells=sets[int(k)])
                for (p, c), test, k in zip(meta["targets"], tests, data["target_controls"], strict=True)
            ),
            skipped=tuple(meta.get("skipped", ())),
        )
        if split.digest() != meta["digest"]:
            raise PertbenchError(f"split file {path} is corrupted: its cell ids do not match its digest")
        return split

    def check_no_leak(self) -> None:
        """Fail loudly if any held-out cell is among the training cells (for lazily kept training cells: every
        test cell must be one of the positions left out, O(held-out cells))."""
        if isinstance(self.train_cells, TrainingCells):
            held = self.train_cells.held_out_ids()
            leaked = [c for t in self.targets for c in t.test_cells if c not in held]
            if leaked:
                raise AssertionError(f"split {self.name}: {len(leaked)} held-out cells are in training")
            return
        train = set(self.train_cells)
        for t in self.targets:
            leaked = train.intersection(t.test_cells)
            if leaked:
                raise AssertionError(f"split {self.name}: {len(leaked)} held-out cells are in training")


def _digest(kind: str, train_cells: Sequence[str], targets: tuple[Target, ...]) -> str:
    """SHA-256 (16 hex digits) of json.dumps([kind, train_cells, [asdict(t) for t in targets]]), streamed."""
    h = hashlib.sha256()
    encoded: dict[int, bytes] = {}

    def cells(ids: Sequence[str]) -> bytes:
        key = id(ids)
        if key not in encoded:
            encoded[key] = json.dumps(ids if isinstance(ids, tuple) else tuple(ids)).encode()
        return encoded[key]

    h.update(b"[" + json.dumps(kind).encode() + b", " + cells(train_cells) + b", [")
    for i, t in enumerate(targets):
        h.update(
            (", " if i else "").encode()
            + b'{"perturbation": '
            + json.dumps(t.perturbation).encode()
            + b', "context": '
            + json.dumps(t.context).encode()
            + b', "test_cells": '
            + cells(t.test_cells)
            + b', "control_cells": '
            + cells(t.control_cells)
            + b"}"
        )
    h.update(b"]]")
    return h.hexdigest()[:16]


class _Locator:
    """Positions of cell ids in obs_names (one hash lookup each); an unknown id is an error."""

    def __init__(self, obs_names: pd.Index) -> None:
        self.obs_names = obs_names

    def __call__(self, ids: tuple[str, ...]) -> np.ndarray:
        positions = self.obs_names.get_indexer(pd.Index(ids, dtype=object)).astype(np.int64)
        if (positions < 0).any():
            missing = [ids[i] for i in np.flatnonzero(positions < 0)[:3]]
            raise PertbenchError(f"cell id(s) {', '.join(map(repr, missing))} are not in the dataset")
        return positions


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _offsets(parts: list[np.ndarray]) -> np.ndarray:
    return np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64)
