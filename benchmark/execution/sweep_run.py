"""Runs a parsed sweep: one parent run per group (exactly the parent `bench run` logs), the split-level tasks on an
executor, then each parent's summary, the leaderboard once, and a summary table.

Resume: a group's parent carries the tag pertbench.sweep_key. A restarted sweep finds it; a FINISHED parent skips
the whole group, an unfinished one is reopened and each task skips itself when its child runs are all FINISHED.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from benchmark.core.errors import PertbenchError

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" line per parent run
from benchmark.execution.sweep import Group, Sweep, TaskRef, expand, group_key
from benchmark.execution.sweep_task import DONE, FAILED, SKIPPED, SplitTask, TaskOutcome, dataset_for


@dataclass
class GroupPlan:
    """A group with its data loaded: its parent record, its tasks, and (once open) its parent run."""

    group: Group
    dataset: object
    split_kind: str
    options: object  # RunOptions
    record: object  # ParentRecord
    key: str
    refs: list[TaskRef] = field(default_factory=list)
    """Every split-level task of the group (those of an already FINISHED parent included)."""
    tasks: list[SplitTask] = field(default_factory=list)
    """The tasks handed to the executor this time."""
    parent_id: str = ""
    finished: bool = False  # the parent was already FINISHED: nothing to do
    status: str = ""  # how this sweep left the parent run


@dataclass
class SweepResult:
    """What the sweep did: per group its parent run and task outcomes; the leaderboard written."""

    groups: list[GroupPlan]
    outcomes: dict[str, TaskOutcome]
    not_applicable: list[str]
    board: Path | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes.values() if o.status == FAILED]


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """One bar over tasks (done, running, failed) on a terminal; a quiet line per finished task otherwise."""

    def __init__(self, total: int, slots: int, stream: TextIO = sys.stderr):
        self.total, self.slots, self.stream = total, slots, stream
        self.tty = stream.isatty()
        self.handed = self.done = self.skipped = self.failed = 0

    def __call__(self, event: str, task: SplitTask, outcome: TaskOutcome | None) -> None:
        if event == "start":
            self.handed += 1
        else:
            assert outcome is not None
            self.done += outcome.status == DONE
            self.skipped += outcome.status == SKIPPED
            self.failed += outcome.status == FAILED
            if not self.tty:
                error = f": {outcome.error}" if outcome.error else ""
                print(
                    f"[{self.ended}/{self.total}] {outcome.status} {task.label()} ({outcome.seconds:.1f} s){error}",
                    file=self.stream,
                    flush=True,
                )
        if self.tty:
            self.draw()

    @property
    def ended(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def running(self) -> int:
        return min(self.slots, self.handed - self.ended)

    def draw(self) -> None:
        width = 30
        filled = int(width * self.ended / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        print(
            f"\r[{bar}] {self.ended}/{self.total} tasks: {self.done} done, {self.skipped} skipped, "
            f"{self.running} running, {self.failed} failed ",
            end="",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


# ---------------------------------------------------------------------------------------------- the sweep


def plan_groups(
    sweep: Sweep, cache_dir: Path | None, max_splits: int | None, say=print
) -> tuple[list[GroupPlan], list[str]]:
    """Load each dataset once, resolve split kinds, make the splits and parent records (nothing logged yet)."""
    from benchmark.data.splits import SplitNotApplicable
    from benchmark.execution.options import RunOptions
    from benchmark.execution.runner import parent_record, plan_splits

    settings = sweep.settings
    plans, not_applicable = [], []
    for group in sweep.groups:
        dataset = dataset_for(group.dataset)
        kind = dataset.default_split if group.split_kind == "default" else group.split_kind
        options = RunOptions(
            seeds=group.seeds,
            params=group.param_dict,
            save_predictions=settings.save_predictions,
            figures=settings.figures,
            embedding=settings.embedding,
            cache_dir=cache_dir,
            max_splits=max_splits if max_splits is not None else settings.max_splits,
        )
        try:
            splits_by_seed, truncated = plan_splits(dataset, kind, options)
        except SplitNotApplicable as exc:
            not_applicable.append(f"{group.label()}: split {kind} does not apply ({exc})")
            say(f"split {kind} does not apply to dataset {dataset.name}: {exc} (not run)")
            continue
        record = parent_record(group.predictor, dataset, kind, options, splits_by_seed, truncated)
        key = group_key(
            group,
            dataset.checksum,
            kind,
            {
                "max_splits": options.max_splits,
                "figures": options.figures,
                "embedding": options.embedding,
                "save_predictions": options.save_predictions,
            },
        )
        plans.append(GroupPlan(group, dataset, kind, options, record, key, expand(splits_by_seed)))
    return plans, not_applicable


def open_parent(plan: GroupPlan) -> None:
    """Find the group's parent run by its sweep key (resume) or create it, as `bench run` would log it."""
    from benchmark.tracking import runs as store_runs
    from benchmark.tracking import schema
    from benchmark.tracking import store as tracking

    experiment = store_runs.experiment_id(f"{schema.EXPERIMENT_PREFIX}/{plan.dataset.name}")
    assert experiment is not None, "the sweep creates each dataset's experiment before opening parents"
    runs = store_runs.search(
        [experiment],
        filter_string=f"tags.`{schema.TAG_SWEEP_KEY}` = '{plan.key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    finished = [r for r in runs if r.status == "FINISHED"]
    if finished:
        plan.parent_id, plan.finished = finished[0].run_id, True
        return
    for run in runs:
        tags = run.tags
        pid = tags.get(schema.TAG_PID, "")
        if (
            run.status == "RUNNING"
            and tags.get(schema.TAG_HOST) == tracking.process_tags()[schema.TAG_HOST]
            and pid.isdigit()
            and int(pid) != os.getpid()
            and tracking.process_alive(int(pid), tags.get(schema.TAG_PROC_START))
        ):
            raise PertbenchError(
                f"another sweep (pid {pid}) is running {plan.group.label()}; wait for it or stop it first"
            )
    if runs:  # an interrupted sweep's parent: reopen it under this process
        plan.parent_id = runs[0].run_id
        store_runs.set_status(plan.parent_id, "RUNNING")
        store_runs.set_tags(tracking.process_tags(), plan.parent_id)
        return
    tags = {**plan.record.tags, **tracking.process_tags(), schema.TAG_SWEEP_KEY: plan.key}
    plan.parent_id = store_runs.create_run(experiment, plan.record.tags[schema.TAG_RUN_NAME], tags)
    store_runs.log_params(plan.parent_id, plan.record.params)


def finish_parent(plan: GroupPlan, outcomes: dict[str, TaskOutcome]) -> str:
    """End the group's parent: FINISHED with `bench run`'s summary when every task ended well, else FAILED."""
    from benchmark.execution.provenance import log_summary
    from benchmark.tracking import runs
    from benchmark.tracking import store as tracking

    if plan.finished:
        return "FINISHED"
    ended = [outcomes.get(t.key) for t in plan.tasks]
    if any(o is None or o.status == FAILED for o in ended):
        runs.terminate(plan.parent_id, "FAILED")
        return "FAILED"
    results = [r for o in ended for r in o.results]  # type: ignore[union-attr]
    tracking.experiment_for(plan.dataset.name)
    with runs.resumed_run(plan.parent_id):  # ends it FINISHED
        log_summary(
            plan.parent_id, plan.record.display_name, plan.dataset, plan.split_kind, results, plan.options
        )
    return "FINISHED"


def _kill_open(plans: list[GroupPlan]) -> None:
    """Mark the parents this sweep left open, and their child runs still running or ended FAILED by the
    interruption, KILLED (an interrupted sweep: what the message says is what the store holds)."""
    from benchmark.tracking import runs
    from benchmark.tracking import store as tracking

    since = tracking.interrupted_since()
    for plan in plans:
        if plan.parent_id and not plan.finished:
            with contextlib.suppress(Exception):
                if runs.get_run(plan.parent_id).status == "RUNNING":
                    tracking.kill_children(plan.parent_id, since)
                    runs.terminate(plan.parent_id, "KILLED")


def run_sweep(
    sweep: Sweep,
    executor_kind: str = "serial",
    address: str | None = None,
    tracking_uri: str | None = None,
    max_splits: int | None = None,
    leaderboard: bool = True,
    say=print,
    progress_stream: TextIO = sys.stderr,
) -> SweepResult:
    """Run every task of the sweep on the executor, then end the parents and regenerate the leaderboard once."""
    from benchmark.execution.executors import make_executor
    from benchmark.execution.model_cache import default_cache_dir
    from benchmark.reports.leaderboard import check_board_path, default_board_path, write_leaderboard
    from benchmark.tracking import store as tracking

    started = time.perf_counter()
    settings = sweep.settings
    # --tracking-uri, else MLFLOW_TRACKING_URI (e.g. a cluster's server), else the file's store, else bench's default
    store = tracking.tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or settings.store)
    tracking.check_uri(store)
    cache_dir = Path(settings.cache_dir or default_cache_dir()).resolve()
    board_path = Path(settings.leaderboard) if settings.leaderboard else default_board_path(store)
    if leaderboard:
        check_board_path(board_path, what="leaderboard")  # before any task runs
    tracking.use_store(store)
    tracking.reap_dead_runs()
    plans, not_applicable = plan_groups(sweep, cache_dir, max_splits, say)
    for name in dict.fromkeys(plan.dataset.name for plan in plans):
        tracking.experiment_for(name)  # created in the store itself: artifacts where `bench run` puts them
    env = {"PERTBENCH_CACHE_DIR": str(cache_dir), "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    if os.environ.get("PERTBENCH_DATA_DIR"):
        env["PERTBENCH_DATA_DIR"] = str(Path(os.environ["PERTBENCH_DATA_DIR"]).resolve())
    executor = make_executor(executor_kind, address, settings.cpus_per_task, settings.max_retries, env)
    outcomes: dict[str, TaskOutcome] = {}
    try:
        uri = executor.worker_uri(store)
        tracking.use_store(uri)
        for plan in plans:
            open_parent(plan)
            if plan.finished:
                continue
            plan.tasks = [
                SplitTask(
                    plan.key,
                    plan.parent_id,
                    plan.group.predictor,
                    plan.group.dataset,
                    plan.split_kind,
                    ref.seed,
                    ref.index,
                    ref.split_name,
                    plan.options,
                    uri,
                    executor.threads(),
                )
                for ref in plan.refs
            ]
        tasks = [t for plan in plans for t in plan.tasks]
        done_before = sum(len(plan.refs) for plan in plans if plan.finished)
        say(
            f"sweep {sweep.source}: {len(plans)} parent run(s), {len(tasks)} task(s) to run"
            + (f" ({done_before} already finished)" if done_before else "")
            + f" on the {executor.name} executor"
        )
        bar = Progress(len(tasks), executor.slots, progress_stream)
        try:
            outcomes = executor.run(tasks, bar)
        finally:
            bar.close()
        for plan in plans:
            plan.status = finish_parent(plan, outcomes)
    except BaseException:
        _kill_open(plans)
        raise
    finally:
        executor.close()
    tracking.use_store(store)
    board = None
    if leaderboard and plans:
        board = write_leaderboard(
            board_path, store, readme=Path(settings.readme) if settings.readme else None
        )
    return SweepResult(plans, outcomes, not_applicable, board, time.perf_counter() - started)


def summary_table(result: SweepResult) -> str:
    """Per parent run: tasks done / skipped / failed, mean seconds per task run, targets scored, its status."""
    import pandas as pd

    rows = []
    for plan in result.groups:
        ended = [result.outcomes[t.key] for t in plan.tasks if t.key in result.outcomes]
        ran = [o.seconds for o in ended if o.status == DONE]
        scored = sum(r.status == "ok" for o in ended for r in o.results)
        rows.append(
            {
                "predictor": plan.record.display_name
                + (
                    f" ({plan.record.params.get('cli_params')})"
                    if plan.record.params.get("cli_params")
                    else ""
                ),
                "dataset": plan.dataset.name,
                "split": plan.split_kind,
                "seeds": ",".join(map(str, plan.group.seeds)),
                "tasks": len(plan.refs),
                "done": sum(o.status == DONE for o in ended),
                "skipped": len(plan.refs) - len(plan.tasks) + sum(o.status == SKIPPED for o in ended),
                "failed": sum(o.status == FAILED for o in ended) + len(plan.tasks) - len(ended),
                "s/task": sum(ran) / len(ran) if ran else float("nan"),
                "targets": scored,
                "parent": plan.parent_id[:12],
                "status": plan.status or "?",
            }
        )
    if not rows:
        return "(no parent runs)"
    with pd.option_context("display.width", 200, "display.float_format", "{:.1f}".format):
        return pd.DataFrame(rows).to_string(index=False)
