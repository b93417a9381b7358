"""Progress bars: drawn on an interactive terminal, silent in CI and in logs; one style for the CLI and the CVAE."""

from __future__ import annotations

import io

import pytest

from benchmark.core import progress
from benchmark.core.task import Task
from benchmark.data.synthetic import make_synthetic
from predictors.cvae import CVAEPredictor


class _Terminal(io.StringIO):
    """A captured stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch) -> _Terminal:
    """Make stderr a terminal (inside the test: pytest swaps sys.stderr back in between setup and call)."""
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.delenv("CI", raising=False)
    return stream


def test_bars_draw_on_a_terminal_only_outside_ci(monkeypatch):
    terminal = _terminal(monkeypatch)
    assert progress.interactive()
    with progress.bar(3, "splits", "splits") as bar:
        bar.update(3)
    drawn = terminal.getvalue()  # the first draw (later ones are rate-limited; leave=False clears the line)
    assert "splits:   0%|" in drawn and "| 0/3 splits [" in drawn
    for value in ("true", "1"):
        monkeypatch.setenv("CI", value)
        assert not progress.interactive()
    monkeypatch.setenv("CI", "false")
    assert progress.interactive()
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file or pipe
    monkeypatch.delenv("CI")
    assert not progress.interactive()


def test_silent_bars_leave_lines_intact(monkeypatch):
    monkeypatch.setenv("CI", "true")
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    with progress.bar(2, "splits", "splits") as bar:
        progress.write("[1/2] a line")
        bar.update(1)
    assert stream.getvalue() == "[1/2] a line\n"


@pytest.mark.parametrize("ci", [False, True])
def test_cvae_fit_shows_an_epoch_bar_in_the_shared_style(monkeypatch, ci):
    terminal = _terminal(monkeypatch)
    if ci:
        monkeypatch.setenv("CI", "true")
    data = make_synthetic(n_genes=20, n_contexts=1, n_perturbations=1, cells_per_group=20, seed=0)
    task = Task("condition", "control", "cell_type", expression="counts")
    model = CVAEPredictor(n_latent=2, n_hidden=8, max_epochs=3, patience=5, kl_warmup_steps=1).fit(data, task)
    out = terminal.getvalue()
    if ci:
        assert out == ""  # not verbose and in CI: nothing at all
    else:
        assert "cvae:   0%|" in out and "| 0/3 epochs [" in out and model.history_
        assert "[cvae] epoch" not in out  # the per-epoch lines stay behind verbose=True
