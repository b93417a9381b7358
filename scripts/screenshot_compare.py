"""Screenshot of MLflow's compare view of two predictors' parent runs on one dataset (README's picture).

Serves the store with `mlflow server` on a free localhost port, opens the compare view in headless Chromium with
the parallel-coordinates plot on the predictor and the chosen metrics, and saves the page as PNG. Per predictor it
compares the parent run the leaderboard would prefer: complete before partial, then more seeds, then the latest.

Usage: python scripts/screenshot_compare.py --tracking-uri sqlite:///leaderboard.db --dataset kang2018 \\
           --predictors cvae_modeB linear --out docs/figures/mlflow_compare.png
Needs chromium, chromedriver and selenium (see benchmark/tracking/ui.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmark.core.errors import PertbenchError  # noqa: E402
from benchmark.tracking import schema  # noqa: E402
from benchmark.tracking import store as tracking  # noqa: E402
from benchmark.tracking import ui as mlflow_ui  # noqa: E402


def parent_runs(dataset: str, predictors: list[str]) -> tuple[str, list[str]]:
    """The experiment id of `dataset` and, per predictor in order, its preferred finished parent run id."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(f"{schema.EXPERIMENT_PREFIX}/{dataset}")
    if experiment is None:
        raise PertbenchError(f"the store has no experiment {schema.EXPERIMENT_PREFIX}/{dataset}")
    chosen = []
    for predictor in predictors:
        runs = mlflow.search_runs(
            [experiment.experiment_id],
            filter_string=f"{schema.parent_filter()} and tags.`{schema.TAG_PREDICTOR}` = '{predictor}'",
            output_format="list",
        )
        if not runs:
            raise PertbenchError(f"no finished run of predictor {predictor} on {dataset} in the store")

        def preference(run) -> tuple:
            complete = run.data.tags.get(schema.TAG_PARTIAL) != schema.TRUE
            seeds = len(run.data.params.get(schema.PARAM_SEEDS, "0").split(","))
            return (complete, seeds, run.info.start_time or 0)

        chosen.append(max(runs, key=preference).info.run_id)
    return experiment.experiment_id, chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri", required=True, help="the MLflow store, e.g. sqlite:///leaderboard.db"
    )
    parser.add_argument("--dataset", default="kang2018", help="the experiment pertbench/<dataset>")
    parser.add_argument("--predictors", nargs="+", default=["cvae_modeB", "linear"])
    parser.add_argument("--metrics", nargs="+", default=["r", "jaccard_100"])
    parser.add_argument("--params", nargs="+", default=[schema.PARAM_PREDICTOR])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/mlflow_compare.png"))
    parser.add_argument("--size", default="1600x1000", help="browser window WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        uri = tracking.use_store(args.tracking_uri)
        experiment_id, run_ids = parent_runs(args.dataset, args.predictors)
        with mlflow_ui.mlflow_server(uri) as base, mlflow_ui.chromium(width, height) as driver:
            mlflow_ui.open_compare(driver, base, experiment_id, run_ids, args.params, args.metrics)
            time.sleep(1.0)  # the plot's last transition
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if not driver.save_screenshot(str(args.out)):
                raise PertbenchError(f"Chromium could not write {args.out}")
    except (PertbenchError, ValueError) as exc:
        print(f"screenshot_compare: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: MLflow compare view of {', '.join(args.predictors)} on {args.dataset} ({uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
