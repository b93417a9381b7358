"""The split manager: the right cells held out, nothing leaks, splits repeat exactly from their saved positions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from benchmark.core.errors import PertbenchError
from benchmark.core.task import Task
from benchmark.data.splits import Split, SplitNotApplicable, make_splits

TASK = Task(perturbation_key="condition", control_label="control", context_key="cell_type")


def grouped(groups: dict[tuple[str, str], int], n_genes: int = 5) -> AnnData:
    """An AnnData with the given number of cells per (context, perturbation)."""
    obs_rows = [(c, p) for (c, p), n in groups.items() for _ in range(n)]
    obs = pd.DataFrame(obs_rows, columns=["cell_type", "condition"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    x = np.random.default_rng(0).poisson(1.0, size=(len(obs), n_genes)).astype(np.float32)
    return AnnData(X=x, obs=obs)


@pytest.fixture
def contexts() -> AnnData:
    return grouped({(c, p): 12 for c in ("A", "B", "C") for p in ("control", "stim", "drug")})


def cells_of(adata: AnnData, context: str, pert: str) -> set[str]:
    mask = (adata.obs["cell_type"] == context) & (adata.obs["condition"] == pert)
    return set(adata.obs_names[mask.to_numpy()])


def test_holdout_context_holds_out_exactly_one_group_per_split(contexts):
    splits = make_splits(contexts, TASK, "holdout_context")
    assert sorted(s.name for s in splits) == sorted(f"{c}/{p}" for c in "ABC" for p in ("drug", "stim"))
    for split in splits:
        (target,) = split.targets
        held_out = cells_of(contexts, target.context, target.perturbation)
        assert set(target.test_cells) == held_out
        assert set(split.train_cells) == set(contexts.obs_names) - held_out
        assert set(target.control_cells) == cells_of(contexts, target.context, "control")
        assert set(target.control_cells) <= set(split.train_cells)


def test_holdout_combo_keeps_singles_and_other_combos_in_training():
    adata = grouped({("k562", p): 11 for p in ("control", "A", "B", "C", "A+B", "B+C")})
    combo = Task("condition", "control", "cell_type")
    splits = {s.name: s for s in make_splits(adata, combo, "holdout_combo")}
    assert set(splits) == {"A+B", "B+C"}
    train = set(splits["A+B"].train_cells)
    assert not train & cells_of(adata, "k562", "A+B")
    for kept in ("A", "B", "B+C", "control"):
        assert cells_of(adata, "k562", kept) <= train


def test_random_split_is_seeded_and_holds_out_a_fraction_of_every_group(contexts):
    (first,) = make_splits(contexts, TASK, "random", seed=1, min_cells=2)
    (again,) = make_splits(contexts, TASK, "random", seed=1, min_cells=2)
    (other,) = make_splits(contexts, TASK, "random", seed=2, min_cells=2)
    assert first.digest() == again.digest()
    assert first.digest() != other.digest()
    assert len(first.targets) == 6  # every perturbed group of 3 contexts x 2 perturbations
    for target in first.targets:
        group = cells_of(contexts, target.context, target.perturbation)
        assert set(target.test_cells) <= group
        assert len(target.test_cells) == round(0.2 * len(group))
    first.check_no_leak()


@pytest.mark.parametrize("kind", ["holdout_context", "holdout_combo", "random"])
def test_no_held_out_cell_is_in_training(kind):
    adata = grouped({(c, p): 15 for c in ("A", "B") for p in ("control", "X", "Y", "X+Y")})
    for split in make_splits(adata, TASK, kind, min_cells=2):
        train = set(split.train_cells)
        for target in split.targets:
            assert not train & set(target.test_cells)


def test_kinds_that_do_not_apply_say_so():
    one_context = grouped({("k562", p): 12 for p in ("control", "A", "B")})
    with pytest.raises(SplitNotApplicable, match="at least two contexts"):
        make_splits(one_context, TASK, "holdout_context")
    no_combos = grouped({(c, p): 12 for c in ("A", "B") for p in ("control", "stim")})
    with pytest.raises(SplitNotApplicable, match="combination"):
        make_splits(no_combos, TASK, "holdout_combo")


def test_perturbation_seen_in_one_context_only_is_skipped_with_a_note():
    adata = grouped(
        {("A", "control"): 12, ("B", "control"): 12, ("A", "stim"): 12, ("B", "stim"): 12, ("A", "only"): 12}
    )
    splits = make_splits(adata, TASK, "holdout_context")
    assert "A/only" not in {s.name for s in splits}
    assert any("A/only" in note for note in splits[0].skipped)


def test_unknown_label_and_too_small_groups_are_clear_errors(contexts):
    with pytest.raises(PertbenchError, match="unknown perturbation label.*'nope'.*known: drug, stim"):
        make_splits(contexts, TASK, "holdout_context", perturbations=["nope"])
    with pytest.raises(PertbenchError, match="unknown split kind"):
        make_splits(contexts, TASK, "by_donor")
    with pytest.raises(PertbenchError, match="at least 50 held-out cells"):
        make_splits(contexts, TASK, "holdout_context", min_cells=50)


def test_split_round_trips_through_npz_and_detects_tampering(contexts, tmp_path):
    split = make_splits(contexts, TASK, "holdout_context")[0]
    path = split.save(tmp_path / "split.npz", contexts.obs_names)
    loaded = Split.load(path, contexts.obs_names)
    assert loaded.train_cells == split.train_cells
    assert loaded.targets == split.targets
    assert loaded.digest() == split.digest()
    with np.load(path) as f:
        data = dict(f)
    assert data["train"].dtype == np.int64  # positions, not cell-id strings
    data["train"] = np.r_[data["train"], data["test"][0]]
    np.savez(path, **data)
    with pytest.raises(PertbenchError, match="corrupted"):
        Split.load(path)


def test_a_large_control_group_is_capped_to_a_seeded_sample_per_target(monkeypatch):
    from benchmark.data import splits as splits_module

    monkeypatch.setattr(splits_module, "MIN_PREDICTED_CELLS", 20)
    adata = grouped({("A", "control"): 200, ("A", "y"): 60, ("B", "control"): 12, ("B", "y"): 60})
    controls_a = cells_of(adata, "A", "control")
    first = {t.perturbation + t.context: t for t in make_splits(adata, TASK, "random", seed=3)[0].targets}
    again = {t.perturbation + t.context: t for t in make_splits(adata, TASK, "random", seed=3)[0].targets}
    other = {t.perturbation + t.context: t for t in make_splits(adata, TASK, "random", seed=4)[0].targets}
    # y: 12 held out -> the minimum (20); the small context B keeps all its controls
    assert len(first["yA"].control_cells) == 20 and set(first["yA"].control_cells) <= controls_a
    assert set(first["yB"].control_cells) == cells_of(adata, "B", "control")
    assert first["yA"].control_cells == again["yA"].control_cells  # seeded
    assert first["yA"].control_cells != other["yA"].control_cells  # by the run seed
    held = make_splits(adata, TASK, "holdout_context", perturbations=["y"])
    (target,) = [t for s in held for t in s.targets if t.context == "A"]
    assert len(target.control_cells) == 60  # as many as the held-out group when that is larger
    assert list(target.control_cells) == sorted(target.control_cells, key=list(adata.obs_names).index)


def test_a_saved_split_is_checked_against_the_datasets_cell_names(contexts, tmp_path):
    split = make_splits(contexts, TASK, "holdout_context")[0]
    path = split.save(tmp_path / "split.npz", contexts.obs_names)
    reordered = contexts.obs_names[::-1]
    with pytest.raises(PertbenchError, match="does not match this dataset"):
        Split.load(path, reordered)


def test_digest_is_the_json_hash_of_the_cell_ids_and_is_cached(contexts):
    import hashlib
    from dataclasses import asdict

    for kind in ("holdout_context", "random"):
        for split in make_splits(contexts, TASK, kind, min_cells=2):
            payload = json.dumps([split.kind, tuple(split.train_cells), [asdict(t) for t in split.targets]])
            assert split.digest() == hashlib.sha256(payload.encode()).hexdigest()[:16]
            assert split.digest() is split.digest()


def test_targets_of_a_context_share_one_control_tuple(contexts):
    split = make_splits(contexts, TASK, "random", min_cells=2)[0]
    by_context: dict[str, set[int]] = {}
    for t in split.targets:
        by_context.setdefault(t.context, set()).add(id(t.control_cells))
    assert all(len(ids) == 1 for ids in by_context.values()) and len(by_context) == 3


def _leave_perturbation_out(groups, wanted, seed, min_cells):
    """A toy kind: each perturbation held out in every context at once (a single-gene holdout_combo)."""
    splits = []
    for pert in sorted(wanted):
        held = np.concatenate([groups.cells(c, pert) for c in groups.context_labels()])
        targets = [
            t
            for c in groups.context_labels()
            if (t := groups.target(c, pert, groups.cells(c, pert), min_cells, seed)) is not None
        ]
        if targets:
            splits.append(
                Split(pert, "leave_perturbation_out", seed, groups.train_without(held), tuple(targets))
            )
    return splits


def test_a_split_kind_registered_in_one_place_reaches_splits_scoring_and_tuning(monkeypatch):
    """One SplitKind object: make_splits builds it, the engine takes its comparison pool, tuning its blocks."""
    from benchmark.core.pseudobulk import group_profiles
    from benchmark.data import splits as splits_module
    from benchmark.data.datasets import Dataset
    from benchmark.data.synthetic import make_synthetic
    from benchmark.scoring.evaluate import OtherDeltas, other_deltas
    from benchmark.selection import tuning

    kind = splits_module.SplitKind(
        "leave_perturbation_out",
        _leave_perturbation_out,
        "each perturbation held out in every context",
        compares_contexts=False,
        tuning_blocks=lambda splits, seed, folds: [f"pert={s.name}" for s in splits],
        applies=lambda adata, task: False,
    )
    monkeypatch.setitem(splits_module.SPLIT_KINDS, kind.name, kind)
    adata = make_synthetic(n_genes=30, n_contexts=3, n_perturbations=3, cells_per_group=30, seed=2)
    task = Task("condition", "control", "cell_type", expression="counts")
    built = make_splits(adata, task, kind.name)
    assert [s.name for s in built] == ["P0", "P1", "P2"]
    assert all(len(s.targets) == 3 for s in built)  # every context of the perturbation
    profiles = group_profiles(adata, task)
    pool = OtherDeltas(*profiles, "control", kind.name)("P0", "C0", 10)
    assert pool is not None and pool.shape[0] == 2  # the other perturbations of C0, as the kind declares
    np.testing.assert_array_equal(pool, other_deltas(*profiles, "control", kind.name, "P0", "C0", 10))
    dataset = Dataset("toy", adata, task, "sum", "test", kind.name)
    assert [b.name for b in tuning.outer_blocks(dataset, kind.name)] == ["pert=P0", "pert=P1", "pert=P2"]
    assert splits_module.default_split_kind(adata, task) == "holdout_context"  # it never applies as a default
    with pytest.raises(
        PertbenchError, match="unknown split kind 'nope'; known kinds: .*leave_perturbation_out"
    ):
        make_splits(adata, task, "nope")


def test_splits_keep_their_training_cells_as_held_out_positions_until_read():
    """Making the splits of many contexts is O(cells): no split copies every training id until one is read,
    and reading gives exactly the complement of its held-out cells, with the digest of that tuple."""
    from benchmark.data import splits as splits_module
    from benchmark.data.synthetic import make_synthetic

    adata = make_synthetic(n_genes=20, n_contexts=6, n_perturbations=2, cells_per_group=15, seed=4)
    task = Task("condition", "control", "cell_type", expression="counts")
    built = make_splits(adata, task, "holdout_context")
    assert len(built) == 12
    assert all(isinstance(s.train_cells, splits_module.TrainingCells) for s in built)
    assert all(s.train_cells._cells is None for s in built)  # nothing materialized by make_splits
    split = built[3]
    held = {c for t in split.targets for c in t.test_cells}
    expected = tuple(c for c in adata.obs_names if c not in held)
    assert len(split.train_cells) == len(expected) and split.train_cells._cells is None  # len is free
    assert tuple(split.train_cells) == expected and split.train_cells == expected
    assert split.digest() == splits_module._digest(split.kind, expected, split.targets)
    assert all(s.train_cells._cells is None for s in built if s is not split)
