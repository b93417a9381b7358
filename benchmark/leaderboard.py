"""Builds the markdown leaderboard from the MLflow store: one table per dataset and split kind.

For every (dataset, split kind, predictor) the latest finished `bench run` counts. Scores are first averaged
over seeds within each split; each metric is then shown as the mean over splits ± the half-width of a 95%
Student-t interval across splits; the best mean per column is bold, and marked ≈ when its lead over the
runner-up is within noise (the 95% t-interval of their paired per-split differences contains 0). Splits share
training data, so the intervals are a guide, not an exact test.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from scipy import stats

from benchmark import tracking
from benchmark.ceiling import clip_for_display, normalized_score
from benchmark.errors import PertbenchError
from benchmark.metrics import METRICS

DEFAULT_PATH = Path("leaderboard") / "LEADERBOARD.md"
"""The committed leaderboard: written only by `make leaderboard` (scripts/reproduce_leaderboard.sh passes it as
an explicit --output), never by a plain `bench run` or `bench leaderboard`."""
RUN_PATH = Path(".pertbench") / "LEADERBOARD.md"
"""Where `bench run` and `bench leaderboard` write by default: a local file out of git, so trying the tool in a
checkout never rewrites the committed leaderboard/ (or its figures)."""
MANIFEST = ".pertbench-manifest.json"
"""In a board's figures/ folder: which files each leaderboard there wrote. Only these are ever removed."""


@dataclass
class Board:
    """The scores of one (dataset, split kind): per predictor a frame indexed by (split, seed)."""

    dataset: str
    split_kind: str
    scores: dict[str, pd.DataFrame]
    ceiling: pd.DataFrame
    references: dict[str, pd.DataFrame]
    not_applicable: dict[str, int]
    commands: dict[str, str]
    parents: dict[str, str]
    seconds: dict[str, pd.DataFrame] = field(default_factory=dict)


def collect(uri: str | None = None) -> list[Board]:
    """Read the latest finished parent run per (dataset, split kind, predictor) and its split runs."""
    tracking.use_store(uri)
    client = MlflowClient()
    experiments = [
        e for e in client.search_experiments() if e.name.startswith(tracking.EXPERIMENT_PREFIX + "/")
    ]
    if not experiments:
        return []
    ids = [e.experiment_id for e in experiments]
    parents = mlflow.search_runs(
        ids,
        filter_string="tags.`pertbench.level` = 'parent' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    latest: dict[tuple[str, str, str], object] = {}
    for run in parents:
        tags = run.data.tags
        key = (tags["pertbench.dataset"], tags["pertbench.split_kind"], tags["pertbench.predictor"])
        latest.setdefault(key, run)
    boards: dict[tuple[str, str], Board] = {}
    for (dataset, kind, predictor), parent in sorted(latest.items()):
        board = boards.setdefault((dataset, kind), Board(dataset, kind, {}, pd.DataFrame(), {}, {}, {}, {}))
        _add_parent(board, predictor, parent)
    return list(boards.values())


def _add_parent(board: Board, predictor: str, parent) -> None:
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        output_format="list",
    )
    rows, ceilings, references, seconds, na_splits = {}, {}, {}, {}, set()
    for child in children:
        tags, metrics = child.data.tags, child.data.metrics
        unit = (
            tags.get("pertbench.split", "?") + ":" + tags.get("pertbench.context", ""),
            int(tags.get("pertbench.seed", 0)),
        )
        if tags.get("pertbench.status") != "ok":
            na_splits.add(unit[0])
            continue
        rows[unit] = {k: metrics.get(k, np.nan) for k in METRICS}
        ceilings[unit] = {k: metrics.get(f"ceiling_{k}", np.nan) for k in METRICS}
        references[unit] = {k: metrics.get(f"reference_{k}", np.nan) for k in METRICS}
        seconds[unit] = {"fit_seconds": metrics.get("fit_seconds", np.nan)}
    board.scores[predictor] = per_split(rows)
    board.seconds[predictor] = per_split(seconds)
    board.references[predictor] = per_split(references)
    if ceilings:
        board.ceiling = pd.concat([board.ceiling, per_split(ceilings)])
        board.ceiling = board.ceiling[~board.ceiling.index.duplicated(keep="last")]
    board.not_applicable[predictor] = len(na_splits)
    board.parents[predictor] = parent.info.run_id
    params = parent.data.params
    seeds = params.get("seeds", "0")
    seed_flag = f"--seeds {seeds}" if "," in seeds else f"--seed {seeds}"
    board.commands[predictor] = (
        f"bench run --predictor {predictor} --dataset {board.dataset} --split {board.split_kind} {seed_flag}"
    )


def per_split(rows: dict[tuple[str, int], dict[str, float]]) -> pd.DataFrame:
    """One row per split: the mean over its seeds (NaN-aware), so seeds never count as independent splits."""
    if not rows:
        return pd.DataFrame(columns=list(METRICS))
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["split", "seed"])
    return frame.groupby(level="split").mean()


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean and 95% Student-t half-width over the finite values (half-width NaN for fewer than 2)."""
    x = values.to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    if len(x) < 2:
        return float(x.mean()), float("nan"), 1
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half), len(x)


def lead_within_noise(best: pd.Series, runner_up: pd.Series) -> bool:
    """True when the paired differences' 95% t-interval over shared (split, seed) units contains 0."""
    paired = pd.concat([best, runner_up], axis=1, join="inner").dropna()
    if len(paired) < 2:
        return True
    diff = paired.iloc[:, 0] - paired.iloc[:, 1]
    mean, half, _ = mean_ci(diff)
    return not np.isfinite(half) or abs(mean) <= half


def _goodness(values: pd.Series, higher: bool | None) -> float:
    """The mean mapped so that larger is better (NaN when undefined)."""
    mean = mean_ci(values)[0]
    if not np.isfinite(mean):
        return np.nan
    return -abs(mean) if higher is None else (mean if higher else -mean)


def rank_predictors(frames: dict[str, pd.DataFrame], metric: str) -> list[str]:
    """Predictors with a defined score, best first, compared on the splits they all scored.

    Means over different split sets are not comparable (a predictor that declines the hard splits would win),
    so ranking uses the common splits; the table still shows each predictor's mean over its own splits.
    """
    scored = {p: f[metric].dropna() for p, f in frames.items() if metric in f and f[metric].notna().any()}
    if not scored:
        return []
    common = set.intersection(*(set(v.index) for v in scored.values()))
    higher = METRICS[metric].higher_is_better
    key = {p: _goodness(v.loc[sorted(common)] if common else v, higher) for p, v in scored.items()}
    return sorted(scored, key=lambda p: -key[p])


def _fmt(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return "NaN"
    value = f"{mean:.3f}" if abs(mean) >= 0.01 or mean == 0 else f"{mean:.2e}"
    if not np.isfinite(half):
        return value
    return f"{value} ± {half:.3f}" if half >= 0.001 or half == 0 else f"{value} ± {half:.1e}"


def _metric_table(frames: dict[str, pd.DataFrame], extra: dict[str, str], mark_best: bool) -> list[str]:
    metrics = list(METRICS)
    header = "| predictor | n | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    best = {}
    for m in metrics:
        order = rank_predictors(frames, m)
        if mark_best and order:
            noisy = len(order) > 1 and lead_within_noise(frames[order[0]][m], frames[order[1]][m])
            best[m] = (order[0], noisy)
    for name, frame in frames.items():
        cells = []
        for m in metrics:
            mean, half, _ = mean_ci(frame[m]) if m in frame else (np.nan, np.nan, 0)
            text = _fmt(mean, half)
            if m in best and best[m][0] == name:
                text = f"**{text}**" + (" ≈" if best[m][1] else "")
            cells.append(text)
        lines.append(f"| {name}{extra.get(name, '')} | {len(frame)} | " + " | ".join(cells) + " |")
    return lines


def normalized(board: Board, predictor: str, metric: str) -> float:
    """(mean score − mean reference) / (mean ceiling − mean reference) over the predictor's scored splits.

    A ratio of means across splits: per-split ratios explode where a split's ceiling is barely above its
    baseline. 0 = the reference baseline, 1 = the noise ceiling; unclipped (the per-split values are in MLflow).
    """
    scores = board.scores[predictor][metric].dropna()
    refs = board.references[predictor][metric].reindex(scores.index)
    ceil = board.ceiling[metric].reindex(scores.index) if metric in board.ceiling else pd.Series(dtype=float)
    keep = refs.notna() & ceil.notna()
    if not keep.any():
        return float("nan")
    return normalized_score(
        scores[keep].mean(), refs[keep].mean(), ceil[keep].mean(), METRICS[metric].higher_is_better
    )


def _fmt_normalized(value: float) -> str:
    """Clipped to [-1, 1] for display only, with › marking a value beyond the range."""
    if not np.isfinite(value):
        return "NaN"
    shown = clip_for_display(value)
    return f"{shown:.2f}" + ("›" if shown != value else "")


def _normalized_table(board: Board) -> list[str]:
    metrics = list(METRICS)
    lines = ["| predictor | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for name in board.scores:
        cells = [_fmt_normalized(normalized(board, name, m)) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render(boards: list[Board], figure_links: dict[tuple[str, str, str], list[str]]) -> str:
    """The leaderboard markdown."""
    out = [
        "# pertbench leaderboard",
        "",
        "Generated by `bench leaderboard` from the MLflow store; do not edit by hand.",
        "Each cell: mean over splits (each split first averaged over its seeds) ± half-width of a 95% Student-t",
        "interval across splits; n = number of splits. **Bold** = best mean in the column; ≈ = its lead over the",
        "runner-up is within noise (paired 95% t-interval of the per-split differences contains 0).",
        "Directions: "
        + ", ".join(
            f"`{m.name}` {'↑' if m.higher_is_better else '↓' if m.higher_is_better is False else '→0'}"
            for m in METRICS.values()
        )
        + ".",
        "`NaN` = undefined (e.g. r of a constant prediction). (+k n/a) = k splits the predictor declared not applicable;",
        "best values are judged on the splits all predictors scored. Reference baseline: mean_shift (additive for",
        "combinations). Noise ceiling: two random halves of the real perturbed cells scored against each other; it",
        "uses half-size samples, so it is conservative and a predictor can exceed it (normalized > 1).",
        "",
    ]
    for board in sorted(boards, key=lambda b: (b.dataset, b.split_kind)):
        out += [f"## {board.dataset} · {board.split_kind}", ""]
        na = {p: f" (+{n} n/a)" for p, n in board.not_applicable.items() if n}  # splits it declined
        out += _metric_table(board.scores, na, mark_best=True)
        if not board.ceiling.empty:
            cells = [_fmt(*mean_ci(board.ceiling[m])[:2]) for m in METRICS]
            out.append(f"| *noise ceiling* | {len(board.ceiling)} | " + " | ".join(cells) + " |")
        out += [
            "",
            "Normalized (ratio of means over each predictor's splits: 0 = reference baseline, 1 = noise ceiling;",
            "shown clipped to [-1, 1], › marks a clipped value):",
            "",
        ]
        out += _normalized_table(board)
        out += ["", "Reproduce:", ""]
        out += [f"- `{cmd}`" for cmd in board.commands.values()]
        figure_notes = [
            f"{p}: " + ", ".join(f"[{Path(link).stem.rsplit('__', 1)[-1]}]({link})" for link in links)
            for p in board.scores
            if (links := figure_links.get((board.dataset, board.split_kind, p)))
        ]
        if figure_notes:
            out += [
                "",
                "Figures (summary across splits; composite of the first split): " + "; ".join(figure_notes),
            ]
        out.append("")
    return "\n".join(out)


RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
RESULT_METRICS = ("r", "jaccard_100", "energy_distance", "var_ratio")


def render_results(boards: list[Board]) -> str:
    """A compact results block for the README: headline metrics and measured fit time per split."""
    out = [
        "Generated by `bench leaderboard --readme README.md` from the same store as the leaderboard; mean over",
        "splits ± 95% t half-width; fit s = mean wall seconds to fit (or load from the model cache) one split.",
        "",
    ]
    for board in sorted(boards, key=lambda b: (b.dataset, b.split_kind)):
        out += [f"**{board.dataset} · {board.split_kind}**", ""]
        out += [
            "| predictor | n | " + " | ".join(RESULT_METRICS) + " | fit s |",
            "|---" * (len(RESULT_METRICS) + 3) + "|",
        ]
        for name, frame in board.scores.items():
            if frame.empty:
                continue
            cells = [_fmt(*mean_ci(frame[m])[:2]) for m in RESULT_METRICS]
            secs = board.seconds.get(name, pd.DataFrame()).get("fit_seconds", pd.Series(dtype=float))
            fit = f"{secs.mean():.1f}" if secs.notna().any() else "NaN"
            out.append(f"| {name} | {len(frame)} | " + " | ".join(cells) + f" | {fit} |")
        if not board.ceiling.empty:
            cells = [_fmt(*mean_ci(board.ceiling[m])[:2]) for m in RESULT_METRICS]
            out.append(f"| *noise ceiling* | {len(board.ceiling)} | " + " | ".join(cells) + " | |")
        out.append("")
    return "\n".join(out)


def replace_block(path: Path, start: str, end: str, body: str) -> Path:
    """Replace the text between the markers start and end in a file, atomically; the markers must exist."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PertbenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if start not in text or end not in text:
        raise PertbenchError(f"{path} has no {start} ... {end} block to update")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write(path, f"{head}{start}\n{body}\n{end}{tail}")
    return path


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write a file through a uniquely named temp file in the same folder and os.replace: readers and concurrent
    writers only ever see a whole old or a whole new file, and a failed write leaves no temp file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def update_readme(path: Path, boards: list[Board]) -> Path:
    """Replace the README's block between the results markers (which must exist) with the results tables."""
    return replace_block(path, RESULTS_START, RESULTS_END, render_results(boards))


def _copy_figures(
    boards: list[Board], figures_dir: Path, relative_to: Path
) -> dict[tuple[str, str, str], list[str]]:
    """Download each run's summary figure and its first composite into `figures_dir`; returns markdown links."""
    links: dict[tuple[str, str, str], list[str]] = {}
    client = MlflowClient()
    for board in boards:
        for predictor, parent_id in board.parents.items():
            stem = f"{board.dataset}__{board.split_kind}__{predictor}"
            found = []
            sources = [(parent_id, "figures/summary.png", "summary")]
            children = mlflow.search_runs(
                [client.get_run(parent_id).info.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`pertbench.status` = 'ok'",
                order_by=["attributes.start_time ASC"],
                max_results=1,
                output_format="list",
            )
            if children:
                sources.append((children[0].info.run_id, "figures/composite.png", "composite"))
            for run_id, artifact, kind in sources:
                try:
                    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
                except Exception as exc:  # noqa: BLE001 - a run logged without figures simply has none to link
                    if tracking.server_unreachable(exc):  # but a lost server fails once, not once per figure
                        raise
                    continue
                target = figures_dir / f"{_safe(stem)}__{kind}.png"
                _save_small_png(Path(local), target)
                found.append(os.path.relpath(target, relative_to).replace(os.sep, "/"))
            if found:
                links[(board.dataset, board.split_kind, predictor)] = found
    return links


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


def write_leaderboard(
    path: Path = RUN_PATH, uri: str | None = None, figures: bool = True, readme: Path | None = None
) -> Path:
    """Regenerate the leaderboard file and its figures from the store; optionally the README's results block.

    Touches only its own files: the markdown file, and in `<its folder>/figures/` the figures it names in that
    folder's manifest. Every file is written atomically under a unique temp name, and the whole update holds a
    lock per folder, so concurrent writers leave a consistent board. Nothing else in the folder is removed.
    """
    path = Path(path)
    if path.is_dir():
        raise PertbenchError(
            f"leaderboard path {path} is a directory; give the markdown file to write, e.g. {path / 'LEADERBOARD.md'}"
        )
    boards = collect(uri)
    if readme is not None:
        update_readme(readme, boards)
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
        links: dict = {}
        if figures:
            links = _copy_figures(boards, figures_dir, relative_to=path.parent)
        atomic_write(path, render(boards, links))
        if figures and figures_dir.is_dir():
            _update_manifest(figures_dir, path.name, [Path(v).name for vs in links.values() for v in vs])
    return path


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
