"""`bench score --profile vcc2026`: the Virtual Cell Challenge 2026 score of a predictions file, per split and context.

Each (split, context) is one panel: the control cells the split gives the context's targets (their union), the held-out targets' real
counts and their predicted cells. The baseline (0) is a generic response: the split's training perturbed cells of
the context (of every context when the context has none), the same cells for every target. The anchor (1) is the
split-half replicate of the targets' own real cells. Nothing else of the test data is read.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmark.core.errors import PertbenchError
from benchmark.data.datasets import Dataset
from benchmark.data.splits import Split, make_splits
from benchmark.execution.options import RunResult
from benchmark.scoring import vcc2026 as vcc
from benchmark.tracking import runs

PROFILES = ("default", "vcc2026")
BASELINE_MAX_CELLS = 2000
"""The baseline's pool of training cells is subsampled (seeded by the split's seed) to at most this many."""
METRIC_PREFIX = "vcc2026/"


def check_applies(dataset: Dataset) -> None:
    """The profile needs raw counts for the real cells: a one-line error otherwise."""
    if dataset.task.expression != "counts":
        raise PertbenchError(
            f"--profile vcc2026 needs raw counts for the real cells; dataset {dataset.name} holds "
            f"{dataset.task.expression} values (load its counts file with --expression counts)"
        )


def predicted_counts(x) -> np.ndarray | sp.csr_matrix:
    """Depth-normalized pseudo-counts expm1(x) of log-normalized predicted cells (what the profile reads as counts)."""
    if sp.issparse(x):
        out = sp.csr_matrix(x, dtype=np.float64, copy=True)
        np.expm1(out.data, out=out.data)
        return out
    return np.expm1(np.asarray(x, dtype=np.float64))


def _rows(dataset: Dataset, ids) -> np.ndarray:
    return dataset.adata.obs_names.get_indexer(list(ids))


def baseline_rows(dataset: Dataset, split: Split, context: str) -> np.ndarray:
    """Rows of the baseline's cells: the split's training perturbed cells of `context` (of every context when it
    has none), subsampled to BASELINE_MAX_CELLS with the split's seed."""
    adata, task = dataset.adata, dataset.task
    train = _rows(dataset, split.train_cells)
    perturbed = train[~task.is_control(adata[train])]
    contexts = task.contexts(adata[perturbed])
    pool = perturbed[contexts == context] if np.any(contexts == context) else perturbed
    if pool.size == 0:
        raise PertbenchError(f"split {split.name} has no training perturbed cells for the vcc2026 baseline")
    if pool.size > BASELINE_MAX_CELLS:
        pool = np.sort(np.random.default_rng(split.seed).choice(pool, BASELINE_MAX_CELLS, replace=False))
    return pool


def split_panels(dataset: Dataset, split: Split, groups: dict) -> dict[str, tuple[vcc.Panel, dict, object]]:
    """Per context of the split: (real panel, predicted pseudo-counts per target, baseline counts)."""
    by_context = defaultdict(list)
    for target in split.targets:
        if (target.perturbation, target.context) in groups:
            by_context[target.context].append(target)
    genes = dataset.adata.var_names.to_numpy()
    out = {}
    for context, targets in by_context.items():
        controls = np.unique(np.concatenate([_rows(dataset, t.control_cells) for t in targets]))
        control = dataset.adata[controls].X  # one pool per panel: every control cell given to its targets
        real = {t.perturbation: dataset.adata[_rows(dataset, t.test_cells)].X for t in targets}
        own = {p: g for p, g in vcc.own_genes(real, genes).items()}
        for t in targets:
            parts = dataset.task.genes_of(t.perturbation)
            if len(parts) != 1:  # a combination perturbs no single gene
                own[t.perturbation] = None
        pred = {t.perturbation: predicted_counts(groups[(t.perturbation, t.context)].X) for t in targets}
        out[context] = (
            vcc.Panel(control, real, genes, own),
            pred,
            dataset.adata[baseline_rows(dataset, split, context)].X,
        )
    return out


def score_vcc2026(
    dataset: Dataset, split_kind: str, seed: int, groups: dict, result: RunResult
) -> pd.DataFrame:
    """The profile's table (one row per split and context: each member, its rescaled value, the score), logged to
    the parent run (step = split index) and each target's child run (its own rows of the members)."""
    splits = make_splits(dataset.adata, dataset.task, split_kind, seed=seed)
    run_ids = {(r.split, r.perturbation, r.context): r.run_id for r in result.results if r.run_id}
    rows = []
    for step, split in enumerate(splits):
        for context, (panel, pred, base) in split_panels(dataset, split, groups).items():
            scored = vcc.score(panel, pred, {t: base for t in panel.labels})
            row = {
                "split": split.name,
                "context": context,
                "targets": len(panel.labels),
                "score": scored.score,
            }
            for m in vcc.MEMBERS:
                row[m] = scored.members[m]
                row[f"{m}_rescaled"] = scored.rescaled[m]
            rows.append(row)
            runs.log_metrics(
                result.parent_run_id,
                {f"{METRIC_PREFIX}{k}": float(v) for k, v in row.items() if isinstance(v, float)},
                step=step,
            )
            for t in panel.labels:
                run_id = run_ids.get((split.name, t, context))
                if run_id:
                    own = {m: scored.per_target[m][t] for m in vcc.MEMBERS if m in scored.per_target}
                    runs.log_metrics(
                        run_id, {f"{METRIC_PREFIX}{m}": v for m, v in own.items() if not math.isinf(v)}
                    )
    return pd.DataFrame(rows)


def print_vcc2026(table: pd.DataFrame) -> None:
    """The profile's table: per split and context the score and each member raw -> rescaled."""
    print(
        "\nVirtual Cell Challenge 2026 score (cell-eval2 vcc2026: 0 = generic baseline, 1 = replicate anchor)"
    )
    if table.empty:
        print("  no split had predicted cells")
        return
    short = {m: m.removeprefix("de_wilcoxon_") for m in vcc.MEMBERS}
    shown = table[["split", "context", "targets", "score"]].copy()
    for m in vcc.MEMBERS:
        shown[short[m]] = [
            f"{a:.3f} → {b:.3f}" for a, b in zip(table[m], table[f"{m}_rescaled"], strict=True)
        ]
    with pd.option_context(
        "display.width", 250, "display.max_columns", 20, "display.float_format", "{:.3f}".format
    ):
        print(shown.to_string(index=False))
