"""Builds the markdown leaderboard from the MLflow store: one table per dataset (and data checksum) and split kind.

Which runs count and how they are read: `board_data`; the statistics: `board_stats`; the markdown:
`board_render`. This module writes the board: its default paths, the ownership mark that keeps a user's file
from being replaced, the figures copied beside it (with a manifest of what it wrote), one lock per folder and
atomic writes. The names of the other three modules stay importable from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from benchmark.core.errors import PertbenchError
from benchmark.core.files import atomic_write, file_to_write, replace_block, safe_name
from benchmark.reports.board_data import (  # noqa: F401
    Board,
    _Parent,
    _rows,
    collect,
    per_split,
    reproduce_command,
)
from benchmark.reports.board_render import (  # noqa: F401
    OWNER_MARK,
    RESULTS_END,
    RESULTS_START,
    _metric_table,
    render,
    render_results,
)
from benchmark.reports.board_stats import (  # noqa: F401
    best_row,
    lead_within_noise,
    mean_ci,
    normalized,
    rank_predictors,
)
from benchmark.tracking import runs, schema
from benchmark.tracking import store as tracking

DEFAULT_PATH = Path("leaderboard") / "LEADERBOARD.md"
"""The committed leaderboard: written only by `make leaderboard` (scripts/reproduce_leaderboard.sh passes it as
an explicit --output), never by a plain `bench run` or `bench leaderboard`."""
RUN_PATH = Path(".pertbench") / "LEADERBOARD.md"
"""Where `bench run` and `bench leaderboard` write by default: a local file out of git, so trying the tool in a
checkout never rewrites the committed leaderboard/ (or its figures)."""


def default_board_path(uri: str | None = None) -> Path:
    """Where a run or `bench leaderboard` writes the board of a store by default: RUN_PATH for bench's default
    store, else a board of that store's own in .pertbench/boards/ (so a run into another store never replaces the
    default store's board with its rows alone)."""
    resolved = tracking.tracking_uri(uri)
    if resolved == tracking.DEFAULT_TRACKING_URI:
        return RUN_PATH
    path = tracking.sqlite_path(resolved)
    if (
        path is not None
        and path.resolve() == Path(tracking.DEFAULT_TRACKING_URI[len("sqlite:///") :]).resolve()
    ):
        return RUN_PATH
    label = path.stem if path is not None else urllib.parse.urlparse(resolved).hostname or "store"
    digest = hashlib.sha256(str(path.resolve() if path is not None else resolved).encode()).hexdigest()[:8]
    return RUN_PATH.parent / "boards" / f"{safe_name(label)}-{digest}.md"


MANIFEST = ".pertbench-manifest.json"
"""In a board's figures/ folder: which files each leaderboard there wrote. Only these are ever removed."""


def update_readme(path: Path, boards: list[Board]) -> Path:
    """Replace the README's block between the results markers (which must exist) with the results tables."""
    return replace_block(path, RESULTS_START, RESULTS_END, render_results(boards))


def _copy_figures(
    boards: list[Board], figures_dir: Path, relative_to: Path
) -> dict[tuple[str, str, str], list[str]]:
    """Download each run's summary figure and its first composite into `figures_dir`; returns markdown links."""
    links: dict[tuple[str, str, str], list[str]] = {}
    for board in boards:
        for predictor, parent_id in board.parents.items():
            stem = f"{board.dataset}__{board.split_kind}__{predictor}"
            found = []
            sources = [(parent_id, f"{schema.FIGURES_DIR}/{schema.SUMMARY_FIGURE}", "summary")]
            children = runs.search(
                [runs.get_run(parent_id).experiment_id],
                filter_string=schema.children_filter(parent_id, schema.STATUS_OK),
                order_by=["attributes.start_time ASC"],
                max_results=1,
            )
            if children:
                sources.append(
                    (children[0].run_id, f"{schema.FIGURES_DIR}/{schema.COMPOSITE_FIGURE}", "composite")
                )
            for run_id, artifact, kind in sources:
                try:
                    local = runs.download_artifact(run_id, artifact)
                except Exception as exc:  # noqa: BLE001 - a run logged without figures simply has none to link
                    if tracking.server_unreachable(exc):  # but a lost server fails once, not once per figure
                        raise
                    continue
                target = figures_dir / figure_name(stem, kind)
                _save_small_png(local, target)
                found.append(os.path.relpath(target, relative_to).replace(os.sep, "/"))
            if found:
                links[(board.dataset, board.split_kind, predictor)] = found
    return links


def board_stamp() -> str:
    """When and from which code a board was generated: the date (UTC), pertbench's version and the git commit."""
    import time

    import benchmark

    commit = tracking.git_commit()
    return f"Generated {time.strftime('%Y-%m-%d', time.gmtime())} by pertbench {benchmark.__version__}" + (
        f" at commit {commit[:12]}." if commit else "."
    )


def _comparison_figures(
    boards: list[Board], figures_dir: Path, relative_to: Path
) -> dict[tuple[str, str], str]:
    """Each board's comparison figure (benchmark.reports.compare_figure) where it ranks two or more predictors;
    returns markdown links."""
    import tempfile

    from benchmark.reports.compare_figure import comparison_figure

    links = {}
    for board in boards:
        if len([p for p in board.scores if p not in board.partial]) < 2:
            continue
        target = figures_dir / comparison_name(board)
        with tempfile.TemporaryDirectory() as tmp:
            drawn = comparison_figure(board, Path(tmp) / "comparison.png")
            _save_small_png(drawn, target)
        links[(board.dataset, board.split_kind)] = os.path.relpath(target, relative_to).replace(os.sep, "/")
    return links


def comparison_name(board: Board) -> str:
    """The file name of a board's comparison figure."""
    return figure_name(f"{board.dataset}__{board.split_kind}", "comparison")


def _save_small_png(source: Path, target: Path) -> None:
    """Copy a figure as a 256-colour palette PNG (a third of the size, so committed figures stay small), written
    atomically."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256).save(buffer, format="PNG", optimize=True)
    target.parent.mkdir(exist_ok=True)  # figures/ is created only when there is a figure to put in it
    atomic_write(target, buffer.getvalue())


def _read_manifest(figures_dir: Path) -> dict[str, list[str]]:
    """Board file name -> the figure files it wrote; an unreadable manifest counts as empty (deletes nothing)."""
    try:
        raw = json.loads((figures_dir / MANIFEST).read_text())
        boards = raw.get("boards", {})
        return {str(k): [str(f) for f in v] for k, v in boards.items() if isinstance(v, list)}
    except (OSError, ValueError, AttributeError):
        return {}


def _update_manifest(figures_dir: Path, board_name: str, written: list[str]) -> None:
    """Record this board's figures and delete the ones it wrote before but no longer links (unless another board
    in the same folder lists them). Files the manifest does not list are never deleted."""
    manifest = _read_manifest(figures_dir)
    before = set(manifest.get(board_name, []))
    manifest[board_name] = sorted(set(written))
    still_used = {f for files in manifest.values() for f in files}
    for name in sorted(before - still_used):
        target = figures_dir / name
        if Path(name).name == name and name != MANIFEST:  # a plain file name inside figures/, nothing else
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    atomic_write(figures_dir / MANIFEST, json.dumps({"version": 1, "boards": manifest}, indent=1) + "\n")


def figure_name(stem: str, kind: str) -> str:
    """The file name of one of a board's figures (stem: dataset, split kind and predictor)."""
    return f"{safe_name(stem)}__{kind}.png"


def _owned_board(path: Path) -> bool:
    """Whether `path` is absent or a leaderboard this command wrote (its header holds OWNER_MARK)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise PertbenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return OWNER_MARK.encode() in head


def check_board_path(path: Path | str, force: bool = False, what: str = "leaderboard path") -> Path:
    """The board's path, checked before any work: a file (not a folder) that is absent or a board bench wrote
    (else a one-line error; `force` allows replacing it)."""
    path = file_to_write(path, what, "markdown file", "LEADERBOARD.md")
    if not force and not _owned_board(path):
        raise PertbenchError(
            f"{path} exists and is not a leaderboard bench wrote; refusing to replace it "
            "(choose another path, or `bench leaderboard --force` to replace it)"
        )
    return path


def _foreign_figures(boards: list[Board], figures_dir: Path) -> list[str]:
    """Figure files the board would write that exist in `figures_dir` but no board's manifest lists."""
    if not figures_dir.is_dir():
        return []
    owned = {name for names in _read_manifest(figures_dir).values() for name in names}
    planned = [
        figure_name(f"{board.dataset}__{board.split_kind}__{predictor}", kind)
        for board in boards
        for predictor in board.parents
        for kind in ("summary", "composite")
    ] + [comparison_name(board) for board in boards]
    return [name for name in planned if name not in owned and (figures_dir / name).exists()]


def write_leaderboard(
    path: Path = RUN_PATH,
    uri: str | None = None,
    figures: bool = True,
    readme: Path | None = None,
    force: bool = False,
    report: Callable[[list[Board]], None] | None = None,
) -> Path:
    """Regenerate the leaderboard file and its figures from the store; optionally the README's results block.

    Touches only its own files: the markdown file (refused, before anything is written, when it exists without
    the board's header, unless `force`), and in `<its folder>/figures/` the figures it names in that folder's
    manifest (a same-named file the manifest does not list is refused likewise). Every file is written
    atomically; the store is read and the files written under one lock per folder, so concurrent writers leave
    a consistent, current board. Nothing else in the folder is removed.
    """
    path = check_board_path(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PertbenchError(
            f"cannot create the leaderboard folder {path.parent}: {exc.strerror or exc}"
        ) from exc
    figures_dir = path.parent / "figures"
    if figures and figures_dir.exists() and not figures_dir.is_dir():
        raise PertbenchError(f"{figures_dir} is not a folder; the leaderboard's figures go there")
    with tracking.path_lock(path.parent.resolve() / ".pertbench-board"):
        boards = collect(uri)  # read under the lock: a concurrent writer never publishes an older board
        foreign = _foreign_figures(boards, figures_dir) if figures and not force else []
        if foreign:
            raise PertbenchError(
                f"{figures_dir / foreign[0]} exists and was not written by bench leaderboard; refusing to "
                "replace it (move it, choose another --output, or pass --force)"
            )
        if readme is not None:
            update_readme(readme, boards)
        links: dict = {}
        comparisons: dict = {}
        if figures:
            links = _copy_figures(boards, figures_dir, relative_to=path.parent)
            comparisons = _comparison_figures(boards, figures_dir, relative_to=path.parent)
        atomic_write(path, render(boards, links, board_stamp(), comparisons))
        if report is not None:  # e.g. the CLI's verdict lines, from the boards just written
            report(boards)
        if figures and figures_dir.is_dir():
            written = [Path(v).name for vs in links.values() for v in vs] + [
                Path(v).name for v in comparisons.values()
            ]
            _update_manifest(figures_dir, path.name, written)
    return path
