"""cell-eval2's own vcc2026 numbers on an exported split, as JSON: run by tests/test_vcc2026.py in cell-eval2's venv.

Usage: python vcc2026_cell_eval2.py REAL.h5ad PRED.h5ad OUTDIR [DE_BACKEND]. The DE backend defaults to scanpy,
the one cell-eval2 runs on a CPU machine without pdex (named, so that installing pdex does not change it). Writes OUTDIR/cell_eval2.json (per-target rows
and aggregates of the prediction and of cell-eval2's baseline, the replicate anchor, the rescaled members and
their average) and OUTDIR/baseline.h5ad (the baseline's predicted cells, which pertbench scores in turn).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import anndata as ad
import cell_eval2 as ce
from cell_eval2.anchor import compute_replicate_anchor
from cell_eval2.catalog import CATALOG
from cell_eval2.competition import competition_members
from cell_eval2.config import EvalConfig
from cell_eval2.scoring import score_one


def _finite(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _rows(tidy) -> dict:
    out: dict = {}
    for pert, metric, value in tidy.select(["perturbation", "metric", "value"]).iter_rows():
        out.setdefault(metric, {})[pert] = _finite(value)
    return out


def _agg(tidy) -> dict:
    frame = ce.aggregate_metrics(tidy)
    return dict(zip(frame["metric"].to_list(), map(_finite, frame["mean"].to_list()), strict=True))


def main(real_path: str, pred_path: str, outdir: str, backend: str = "scanpy") -> None:
    out = Path(outdir)
    cfg = EvalConfig.from_preset("vcc2026")
    cfg = replace(cfg, de=replace(cfg.de, backend=backend))
    real, pred = ad.read_h5ad(real_path), ad.read_h5ad(pred_path)
    tidy = ce.compute_metrics(pred, real, config=cfg)
    base = ce.build_generic_baseline(real, config=cfg, save_pred=str(out / "baseline.h5ad"))
    base_tidy = base.results
    _splits, anchor = compute_replicate_anchor(real, config=cfg)
    rep = dict(zip(anchor["metric"].to_list(), anchor["replicate"].to_list(), strict=True))
    members = list(competition_members())
    user, baseline = _agg(tidy), _agg(base_tidy)
    rescaled = {
        m: score_one(
            user[m],
            baseline[m],
            replace(CATALOG[m].scoring, anchor=float(rep[m]), allow_negative_baseline=False),
        )
        for m in members
    }
    result = {
        "members": members,
        "rows": _rows(tidy),
        "aggregate": user,
        "baseline_rows": _rows(base_tidy),
        "baseline": baseline,
        "anchor": {m: float(rep[m]) for m in members},
        "rescaled": rescaled,
        "score": sum(rescaled.values()) / len(rescaled),
        "version": ce.__version__,
        "de_backend": backend,
    }
    (out / "cell_eval2.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:5])
