"""`bench make-synthetic`: write a large synthetic count .h5ad chunk by chunk, and print how to benchmark it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.core.errors import PertbenchError

NAME = "make-synthetic"
USES_STORE = False

DEFAULT_CONTROLS = 10_000
"""`bench make-synthetic`'s control cells per context when --controls is not given (Replogle K562: ~10,000)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench make-synthetic` and its flags."""
    synth = subparsers.add_parser(NAME, help="write a large synthetic count .h5ad, chunk by chunk")
    synth.add_argument("--cells", type=int, required=True, help="total cells (controls included)")
    synth.add_argument("--genes", type=int, required=True)
    synth.add_argument("--perturbations", type=int, required=True, help="perturbations per context")
    synth.add_argument(
        "--controls",
        type=int,
        default=None,
        help=f"control cells per context (default {DEFAULT_CONTROLS:,}, at most a tenth of the context's cells)",
    )
    synth.add_argument("--contexts", type=int, default=1)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True, help="the .h5ad file to write")
    return synth


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    """Write a synthetic screen of about --cells cells and print how to benchmark it."""
    from benchmark.data.splits import MIN_CELLS, RANDOM_TEST_FRACTION
    from benchmark.data.synthetic import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, write_synthetic

    if args.controls is None:  # a Replogle-like screen: many controls, capped for small files
        args.controls = max(1, min(DEFAULT_CONTROLS, args.cells // (10 * max(args.contexts, 1))))
    for name in ("cells", "genes", "perturbations", "controls", "contexts"):
        if getattr(args, name) < 1:
            raise PertbenchError(f"--{name} must be at least 1, got {getattr(args, name)}")
    per_group = (args.cells - args.contexts * args.controls) // (args.contexts * args.perturbations)
    if per_group < 1:
        raise PertbenchError(
            f"--cells {args.cells} leaves no cells for {args.perturbations} perturbations in {args.contexts}"
            f" context(s) after {args.controls} controls each"
        )
    if args.out.suffix != ".h5ad":
        raise PertbenchError(f"--out must end in .h5ad, got {args.out}")
    path = write_synthetic(
        args.out,
        n_genes=args.genes,
        n_contexts=args.contexts,
        n_perturbations=args.perturbations,
        cells_per_group=per_group,
        n_controls=args.controls,
        seed=args.seed,
    )
    n_cells = args.contexts * (args.controls + args.perturbations * per_group)
    print(
        f"wrote {path}: {n_cells} cells x {args.genes} genes ({per_group} cells per perturbation), "
        f"{path.stat().st_size / 1e6:.1f} MB"
    )
    context = f" --context-key {CONTEXT_KEY}" if args.contexts > 1 else " --split random"
    print(
        f"bench run --predictor mean_shift --data {path} --perturbation-key {PERTURBATION_KEY}"
        f" --control {CONTROL}{context} --expression counts"
    )
    held_out = round(RANDOM_TEST_FRACTION * per_group)
    if args.contexts == 1 and held_out < MIN_CELLS:
        print(
            f"note: the random split holds out {held_out} of {per_group} cells per perturbation, fewer than the "
            f"{MIN_CELLS} a target needs: use more --cells or fewer --perturbations",
            file=sys.stderr,
        )
    return 0
