"""What `bench run` and `bench score` print after scoring: the result table and where everything went."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from benchmark.core.uris import is_http

UI_PORT = 5000
"""The port of the printed `mlflow ui` command (MLflow's default)."""


def check_board_path(path: Path | None, flag: str, force: bool = False) -> None:
    """A leaderboard path must name a file: a directory is a one-line error (nothing is written into it)."""
    if path is not None:
        from benchmark.reports.leaderboard import check_board_path as check

        check(path, force=force, what=flag)


def _absolute_uri(uri: str) -> str:
    """A SQLite store URI with an absolute path, so the printed `mlflow ui` command works from any folder."""
    from benchmark.tracking.store import sqlite_path

    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return uri.replace(str(path), str(path.resolve()), 1)


SHOWN_SPLIT_RUNS = 10
"""Split runs whose figure and prediction paths the end-of-run summary prints (the rest: their folder)."""


def print_locations(
    tracking_uri: str | None,
    parent_ids: list[str],
    board: Path | None,
    figures: bool = True,
    predictions: bool | None = False,
) -> None:
    """Where the run went: the MLflow store, the figures and predictions (artifacts of the parent and split runs),
    the leaderboard, and the command that opens the MLflow UI on the experiment's runs."""

    from benchmark.tracking import runs as tracked
    from benchmark.tracking import schema
    from benchmark.tracking import store as tracking

    uri = _absolute_uri(tracking.tracking_uri(tracking_uri))
    print("\nwhere it went:")
    print(f"  MLflow store:  {uri}")
    experiments = []
    for parent_id in parent_ids:
        parent = tracked.get_run(parent_id)
        experiments.append(parent.experiment_id)
        artifacts = _local(parent.artifact_uri)
        runs = artifacts.rsplit("/", 2)[0] if artifacts.endswith("/artifacts") else f"{artifacts}/.."
        tags = parent.tags
        n = sum(int(tags.get(t, 0)) for t in (schema.TAG_N_SCORED, schema.TAG_N_NOT_APPLICABLE))
        print(f"  parent run:    {tags.get(schema.TAG_RUN_NAME, '')} ({parent_id})")
        print(
            f"  artifacts:     {artifacts} (parent run: each split once in {schema.SPLITS_DIR}/<split digest>.npz)"
        )
        print(
            f"  split runs:    {runs}/<run id>/artifacts ({n} split run{'' if n == 1 else 's'}, the first listed below)"
        )
        if figures:
            print(f"  figures:       {artifacts}/{schema.FIGURES_DIR}/{schema.SUMMARY_FIGURE} (summary)")
        else:
            print("  figures:       (none: --no-figures)")
        if not predictions and predictions is not None:
            print("  predictions:   (not saved; add --save-predictions)")
        children = tracked.search(
            [parent.experiment_id],
            schema.children_filter(parent_id),
            order_by=["attributes.start_time ASC"],
            max_results=SHOWN_SPLIT_RUNS + 1,
        )
        for child in children[:SHOWN_SPLIT_RUNS]:
            where = _local(child.artifact_uri)
            print(f"  {child.name or child.run_id}:")
            if figures:
                print(f"      figure:      {where}/{schema.FIGURES_DIR}/{schema.COMPOSITE_FIGURE}")
            if predictions:
                print(f"      predictions: {where}/{schema.PREDICTIONS_DIR}/")
                print(f"      cell-eval:   {where}/{schema.CELL_EVAL_DIR}/{{real,pred}}.h5ad")
        if len(children) > SHOWN_SPLIT_RUNS:
            print(f"  ... and {n - SHOWN_SPLIT_RUNS} more split run(s) under {runs}/")
    print(f"  leaderboard:   {Path(board).resolve() if board is not None else '(not updated)'}")
    pages = [schema.runs_page_path(e) for e in dict.fromkeys(experiments)]
    if is_http(uri):
        for page in pages:
            print(f"  browse:        {uri.rstrip('/')}{page}")
    else:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        command = str(mlflow_bin) if mlflow_bin.is_file() else "mlflow"
        print(f"  browse:        {command} ui --backend-store-uri {uri} --port {UI_PORT}")
        for page in pages:
            print(f"                 then open http://127.0.0.1:{UI_PORT}{page}")


def _local(uri: str) -> str:
    """A file:// URI as a plain path (other URIs unchanged)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def print_table(result) -> None:
    """A parent run's rows (split, seed, status, headline scores), their mean, and how many were declined."""
    import pandas as pd

    from benchmark.tracking.schema import headline_metrics

    table = result.table()
    shown = [c for c in ("split", "seed", "status", *headline_metrics()) if c in table]
    print(
        f"\n{result.predictor} on {result.dataset} · {result.split_kind} (MLflow parent run {result.parent_run_id})"
    )
    with pd.option_context(
        "display.width", 200, "display.max_rows", 500, "display.float_format", "{:.3f}".format
    ):
        print(table[shown].to_string(index=False))
        scored = table[table["status"] == "ok"]
        if len(scored):
            means = {c: scored[c].mean() for c in shown[3:]}
            print(
                "mean   "
                + "  ".join(f"{k}={'NaN' if math.isnan(v) else f'{v:.3f}'}" for k, v in means.items())
            )
    n_na = int((table["status"] != "ok").sum())
    if n_na:
        print(f"{n_na} target(s) not applicable to {result.predictor} (reasons in the table's MLflow runs)")


def check_destinations(args) -> None:
    """Fail fast, before any data loads: a store URI of no known scheme, or a --leaderboard that is a directory."""
    from benchmark.tracking import store as tracking

    tracking.check_uri(tracking.tracking_uri(args.tracking_uri))
    if not args.no_leaderboard:
        check_board_path(args.leaderboard, "--leaderboard")


def update_board(args, dataset: str | None = None) -> Path | None:
    """Rewrite the leaderboard after scoring unless --no-leaderboard, and print the verdict lines of `dataset`;
    the path written, else None."""
    from benchmark.reports.leaderboard import default_board_path, write_leaderboard

    if args.no_leaderboard:
        return None
    board = write_leaderboard(
        args.leaderboard or default_board_path(args.tracking_uri),
        args.tracking_uri,
        report=lambda boards: print_verdicts(boards, dataset),
    )
    print(f"leaderboard updated: {board}")
    return board


def print_verdicts(boards, dataset: str | None = None) -> None:
    """Each board's verdict lines (those of `dataset` only, when given) where two or more complete rows rank."""
    from benchmark.reports.verdict import verdict_lines
    from benchmark.tracking import schema

    for board in boards:
        ranked = {p: f for p, f in board.scores.items() if p not in board.partial}
        if len(ranked) < 2 or (dataset is not None and board.dataset != dataset):
            continue
        print(f"verdict on {board.dataset} · {board.split_kind} (paired 95% intervals over splits):")
        for line in verdict_lines(ranked, schema.headline_metrics()):
            print(f"  {line}")
