"""The README's growth curve (cells -> seconds and peak GB, per predictor), drawn from pytest-benchmark JSON.

Reads the records of `benchmarks/test_bench_scale.py` (their `extra_info`: case, cells, predictor, seconds,
peak_gb) from one or more results files (of two records of the same case, size and predictor, the newer run's is
kept), draws a two-panel PNG and, given a README, rewrites its scale table between the scale markers.

Usage: `python -m benchmark.reports.scale_report RESULTS_JSON [RESULTS_JSON ...] --png docs/scale.png [--readme README.md]`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmark.core.errors import PertbenchError
from benchmark.core.files import replace_block

SCALE_START, SCALE_END = "<!-- scale:start -->", "<!-- scale:end -->"
FIELDS = ("case", "cells", "predictor", "seconds", "peak_gb")
"""extra_info keys a scale record must carry."""


def scale_records(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scale benchmarks' extra_info records, one per (case, cells, predictor), sorted; the newest run wins
    (by the file's datetime; at equal times, the later file), so the records folder can be read in any order."""
    found: dict[tuple, dict[str, Any]] = {}
    for result in results:
        when = str(result.get("datetime", "?"))
        for bench in result.get("benchmarks", []):
            info = bench.get("extra_info", {})
            key = (info.get("case"), int(info.get("cells", 0)), info.get("predictor"))
            if all(k in info for k in FIELDS) and (key not in found or found[key]["when"] <= when):
                found[key] = {
                    **info,
                    "machine": result.get("machine_info", {}).get("node", "?"),
                    "when": when,
                    "date": when[:10],
                }
    if not found:
        raise PertbenchError(
            "no scale benchmark records (extra_info case/cells/predictor/seconds/peak_gb) found"
        )
    return [found[k] for k in sorted(found)]


def draw_growth(records: list[dict[str, Any]], path: Path) -> Path:
    """Two panels, log-log: wall seconds and peak GB against cells, one line per (case, predictor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        series.setdefault((r["case"], r["predictor"]), []).append(r)
    for (case, predictor), rows in sorted(series.items()):
        cells = [r["cells"] for r in rows]
        for ax, key in zip(axes, ("seconds", "peak_gb"), strict=True):
            ax.plot(cells, [r[key] for r in rows], marker="o", label=f"{predictor} ({case})")
    for ax, label in zip(axes, ("wall seconds (one bench run)", "peak memory (GB, ru_maxrss)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels: inside, it hid the 310k points
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle("bench run growth on synthetic count screens (benchmarks/test_bench_scale.py)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_table(records: list[dict[str, Any]], png: str) -> str:
    """The README block: the plot and a table of every record."""
    lines = [
        f"![growth curve]({png})",
        "",
        "| case | cells | genes | split | predictor | targets scored | wall s | CPU s | peak GB | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['case']} | {r['cells']:,} | {r.get('genes', '?')} | {r.get('split', '?')} | {r['predictor']} "
            f"| {r.get('targets_scored', '?')} | {r['seconds']:.0f} | {_number(r.get('cpu_seconds'))} "
            f"| {r['peak_gb']:.2f} "
            f"| {r['date']}, load {r.get('load_before', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "?" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.reports.scale_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", nargs="+", type=Path, help="pytest-benchmark JSON file(s)")
    parser.add_argument("--png", type=Path, required=True, help="the growth-curve image to write")
    parser.add_argument("--readme", type=Path, default=None, help="also rewrite this file's scale block")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        records = scale_records([json.loads(p.read_text()) for p in args.results])
        draw_growth(records, args.png)
        if args.readme is not None:
            png = Path(args.png).resolve()
            try:
                png_ref = png.relative_to(args.readme.resolve().parent).as_posix()
            except ValueError:
                png_ref = png.as_posix()
            replace_block(args.readme, SCALE_START, SCALE_END, render_table(records, png_ref))
    except (OSError, ValueError, PertbenchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"growth curve: {args.png} ({len(records)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
