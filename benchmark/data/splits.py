"""The split manager: named, seeded train/test splits saved as cell ids so a run can be repeated exactly.

Kinds:
- `holdout_context`: for perturbation p and context t, train on everything except the (t, p) cells and predict
  (t, p) from the (t, control) cells. One split per (t, p) where p is also seen in another context.
- `holdout_combo`: each combination `A+B` is held out; its singles, the control and other combinations train.
- `random`: a seeded fraction of every perturbed group is held out (an in-distribution check).
A kind that does not apply to a dataset raises SplitNotApplicable, which the harness reports instead of running.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.scoring.metrics import subsample_index

MIN_CELLS = 10
"""Fewest cells a held-out group, or the control group of its context, may have."""
RANDOM_TEST_FRACTION = 0.2
MIN_PREDICTED_CELLS = 500
"""Fewest control cells a target gives its predictor (when its context has them): the control cells of a target
are a seeded sample of its context's controls, as many as the held-out group and at least this many, so a
10k-control context does not cost 10k predicted cells per target. No committed dataset has a context with more
than 278 controls, so there the sample is every control cell."""
MAX_SCORED_CELLS = 10_000
"""Most cells of one target that are scored, and most control cells its predictor is given: a held-out group
larger than this is scored on a seeded uniform sample of this many of its cells (`scored_test_cells`, the same for
every predictor and seed), and its control sample stops at this many. A target's memory is then O(MAX_SCORED_CELLS
x genes) however large the dataset (on the 1M-cell grid a held-out group has 83,000 cells: each dense copy of it
was 1.3 GB). Its means are over 10,000 cells and the cell-level scores already use at most MAX_DISTANCE_CELLS;
no committed dataset has a group this large, so their scores do not move."""


class SplitNotApplicable(PertbenchError):
    """The split kind does not apply to this dataset (e.g. holdout_context with one context)."""


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


def make_splits(
    adata: AnnData,
    task: Task,
    kind: str,
    seed: int = 0,
    perturbations: Iterable[str] | None = None,
    min_cells: int = MIN_CELLS,
) -> list[Split]:
    """All splits of `kind` for a dataset, optionally restricted to some perturbation labels."""
    builder = split_kind(kind).build
    groups = Groups(adata, task)
    wanted = groups.check_wanted(perturbations)
    splits = builder(groups, wanted, seed, min_cells)
    if not splits:
        raise PertbenchError(
            f"split {kind} has no group with at least {min_cells} held-out cells and {min_cells} control cells"
            + (f" (skipped: {'; '.join(groups.skipped[:5])})" if groups.skipped else "")
        )
    for split in splits:
        split.check_no_leak()
    return splits


class Groups:
    """Cell ids grouped by (context, perturbation), computed once per dataset."""

    def __init__(self, adata: AnnData, task: Task) -> None:
        self.task = task
        self.ids = np.asarray(adata.obs_names, dtype=object)
        self.perts = task.perturbations(adata)
        self.contexts = task.contexts(adata)
        self.skipped: list[str] = []
        self._controls: dict[str, tuple[str, ...]] = {}  # one tuple per context, shared by its targets
        frame = pd.DataFrame({"context": self.contexts, "pert": self.perts})
        self.index: dict[tuple[str, str], np.ndarray] = {
            (str(c), str(p)): np.asarray(idx)
            for (c, p), idx in frame.groupby(["context", "pert"]).indices.items()
        }

    def perturbation_labels(self) -> list[str]:
        """Every non-control label, sorted."""
        return sorted({p for _, p in self.index if p != self.task.control_label})

    def context_labels(self) -> list[str]:
        return sorted({c for c, _ in self.index})

    def check_wanted(self, perturbations: Iterable[str] | None) -> set[str]:
        """The perturbation labels to hold out; an unknown label is an error that lists the known ones."""
        known = self.perturbation_labels()
        if perturbations is None:
            return set(known)
        wanted = set(perturbations)
        unknown = sorted(wanted - set(known))
        if unknown:
            raise PertbenchError(
                f"unknown perturbation label(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
            )
        return wanted

    def cells(self, context: str, pert: str) -> np.ndarray:
        return self.index.get((context, pert), np.empty(0, dtype=int))

    def target(
        self, context: str, pert: str, test_idx: np.ndarray, min_cells: int, seed: int
    ) -> Target | None:
        """A Target for (context, pert), or None (recorded in `skipped`) when a group is too small."""
        control_idx = self.cells(context, self.task.control_label)
        if len(test_idx) < min_cells or len(control_idx) < min_cells:
            self.skipped.append(
                f"{context}/{pert}: {len(test_idx)} held-out and {len(control_idx)} control cells, "
                f"a split needs {min_cells} of each"
            )
            return None
        capped = capped_controls(control_idx, len(test_idx), seed, f"{context}\0{pert}")
        if len(capped) < len(control_idx):  # a sample of its own
            return Target(pert, context, tuple(self.ids[test_idx]), tuple(self.ids[capped]))
        if context not in self._controls:  # every control cell: one tuple shared by the context's targets
            self._controls[context] = tuple(self.ids[control_idx])
        return Target(pert, context, tuple(self.ids[test_idx]), self._controls[context])

    def train_without(self, held_out: np.ndarray) -> TrainingCells:
        return TrainingCells(self.ids, held_out)


def capped_controls(control_idx: np.ndarray, n_test: int, seed: int, key: str) -> np.ndarray:
    """The control positions a target gives its predictor: all of them, or a seeded sorted sample of
    max(n_test, MIN_PREDICTED_CELLS), at most MAX_SCORED_CELLS, when the context has more (the sample depends on
    seed and target only)."""
    n = min(max(n_test, MIN_PREDICTED_CELLS), MAX_SCORED_CELLS)
    if len(control_idx) <= n:
        return control_idx
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return np.sort(rng.choice(control_idx, size=n, replace=False))


def scored_test_cells(test_cells: tuple[str, ...]) -> tuple[str, ...]:
    """The held-out cells a target is scored on: all of them up to MAX_SCORED_CELLS, else that many, sorted, drawn
    uniformly as `metrics.subsample_index` draws them (seeded by SUBSAMPLE_SEED and the group's size)."""
    if len(test_cells) <= MAX_SCORED_CELLS:
        return test_cells
    return tuple(test_cells[i] for i in subsample_index(len(test_cells), MAX_SCORED_CELLS))


def _holdout_context(groups: Groups, wanted: set[str], seed: int, min_cells: int) -> list[Split]:
    contexts = groups.context_labels()
    if len(contexts) < 2:
        raise SplitNotApplicable(
            f"holdout_context needs at least two contexts; this dataset has {len(contexts)} ({', '.join(contexts)})"
        )
    splits = []
    present: dict[str, int] = {}  # contexts holding each perturbation
    for _, p in groups.index:
        present[p] = present.get(p, 0) + 1
    for context in contexts:
        for pert in sorted(wanted):
            test_idx = groups.cells(context, pert)
            if len(test_idx) == 0:
                continue
            seen_elsewhere = present.get(pert, 0) > 1
            if not seen_elsewhere:
                groups.skipped.append(f"{context}/{pert}: perturbation seen in no other context")
                continue
            target = groups.target(context, pert, test_idx, min_cells, seed)
            if target is not None:
                splits.append(
                    Split(
                        f"{context}/{pert}",
                        "holdout_context",
                        seed,
                        groups.train_without(test_idx),
                        (target,),
                    )
                )
    return _with_skipped(splits, groups)


def _holdout_combo(groups: Groups, wanted: set[str], seed: int, min_cells: int) -> list[Split]:
    combos = [p for p in sorted(wanted) if len(groups.task.genes_of(p)) > 1]
    if not any(len(groups.task.genes_of(p)) > 1 for p in groups.perturbation_labels()):
        raise SplitNotApplicable(
            f"holdout_combo needs combination perturbations (labels joined by "
            f"{groups.task.combo_separator!r}); this dataset has none"
        )
    splits = []
    for pert in combos:
        held_out = np.concatenate([groups.cells(c, pert) for c in groups.context_labels()])
        targets = [
            t
            for c in groups.context_labels()
            if len(groups.cells(c, pert))
            and (t := groups.target(c, pert, groups.cells(c, pert), min_cells, seed)) is not None
        ]
        if targets:
            splits.append(Split(pert, "holdout_combo", seed, groups.train_without(held_out), tuple(targets)))
    return _with_skipped(splits, groups)


def _random(groups: Groups, wanted: set[str], seed: int, min_cells: int) -> list[Split]:
    rng = np.random.default_rng(seed)
    held_out, targets = [], []
    for context in groups.context_labels():
        for pert in sorted(wanted):
            idx = groups.cells(context, pert)
            if len(idx) == 0:
                continue
            n_test = int(round(RANDOM_TEST_FRACTION * len(idx)))
            test_idx = np.sort(rng.choice(idx, size=n_test, replace=False))
            target = groups.target(context, pert, test_idx, min_cells, seed)
            if target is not None:
                held_out.append(test_idx)
                targets.append(target)
    if not targets:
        return []
    split = Split(
        f"random_{seed}", "random", seed, groups.train_without(np.concatenate(held_out)), tuple(targets)
    )
    return _with_skipped([split], groups)


def _with_skipped(splits: list[Split], groups: Groups) -> list[Split]:
    """Attach the list of skipped groups to every split so the run can report them."""
    skipped = tuple(groups.skipped)
    return [Split(s.name, s.kind, s.seed, s.train_cells, s.targets, skipped) for s in splits]


SPLIT_FORMAT = 1
"""Version of the .npz layout `Split.save` writes."""


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


# ---------------------------------------------------------------------------------------------- split kinds


def _by_context(splits: list[Split], seed: int, folds: int) -> list[str]:
    return [f"context={s.targets[0].context}" for s in splits]


def _by_fold(splits: list[Split], seed: int, folds: int) -> list[str]:
    n = min(folds, len(splits))
    order = np.random.default_rng(seed).permutation(len(splits))
    fold_of = {int(i): pos % n for pos, i in enumerate(order)}
    return [f"fold={fold_of[i] + 1}/{n}" for i in range(len(splits))]


def _by_split(splits: list[Split], seed: int, folds: int) -> list[str]:
    return [s.name for s in splits]


def _several_contexts(adata: AnnData, task: Task) -> bool:
    return task.context_key is not None and np.unique(task.contexts(adata)).size > 1


def has_combinations(adata: AnnData, task: Task) -> bool:
    """Some label combines perturbations that each occur alone (a '+' inside one name is not a combination)."""
    labels = set(np.unique(task.perturbations(adata)).astype(str))
    return any(len(genes) > 1 and set(genes) <= labels for genes in map(task.genes_of, labels))


def joined_labels(adata: AnnData, task: Task) -> list[str]:
    """Labels that hold the combination separator although their parts are not all labels: names, not combos."""
    labels = set(np.unique(task.perturbations(adata)).astype(str))
    return sorted(p for p in labels if len(genes := task.genes_of(p)) > 1 and not set(genes) <= labels)


@dataclass(frozen=True)
class SplitKind:
    """A split kind and every rule that depends on it, so adding one touches one place (`register_split_kind`)."""

    name: str
    build: Callable[[Groups, set[str], int, int], list[Split]]
    """(groups, labels to hold out, seed, min cells) -> the splits; SplitNotApplicable when the data cannot."""
    description: str
    compares_contexts: bool
    """`discrimination`'s comparison groups: the same perturbation in the other contexts (True, context
    specificity), or the other perturbations of the target's context (False)."""
    tuning_blocks: Callable[[list[Split], int, int], list[str]]
    """(outer splits, seed, folds) -> each split's tuning block (`bench tune` tunes a block once)."""
    applies: Callable[[AnnData, Task], bool]
    """Whether the kind can be the default of a card-less dataset (kinds are tried in registration order)."""


SPLIT_KINDS: dict[str, SplitKind] = {}
"""Registered split kinds by name, in the order a card-less dataset's default is guessed."""


def register_split_kind(kind: SplitKind) -> SplitKind:
    """Add a split kind; the CLI, tuning, the engine's comparison pool and the default guess all read it here."""
    if kind.name in SPLIT_KINDS or kind.name in ("all", "default"):
        raise ValueError(f"split kind {kind.name!r} is already registered or reserved")
    SPLIT_KINDS[kind.name] = kind
    return kind


def split_kind(name: str) -> SplitKind:
    """The registered kind `name`; an unknown name is a one-line error listing the known ones."""
    if name not in SPLIT_KINDS:
        raise PertbenchError(f"unknown split kind {name!r}; known kinds: {', '.join(SPLIT_KINDS)}")
    return SPLIT_KINDS[name]


def default_split_kind(adata: AnnData, task: Task) -> str:
    """The first registered kind that applies to the data (contexts, else combinations, else random)."""
    return next(k.name for k in SPLIT_KINDS.values() if k.applies(adata, task))


register_split_kind(
    SplitKind(
        "holdout_context",
        _holdout_context,
        "each (context, perturbation) held out in turn; predicted from that context's controls",
        compares_contexts=True,
        tuning_blocks=_by_context,
        applies=_several_contexts,
    )
)
register_split_kind(
    SplitKind(
        "holdout_combo",
        _holdout_combo,
        "each combination A+B held out in every context; its singles stay in training",
        compares_contexts=False,
        tuning_blocks=_by_fold,
        applies=has_combinations,
    )
)
register_split_kind(
    SplitKind(
        "random",
        _random,
        "a seeded fraction of every perturbed group held out, one split per seed",
        compares_contexts=False,
        tuning_blocks=_by_split,
        applies=lambda adata, task: True,
    )
)
