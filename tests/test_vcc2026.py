"""The vcc2026 profile: hand-computed cases of each member, and parity with cell-eval2 itself on an exported split."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from benchmark.data.synthetic import make_synthetic
from benchmark.scoring import vcc2026 as v
from benchmark.scoring import vcc2026_de as de
from benchmark.scoring.ranksum import ControlRanks

CELL_EVAL2_SCRIPT = Path(__file__).with_name("vcc2026_cell_eval2.py")
CONTROL = "non-targeting"


def _table(lfc, padj, kept=None, pvalue=None, labels=("T",)) -> de.DETable:
    lfc = np.atleast_2d(np.asarray(lfc, dtype=float))
    padj = np.atleast_2d(np.asarray(padj, dtype=float))
    kept = np.ones(lfc.shape[1], dtype=bool) if kept is None else np.asarray(kept)
    pvalue = padj if pvalue is None else np.atleast_2d(np.asarray(pvalue, dtype=float))
    return de.DETable(tuple(labels), kept, lfc, pvalue, padj)


def test_bulk_and_jackknife_by_hand():
    x = np.array([[1.0, 3.0], [3.0, 1.0]])
    assert np.allclose(v.bulk(x), np.log1p([v.BULK_TARGET_SUM / 2, v.BULK_TARGET_SUM / 2]))
    # leave-one-out bulks: (3, 1)/4 and (1, 3)/4, about the full bulk (1/2, 1/2)
    lo, hi = np.log1p(v.BULK_TARGET_SUM / 4), np.log1p(3 * v.BULK_TARGET_SUM / 4)
    per_gene = (lo - hi) ** 2 / 2  # Σ_i (V_i - V̄)² with V̄ the mean of the two
    assert v.jackknife(x) == pytest.approx(0.5 * 2 * per_gene)
    assert v.jackknife(x[:1]) == 0.0


def test_wilcoxon_has_no_continuity_correction():
    rng = np.random.default_rng(0)
    c, x = rng.poisson(2.0, (30, 5)).astype(float), rng.poisson(3.0, (20, 5)).astype(float)
    want = [
        mannwhitneyu(x[:, g], c[:, g], use_continuity=False, method="asymptotic").pvalue for g in range(5)
    ]
    assert np.allclose(de.wilcoxon_pvalues(x, ControlRanks(c)), want, rtol=1e-12)


def test_sig_jaccard_leaves_out_the_own_gene_and_scores_an_empty_union_one():
    real = _table([1, 1, 1, 1], [0.01, 0.01, 0.5, 0.01])
    pred = _table([1, 1, 1, 1], [0.01, 0.5, 0.01, 0.01])
    assert de.sig_jaccard(real, pred, "T", None) == pytest.approx(2 / 4)  # {0,1,3} vs {0,2,3}
    assert de.sig_jaccard(real, pred, "T", 3) == pytest.approx(1 / 3)
    none = _table([1, 1], [0.5, 0.5])
    assert de.sig_jaccard(none, none, "T", None) == 1.0


def test_lfc_nmae_counts_an_untested_gene_as_no_change_and_omits_small_gates():
    n = de.MIN_GATE_SIZE
    real = _table(np.full(n, 2.0), np.full(n, 0.01))
    kept = np.ones(n, dtype=bool)
    kept[0] = False  # the prediction did not test gene 0: its lfc counts as 0
    pred = _table(np.full(n, 1.0), np.full(n, 0.5), kept=kept)
    assert de.lfc_nmae(real, pred, "T", None) == pytest.approx(((n - 1) * 1.0 + 2.0) / n / 2.0)
    assert math.isnan(de.lfc_nmae(real, pred, "T", 3))  # n - 1 gated genes left


def test_direction_members_by_hand():
    real = _table([1, 1, -1, -1, 1], [0.01, 0.01, 0.01, 0.01, 0.5])
    # predicted significant: genes 0 (right), 2 (wrong), 4 (not adjudicable: real not significant but signed)
    pred = _table([1, 1, 1, -1, 1], [0.001, 0.5, 0.002, 0.6, 0.003], pvalue=[0.001, 0.5, 0.002, 0.6, 0.003])
    # n_conf = 4, scored = {0, 2, 4} (all adjudicable: real lfc nonzero), k = 2 (genes 0 and 4)
    assert de.direction_fidelity_yield_raw(real, pred, "T", None) == pytest.approx(2 / 4)
    genes = np.array(["a", "b", "c", "d", "e"])
    # pool = real-significant genes ranked by the prediction: 0 (match), 2 (miss), 1 (match), 3 (match)
    # purity 1, 1/2, 2/3, 3/4: the deepest prefix at >= 0.9 is k* = 1
    assert de.direction_reach_raw(real, pred, "T", None, genes) == pytest.approx(1 / 4)
    perfect = _table([1, 1, -1, -1, 1], [0.001, 0.002, 0.003, 0.004, 0.5])
    assert de.direction_reach_raw(real, perfect, "T", None, genes) == 1.0
    assert de.direction_fidelity_yield_raw(real, perfect, "T", None) == 1.0
    # without gene 0 (the target's own), the ranking opens with a miss and never recovers to 0.9
    assert de.direction_reach_raw(real, pred, "T", 0, genes) == 0.0
    assert math.isnan(de.direction_reach_raw(_table(np.ones(5), np.full(5, 0.5)), perfect, "T", None, genes))


def test_pds_ranks_the_own_effect_with_midranks():
    real = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.allclose(v._pds(real, real, [None] * 3), 1.0)
    swapped = real[[1, 0, 2]]
    # target 0's prediction is at distance 1 from its own effect and from target 2's: midrank 1.5 of 0..2
    assert np.allclose(v._pds(swapped, real, [None] * 3), [0.25, 0.25, 1.0])
    zero = np.zeros_like(real)  # every real effect ties at distance 1: midrank 1 of 0..2
    assert np.allclose(v._pds(zero, real, [None] * 3), 0.5)


def test_rescale_ends_and_clamps():
    assert v.rescale(v.PDS, 0.75, 0.5, 1.0) == pytest.approx(0.5)
    assert v.rescale(v.JACCARD, 0.1, 0.2, 0.6) == pytest.approx(-0.25)  # unfloored
    assert v.rescale(v.EXPR, 0.3, 0.8, 0.05) == pytest.approx(1 - 0.25 / 0.75)
    assert v.rescale(v.EXPR, 2.0, 0.8, 0.05) == 0.0 and v.rescale(v.EXPR, -1.0, 0.8, 0.05) == 1.0
    assert v.rescale(v.NMAE, 10.0, 0.7, 0.3) == -6.0
    assert math.isnan(v.rescale(v.PDS, 0.7, 0.5, 0.5))


def test_split_halves_are_disjoint_and_seeded():
    x = np.arange(10.0)[:, None]
    panel = v.Panel(x, {"A": x + 100, "B": x[:5] + 200}, np.array(["g"]), {})
    a, b = v.split_halves(panel, 3)
    assert a.groups["B"].shape[0] == b.groups["B"].shape[0] == 2  # an odd group drops a cell
    assert not set(a.control.ravel()) & set(b.control.ravel())
    a2, _ = v.split_halves(panel, 3)
    assert np.array_equal(a.groups["A"], a2.groups["A"])
    assert v.anchor_seeds(2) == [int(s) for s in np.random.SeedSequence(0).generate_state(2)]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _score_args(data: Path, predictions: Path, expression: str) -> list[str]:
    return [
        "score", "--predictions", str(predictions), "--name", "half", "--data", str(data),
        "--perturbation-key", "condition", "--control", "control", "--context-key", "cell_type",
        "--expression", expression, "--split", "random", "--profile", "vcc2026", "--no-figures", "--no-leaderboard",
    ]  # fmt: skip


def _counts_split(directory: Path, expression: str = "counts") -> tuple[Path, Path]:
    """A small counts dataset and a predictions file of half of each held-out target's own cells (lognorm)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from benchmark.core.task import Task, lognormalize
    from benchmark.data.splits import make_splits

    a = make_synthetic(n_genes=80, n_contexts=2, n_perturbations=3, cells_per_group=60, seed=2)
    a.uns = {}
    if expression == "lognorm":
        a.X = lognormalize(a.X)
    task = Task("condition", "control", "cell_type", expression=expression)
    (split,) = make_splits(a, task, "random", seed=0)
    parts, obs = [], []
    for t in split.targets:
        rows = a.obs_names.get_indexer(list(t.test_cells))[::2]
        x = a[rows].X
        parts.append(x if expression == "lognorm" else lognormalize(x))
        obs += [(t.perturbation, t.context)] * rows.size
    pred = ad.AnnData(
        sp.vstack(parts).tocsr(),
        obs=pd.DataFrame(obs, columns=["perturbation", "context"], index=[f"p{i}" for i in range(len(obs))]),
        var=pd.DataFrame(index=a.var_names),
    )
    paths = directory / "data.h5ad", directory / "pred.h5ad"
    a.write_h5ad(paths[0])
    pred.write_h5ad(paths[1])
    return paths


def test_the_baseline_reads_only_training_cells(monkeypatch):
    from benchmark.core.task import Task
    from benchmark.data.datasets import Dataset
    from benchmark.data.splits import make_splits
    from benchmark.execution import vcc2026 as run

    a = make_synthetic(n_genes=30, n_contexts=2, n_perturbations=3, cells_per_group=60, seed=4)
    dataset = Dataset(
        "s", a, Task("condition", "control", "cell_type", expression="counts"), "", "", "random"
    )
    (split,) = make_splits(a, dataset.task, "random", seed=0)
    held_out = {c for t in split.targets for c in t.test_cells}
    rows = run.baseline_rows(dataset, split, "C0")
    names = set(a.obs_names[rows])
    assert names and not names & held_out and names <= set(split.train_cells)
    assert set(a.obs["cell_type"].iloc[rows]) == {"C0"} and "control" not in set(
        a.obs["condition"].iloc[rows]
    )
    monkeypatch.setattr(run, "BASELINE_MAX_CELLS", 10)
    assert np.array_equal(run.baseline_rows(dataset, split, "C0"), run.baseline_rows(dataset, split, "C0"))
    assert run.baseline_rows(dataset, split, "C0").size == 10


def test_score_profile_needs_counts(workdir, capsys):
    from benchmark.cli import main

    data, pred = _counts_split(workdir, expression="lognorm")
    code = main(_score_args(data, pred, "lognorm"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("bench: error:") and "needs raw counts" in err[-1], err


def test_score_profile_prints_and_logs_the_vcc2026_table(workdir, capsys):
    import mlflow

    from benchmark.cli import main

    data, pred = _counts_split(workdir)
    assert main(_score_args(data, pred, "counts")) == 0
    out = capsys.readouterr().out
    assert "Virtual Cell Challenge 2026 score" in out and "pds_cosine" in out
    runs = mlflow.MlflowClient().search_runs(
        [e.experiment_id for e in mlflow.search_experiments()], max_results=50
    )
    logged = set().union(*(r.data.metrics for r in runs))
    assert {f"vcc2026/{m}" for m in v.MEMBERS} <= logged
    assert "vcc2026/score" in logged and f"vcc2026/{v.PDS}_rescaled" in logged


def _export(directory: Path) -> tuple[Path, Path]:
    """A small counts split: one context, 6 targets named after genes (one after no gene), real and predicted
    cells disjoint halves of the same synthetic draw, two targets' predictions swapped."""
    a = make_synthetic(
        n_genes=150,
        n_contexts=1,
        n_perturbations=6,
        cells_per_group=70,
        seed=3,
        effect_size=0.8,
        frac_affected=0.15,
    )
    a.uns = {}
    genes = a.var_names.to_numpy()
    names = {f"P{i}": str(genes[5 * i]) for i in range(5)} | {"P5": "NOTAGENE", "control": CONTROL}
    labels = np.array([names[x] for x in a.obs["condition"].astype(str)])
    a.obs = a.obs.assign(target=labels)[["target"]]
    half = np.random.default_rng(1).random(a.n_obs) < 0.5
    real, pred = a[half].copy(), a[~half].copy()
    swap = {names["P0"]: names["P1"], names["P1"]: names["P0"]}
    pred.obs["target"] = [swap.get(t, t) for t in pred.obs["target"].astype(str)]
    paths = directory / "real.h5ad", directory / "pred.h5ad"
    real.write_h5ad(paths[0])
    pred.write_h5ad(paths[1])
    return paths


def _panel_of(path: Path) -> tuple[v.Panel, dict]:
    import anndata as ad

    a = ad.read_h5ad(path)
    lab = a.obs["target"].astype(str).to_numpy()
    groups = {t: a.X[lab == t] for t in sorted(set(lab)) if t != CONTROL}
    genes = a.var_names.to_numpy()
    return v.Panel(a.X[lab == CONTROL], groups, genes, v.own_genes(groups, genes)), groups


def _cell_eval2_python() -> str | None:
    candidate = os.environ.get("PERTBENCH_CELL_EVAL2") or "/work/venvs/ce2/bin/python"
    return candidate if Path(candidate).exists() else None


@pytest.mark.integration
@pytest.mark.parametrize("backend", sorted(de.DE_BACKENDS))
def test_parity_with_cell_eval2(tmp_path, backend):
    python = _cell_eval2_python()
    if python is None:
        pytest.skip("no cell-eval2 venv: set PERTBENCH_CELL_EVAL2 to its python (see docs/vcc2026.md)")
    if backend == "pdex" and subprocess.run([python, "-c", "import pdex"], capture_output=True).returncode:
        pytest.skip("pdex is not installed in the cell-eval2 venv")
    real_path, pred_path = _export(tmp_path)
    run = subprocess.run(
        [python, str(CELL_EVAL2_SCRIPT), str(real_path), str(pred_path), str(tmp_path), backend],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads((tmp_path / "cell_eval2.json").read_text())
    assert sorted(theirs["members"]) == sorted(v.MEMBERS)
    real, _ = _panel_of(real_path)
    _, pred = _panel_of(pred_path)
    _, baseline = _panel_of(tmp_path / "baseline.h5ad")
    ours = v.score(real, pred, baseline, de_backend=backend)
    assert theirs["de_backend"] == backend
    for key, mine in (
        ("aggregate", ours.members),
        ("baseline", ours.baseline),
        ("anchor", ours.anchor),
        ("rescaled", ours.rescaled),
    ):
        for m in v.MEMBERS:
            assert mine[m] == pytest.approx(theirs[key][m], abs=1e-6), (key, m)
    for m in (v.PDS, v.FIDELITY, v.REACH, v.JACCARD, v.NMAE):
        want = {t: x for t, x in theirs["rows"][m].items() if x is not None}
        got = {t: x for t, x in ours.per_target[m].items() if not math.isnan(x)}
        assert got == pytest.approx(want, abs=1e-6), m
    assert ours.score == pytest.approx(theirs["score"], abs=1e-6)
    assert 0.0 < ours.rescaled[v.PDS] < 1.0  # the swapped targets are not retrieved: the case is not trivial


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
