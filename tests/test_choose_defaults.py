"""benchmark.selection.choose_defaults: the shared candidate list, rank aggregation, leave-one-dataset-out and the run."""

from __future__ import annotations

import json
import math

import pytest

from benchmark.selection import choose_defaults as cd
from predictors.registry import make_predictor


def test_mean_ranks_average_ties_and_put_unscored_last() -> None:
    table = {"a": {0: 0.5, 1: 0.9, 2: 0.9}, "b": {0: 0.1, 1: math.nan}}
    ranks = cd.mean_ranks(table, "r", ["a", "b"])
    # a: 1 and 2 tie for first (rank 1.5), 0 third; b: 0 first, 1 unscored, 2 absent (both worst, tied 2.5)
    assert ranks == {0: (3 + 1) / 2, 1: (1.5 + 2.5) / 2, 2: (1.5 + 2.5) / 2}


def test_minimized_objective_ranks_low_values_first() -> None:
    table = {"a": {0: 0.3, 1: 0.1}}
    assert cd.choose(table, "energy_distance_shape", ["a"]) == 1
    assert cd.choose(table, "r", ["a"]) == 0


def test_ties_go_to_the_current_configuration() -> None:
    table = {"a": {0: 0.5, 1: 0.9}, "b": {0: 0.9, 1: 0.5}}
    assert cd.choose(table, "r", ["a", "b"]) == 0


def test_leave_one_dataset_out_reports_a_choice_that_depends_on_one_dataset() -> None:
    rows = [
        {"dataset": d, "candidate": i, "params": {"x": i}, **dict.fromkeys(cd.REPORTED, v)}
        for d, values in {"a": [0.1, 0.9], "b": [0.2, 0.3], "c": [0.5, 0.4]}.items()
        for i, v in enumerate(values)
    ]
    summary = cd.summarize(rows, "r", ["a", "b", "c"])
    assert summary["chosen"] == 1 and summary["params"] == {"x": 1}
    lodo = summary["leave_one_dataset_out"]
    assert lodo["a"] == {"chosen": 0, "same": False}  # without a, 0 and 1 tie: the current one
    assert lodo["b"]["same"] is False and lodo["c"]["same"] is True
    assert summary["candidates"][1]["a.r"] == 0.9


def test_candidates_start_at_the_constructor_defaults_and_hold_fixed_values() -> None:
    space = {"n_hidden": ("categorical", [64, 128])}
    found = cd.candidates("cvae_modeB", 5, seed=3, fixed={"max_steps": 1500}, space_override=space)
    from predictors.cvae import CVAEPredictor

    model = CVAEPredictor()  # the constructor's defaults, whatever an earlier choice wrote
    assert found[0]["n_latent"] == model.n_latent and found[0]["lr"] == model.lr
    assert all(c["max_steps"] == 1500 for c in found)
    assert all(c["n_hidden"] in (64, 128) for c in found[1:])
    assert len({json.dumps(c, sort_keys=True) for c in found}) == 5
    assert found == cd.candidates("cvae_modeB", 5, seed=3, fixed={"max_steps": 1500}, space_override=space)


def test_run_writes_the_choice_and_resumes_without_rescoring(tmp_path, monkeypatch) -> None:
    results, out = tmp_path / "rows.jsonl", tmp_path / "chosen.json"
    argv = ["--predictors", "linear_cv", "--datasets", "synthetic", "--candidates", "2"]
    argv += ["--validation-splits", "1", "--jobs", "1", "--results", str(results), "--output", str(out)]
    assert cd.main(argv) == 0
    rows = results.read_text().splitlines()
    assert len(rows) == 2
    chosen = json.loads(out.read_text())["linear_cv"]
    assert chosen["chosen"] in (0, 1) and "min_cv_gain" in chosen["params"]
    assert all(math.isfinite(c["synthetic.r"]) for c in chosen["candidates"])

    def fail(job):  # a rerun finds every evaluation stored
        raise AssertionError("re-scored a stored evaluation")

    monkeypatch.setattr(cd, "_evaluate", fail)
    assert cd.main(argv) == 0
    assert results.read_text().splitlines() == rows


@pytest.mark.parametrize("bad", [["--candidates", "0"], ["--fixed", "{nope"], ["--datasets", "nope"]])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, bad) -> None:
    argv = ["--predictors", "linear_cv", "--output", str(tmp_path / "x.json"), *bad]
    assert cd.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "x.json").exists()


def test_registered_cvae_names_take_the_chosen_defaults() -> None:
    from predictors.registry import CHOSEN_DEFAULTS

    chosen = json.loads(CHOSEN_DEFAULTS.read_text())
    for name, key in [("cvae_modeA", "cvae_modeB"), ("cvae_modeB", "cvae_modeB")] + [
        ("cvae_mlp_modeA", "cvae_mlp_modeB"),
        ("cvae_mlp_modeB", "cvae_mlp_modeB"),
    ]:
        params = make_predictor(name)[1].get_params()
        assert {k: params[k] for k in chosen[key]["params"]} == chosen[key]["params"]
    # the two modes of one decoder share a fit (the model cache's key)
    a, b = make_predictor("cvae_modeA")[1], make_predictor("cvae_modeB")[1]
    assert a.fit_params() == b.fit_params()
    assert make_predictor("cvae_mlp_modeB")[1].decoder == "mlp"


def test_a_missing_chosen_entry_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    from benchmark.core.errors import PertbenchError
    from predictors import registry

    (tmp_path / "d.json").write_text('{"cvae_modeB": {"params": {}}}')
    monkeypatch.setattr(registry, "CHOSEN_DEFAULTS", tmp_path / "d.json")
    registry._chosen_file.cache_clear()
    try:
        with pytest.raises(PertbenchError, match="no chosen params for 'cvae_mlp_modeB'"):
            make_predictor("cvae_mlp_modeB")
        make_predictor("mean_shift")  # a predictor without chosen defaults never reads the file
    finally:
        registry._chosen_file.cache_clear()


def test_a_run_on_a_visible_dataset_uses_the_choice_made_without_it(tmp_path, monkeypatch) -> None:
    from predictors import registry

    pooled, alone = {"n_latent": 40}, {"n_latent": 12}
    entry = {
        "chosen": 0,
        "params": pooled,
        "leave_one_dataset_out": {"a": {"chosen": 1, "same": False}, "b": {"chosen": 0, "same": True}},
        "candidates": [{"index": 0, "params": pooled}, {"index": 1, "params": alone}],
    }
    chosen = {"datasets": {"a": "sha-a", "b": "sha-b"}, "cvae_modeB": entry, "cvae_mlp_modeB": entry}
    (tmp_path / "d.json").write_text(json.dumps(chosen))
    monkeypatch.setattr(registry, "CHOSEN_DEFAULTS", tmp_path / "d.json")
    registry._chosen_file.cache_clear()
    try:
        latent = lambda key: make_predictor("cvae_modeB", key)[1].n_latent  # noqa: E731
        assert latent(None) == 40 and latent(("b", "sha-b")) == 40
        assert latent(("a", "sha-a")) == 12  # a's own cells changed the pooled choice: a runs without them
        assert latent(("a", "another file")) == 40  # same name, other data: not the dataset the choice saw
        assert make_predictor("cvae_modeB", ("a", "sha-a"), n_latent=7)[1].n_latent == 7  # --param wins
    finally:
        registry._chosen_file.cache_clear()
