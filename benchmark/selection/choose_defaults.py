"""Choose a predictor's registered defaults by `bench tune`'s protocol over every visible dataset, never a test split.

`bench tune` chooses per (dataset, block of outer splits); a default must serve data nobody has seen, so it is one
configuration for all datasets. This module scores one shared list of candidate configurations on each visible
dataset's validation splits, made by the tuning protocol (benchmark.selection.tuning: the tuning cells of one seeded block
of the dataset's default split kind, then validation splits of that kind made from those cells only), with the
same budget for every predictor, and keeps the candidate with the best mean rank across datasets on the objective
(default `r`, tune's). Candidate 0 is the constructor's defaults (with the registered name's own parameters, not an
earlier choice, so a rerun scores the same list); the others are seeded
random draws from its declared search space (less the `fixed` parameters, chosen on cost, never on a score).

Leave-one-dataset-out: for each dataset D the same ranking is also made without D. Where it picks the same
candidate as the pooled choice, D's scores could not have changed the default; where it does not, the written
file says so, and a run on D (its card name and file checksum) uses the leave-D-out choice instead
(predictors.registry.chosen_params), so that no dataset is scored with a default its own cells helped to choose.

Every (predictor, dataset, candidate) result is appended to a JSON-lines file as soon as it is scored, so a rerun
resumes. The result is written as JSON (predictors/cvae/defaults.json for the CVAE), which the registry reads.
    python -m benchmark.selection.choose_defaults --predictors cvae_modeB cvae_mlp_modeB --output predictors/cvae/defaults.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.errors import PertbenchError
from benchmark.scoring.metrics import METRICS
from benchmark.selection.blocks import outer_blocks, validation_splits
from benchmark.selection.objective import (
    DEFAULT_OBJECTIVE,
    direction,
    search_space,
    suggest,
    validation_scores,
)
from predictors.registry import available_predictors, load_class

VISIBLE_DATASETS = ("kang2018", "kang2018_counts", "mcfaline23", "norman19")
"""The datasets the project can see; the defaults are chosen over all of them."""
REPORTED = ("r", "jaccard_100", "energy_distance_shape", "crps_deg100")
"""Scored and recorded for every candidate (the objective must be one of them)."""


def candidates(predictor: str, n: int, seed: int, fixed: dict[str, Any], space_override: dict) -> list[dict]:
    """Candidate 0 = the registered configuration restricted to the searched parameters; then n - 1 seeded
    random draws from the search space (optuna's RandomSampler), `fixed` applied to all."""
    import optuna

    space = {**search_space(predictor), **space_override}
    for name in fixed:
        space.pop(name, None)
    spec = available_predictors()[predictor]
    model = load_class(spec.target)(**spec.params)  # the constructor's defaults, not an earlier choice
    current = {k: v for k, v in model.get_params().items() if k in space}
    out = [{**current, **fixed}]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(out) < n:
        trial = study.ask()
        out.append({**suggest(trial, space), **fixed})
        study.tell(trial, 0.0)
    return out


@functools.cache
def _validation_setup(dataset_name: str, seed: int, n_validation: int) -> tuple[Any, Any, list]:
    """A dataset, its seeded block and that block's validation splits, made once per worker process (every
    candidate of a dataset is scored on the same splits)."""
    from benchmark.data.datasets import load_dataset

    dataset = load_dataset(dataset_name)
    kind = dataset.default_split
    blocks = outer_blocks(dataset, kind, seed)
    block = blocks[int(np.random.default_rng(seed).integers(len(blocks)))]
    return dataset, block, validation_splits(dataset, block, kind, seed, n_validation)


def _evaluate(job: tuple) -> dict[str, Any]:
    """Score one candidate of one predictor on one dataset's validation splits (a worker process's task)."""
    predictor, dataset_name, index, params, seed, n_validation = job
    import torch

    dataset, block, splits = _validation_setup(dataset_name, seed, n_validation)
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # two jobs on two cores: one thread each
    try:
        scores = validation_scores(
            predictor, params, dataset, block.tuning_cells, splits, list(REPORTED), seed
        )
    finally:
        torch.set_num_threads(threads)
    return {
        "predictor": predictor,
        "dataset": dataset_name,
        "candidate": index,
        "params": params,
        "block": block.name,
        "n_validation_splits": len(splits),
        "seconds": round(time.perf_counter() - start, 1),
        **{k: (None if not math.isfinite(v) else v) for k, v in scores.items()},
    }


def mean_ranks(table: dict[str, dict[int, float]], objective: str, datasets: list[str]) -> dict[int, float]:
    """Each candidate's mean rank (1 = best, ties averaged, unscored = worst) over the given datasets."""
    higher = direction(objective) == "maximize"
    ids = sorted({i for d in datasets for i in table[d]})
    totals = dict.fromkeys(ids, 0.0)
    for d in datasets:
        values = np.array([table[d].get(i, math.nan) for i in ids], dtype=float)
        key = np.where(np.isfinite(values), -values if higher else values, math.inf)
        order = key.argsort(kind="stable")
        ranks = np.empty(len(ids))
        ranks[order] = np.arange(1, len(ids) + 1)
        for value in np.unique(key):  # ties share their mean rank
            ranks[key == value] = ranks[key == value].mean()
        for i, rank in zip(ids, ranks, strict=True):
            totals[i] += rank / len(datasets)
    return totals


def choose(table: dict[str, dict[int, float]], objective: str, datasets: list[str]) -> int:
    """The candidate with the best mean rank over the datasets; ties go to the lower index (the current one)."""
    ranks = mean_ranks(table, objective, datasets)
    return min(ranks, key=lambda i: (ranks[i], i))


def summarize(rows: list[dict], objective: str, datasets: list[str]) -> dict[str, Any]:
    """One predictor's chosen candidate, its leave-one-dataset-out choices and every candidate's scores."""
    table = {
        d: {r["candidate"]: r[objective] for r in rows if r["dataset"] == d and r[objective] is not None}
        for d in datasets
    }
    best = choose(table, objective, datasets)
    params = {r["candidate"]: r["params"] for r in rows}
    lodo = {
        d: choose(table, objective, [o for o in datasets if o != d]) for d in datasets if len(datasets) > 1
    }
    ranks = mean_ranks(table, objective, datasets)
    return {
        "chosen": best,
        "params": params[best],
        "leave_one_dataset_out": {d: {"chosen": i, "same": i == best} for d, i in lodo.items()},
        "candidates": [
            {
                "index": i,
                "mean_rank": round(ranks[i], 3),
                "params": params[i],
                **{f"{r['dataset']}.{m}": r[m] for r in rows if r["candidate"] == i for m in REPORTED},
            }
            for i in sorted(params)
        ],
    }


def _checksums(names: list[str]) -> dict[str, str]:
    """Each dataset card's file checksum (a name without a card, e.g. the built-in synthetic, is left out)."""
    from benchmark.data.datasets import get_card

    out = {}
    for name in names:
        with contextlib.suppress(PertbenchError):
            out[name] = get_card(name).sha256
    return out


def _load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.selection.choose_defaults", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--predictors", nargs="+", required=True)
    parser.add_argument("--datasets", nargs="+", default=list(VISIBLE_DATASETS))
    parser.add_argument(
        "--candidates", type=int, default=10, help="configurations per predictor (incl. current)"
    )
    parser.add_argument("--validation-splits", type=int, default=3, help="validation splits per dataset")
    parser.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=list(REPORTED))
    parser.add_argument("--fixed", default="{}", help="JSON object of parameters held fixed (chosen on cost)")
    parser.add_argument("--space", default="{}", help="JSON object overriding search-space entries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--results", type=Path, default=Path(".pertbench/choose_defaults.jsonl"))
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        fixed, override = json.loads(args.fixed), json.loads(args.space)
        override = {k: tuple(v) for k, v in override.items()}
        if args.candidates < 1 or args.validation_splits < 1:
            raise PertbenchError("--candidates and --validation-splits must be at least 1")
        unknown = [m for m in REPORTED if m not in METRICS]
        if unknown:
            raise PertbenchError(f"unknown metric(s) {unknown}")
        from benchmark.data.datasets import dataset_names

        unknown = [d for d in args.datasets if d not in dataset_names()]
        if unknown:
            raise PertbenchError(f"unknown dataset(s) {unknown}; known: {', '.join(dataset_names())}")
        lists = {p: candidates(p, args.candidates, args.seed, fixed, override) for p in args.predictors}
        jobs = [  # candidate by candidate, so that an interrupted run has whole candidates
            (predictor, dataset, i, lists[predictor][i], args.seed, args.validation_splits)
            for i in range(args.candidates)
            for predictor in args.predictors
            for dataset in args.datasets
        ]
    except (PertbenchError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {
        (r["predictor"], r["dataset"], r["candidate"], json.dumps(r["params"], sort_keys=True))
        for r in _load_rows(args.results)
    }
    todo = [j for j in jobs if (j[0], j[1], j[2], json.dumps(j[3], sort_keys=True)) not in done]
    print(
        f"{len(jobs)} evaluations, {len(jobs) - len(todo)} already in {args.results}, running {len(todo)}",
        file=sys.stderr,
    )
    with contextlib.ExitStack() as stack:
        mapper = map  # one job: in this process
        if args.jobs > 1:
            mapper = stack.enter_context(ProcessPoolExecutor(max_workers=args.jobs)).map
        for n, row in enumerate(mapper(_evaluate, todo), 1):
            with args.results.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"[{n}/{len(todo)}] {row['predictor']} {row['dataset']} #{row['candidate']}: "
                f"{args.objective} {row[args.objective]} ({row['seconds']} s)",
                file=sys.stderr,
            )
    rows = _load_rows(args.results)
    out: dict[str, Any] = {
        "how": {
            "command": "python -m benchmark.selection.choose_defaults " + " ".join(argv or sys.argv[1:]),
            "protocol": "benchmark.selection.tuning blocked-nested validation splits (training cells of one seeded block)",
            "objective": args.objective,
            "rule": "best mean rank over the datasets; ties to the lower candidate index",
            "datasets": list(args.datasets),
            "candidates": args.candidates,
            "validation_splits": args.validation_splits,
            "seed": args.seed,
            "fixed": fixed,
        }
    }
    out["datasets"] = _checksums(args.datasets)  # how make_predictor knows a run is on one of them
    for predictor in args.predictors:
        keys = {json.dumps(p, sort_keys=True): i for i, p in enumerate(lists[predictor])}
        mine = [
            r
            for r in rows
            if r["predictor"] == predictor
            and r["dataset"] in args.datasets
            and keys.get(json.dumps(r["params"], sort_keys=True)) == r["candidate"]
        ]
        out[predictor] = summarize(mine, args.objective, list(args.datasets))
        print(
            f"{predictor}: candidate {out[predictor]['chosen']} {out[predictor]['params']}", file=sys.stderr
        )
    from benchmark.core.files import atomic_write

    atomic_write(
        args.output, json.dumps(out, indent=1) + "\n"
    )  # written whole, then moved: never half a file
    return 0


if __name__ == "__main__":
    sys.exit(main())
