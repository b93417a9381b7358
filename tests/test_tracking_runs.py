"""The tracking interface: batches past MLflow's limits arrive whole, runs read back as plain records."""

from __future__ import annotations

import math

import pytest

from benchmark.tracking import runs
from benchmark.tracking import store as tracking


@pytest.fixture
def experiment(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    tracking.use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.experiment_for("interface")
    found = runs.experiment_id("pertbench/interface")
    assert found is not None
    return found


def test_one_batch_beyond_mlflows_limits_is_logged_whole(experiment):
    run_id = runs.create_run(experiment, "batch", {"pertbench.level": "parent"})
    params = {f"p{i}": i for i in range(250)}
    metrics = {f"m{i}": i / 7 for i in range(2500)} | {"nan": math.nan, "inf": math.inf}
    tags = {f"t{i}": str(i) for i in range(150)}
    runs.log_batch(run_id, params=params, metrics=metrics, tags=tags)
    record = runs.get_run(run_id)
    assert record.params == {k: str(v) for k, v in params.items()}
    assert "inf" not in record.metrics and math.isnan(record.metrics.pop("nan"))
    assert record.metrics == pytest.approx({k: v for k, v in metrics.items() if k not in ("nan", "inf")})
    assert {k: record.tags[k] for k in tags} == tags and record.tags["pertbench.level"] == "parent"
    assert record.name == "batch" and record.status == "RUNNING" and record.experiment_id == experiment


def test_runs_are_searched_ordered_ended_and_deleted(experiment):
    ids = [runs.create_run(experiment, f"r{i}", {"pertbench.kind": "a" if i < 3 else "b"}) for i in range(4)]
    found = runs.search([experiment], "tags.`pertbench.kind` = 'a'", order_by=["attributes.start_time ASC"])
    assert [r.run_id for r in found] == ids[:3]
    assert len(runs.search([experiment], max_results=2)) == 2
    runs.terminate(ids[0], "KILLED")
    runs.delete(ids[1])
    left = {r.run_id: r.status for r in runs.search([experiment])}
    assert left == {ids[0]: "KILLED", ids[2]: "RUNNING", ids[3]: "RUNNING"}
    assert runs.search([]) == [] and runs.experiment_id("pertbench/none") is None


def test_a_child_run_logs_to_its_parent_and_ends_failed_when_its_block_raises(experiment):
    parent = runs.create_run(experiment, "parent", {})
    with pytest.raises(RuntimeError), runs.child_run("child", parent) as child:
        assert runs.active_run_id() == child
        raise RuntimeError("boom")
    record = runs.get_run(child)
    assert record.status == "FAILED" and record.tags["mlflow.parentRunId"] == parent
    assert runs.active_run_id() is None


def test_dataset_logged_by_two_processes_at_once_is_retried_not_an_error(monkeypatch):
    """Two sweep workers inserting the same dataset row race on MLflow's UNIQUE constraint: the loser retries and
    links the row the winner wrote; any other error is raised at once."""
    import mlflow

    from benchmark.tracking import store

    calls = []

    def racing(dataset, context=None):
        calls.append(context)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")

    monkeypatch.setattr(mlflow, "log_input", racing)
    store.log_dataset("d", "ab" * 32, "/data/d.h5ad")
    assert len(calls) == 2

    def broken(dataset, context=None):
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(mlflow, "log_input", broken)
    with pytest.raises(RuntimeError, match="disk I/O"):
        store.log_dataset("d", "ab" * 32, "/data/d.h5ad")
