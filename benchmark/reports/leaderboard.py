"""Builds the markdown leaderboard from the MLflow store: one table per dataset (and data checksum) and split kind.

Which runs count: a row is one *configuration*, i.e. one predictor with one set of hyperparameters (`hp.*`
params) on one data checksum and split kind. Of a configuration's finished parent runs, the complete ones (run
on the full split set, no --max-splits or --perturbation restriction) win over partial ones; among those, the
run with the most seeds, then the latest. Several configurations of one predictor (e.g. a `--param` variant
run in full) are each shown as their own row, labelled with the parameters that differ from the registered
defaults. A predictor's partial runs are shown only when it has no complete run on the board, labelled
"(partial)", and never compete for the bold "best" nor feed the ceiling and oracle rows where a complete run
has them. So a quick look never changes the rows of full runs. A predictions file scored by `bench score` is a
configuration of its own (labelled "(scored file)" when it shares a name with a fitted predictor's row), and
its Reproduce line is the `bench score` command.

Scores are first averaged over seeds within each split; each metric is then shown as the mean over splits ± the
half-width of a 95% Student-t interval across splits; the best mean per column is bold (unless the top values
tie), and marked ≈ when its lead over the runner-up is within noise (the 95% t-interval of their paired
per-split differences contains 0). Splits share training data, so the intervals are a guide, not an exact test.
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

from benchmark.core.errors import PertbenchError
from benchmark.scoring.ceiling import clip_for_display, normalized_score
from benchmark.scoring.metrics import METRICS
from benchmark.tracking import schema
from benchmark.tracking import store as tracking

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
    """The scores of one (dataset, split kind): per row (a predictor configuration) a frame indexed by split."""

    dataset: str
    split_kind: str
    scores: dict[str, pd.DataFrame]
    ceiling: pd.DataFrame
    references: dict[str, pd.DataFrame]
    not_applicable: dict[str, int]
    commands: dict[str, str]
    parents: dict[str, str]
    seconds: dict[str, pd.DataFrame] = field(default_factory=dict)
    oracle: pd.DataFrame = field(default_factory=pd.DataFrame)
    partial: set[str] = field(default_factory=set)
    """Rows drawn from a partial run (restricted split set): labelled, never bold."""
    checksum: str = ""


@dataclass(frozen=True)
class _Parent:
    """What the leaderboard reads from one finished parent run."""

    run: object
    dataset: str
    split_kind: str
    predictor: str
    checksum: str
    config: tuple
    partial: bool
    n_seeds: int
    start_time: int
    changed: str  # the non-default hyperparameters as `k=v, ...` ("" when none or unknown)
    source: str = schema.SOURCE_RUN  # run (a fitted predictor) or score (a scored predictions file)
    config_digest: str = ""  # the `bench run --config` file in force ("" for the registered defaults)

    @classmethod
    def read(cls, run) -> _Parent:
        tags, params = run.data.tags, run.data.params
        hp = tuple(sorted((k, v) for k, v in params.items() if k.startswith(schema.HP_PREFIX)))
        checksum = params.get(schema.PARAM_DATASET_CHECKSUM, "")
        predictor = tags[schema.TAG_PREDICTOR]
        source = tags.get(schema.TAG_SOURCE, schema.SOURCE_RUN)
        config_digest = params.get(schema.PARAM_CONFIG_DIGEST, "")
        return cls(
            run=run,
            dataset=tags[schema.TAG_DATASET],
            split_kind=tags[schema.TAG_SPLIT_KIND],
            predictor=predictor,
            checksum=checksum,
            config=(predictor, hp, source, config_digest),
            partial=tags.get(schema.TAG_PARTIAL, schema.FALSE) == schema.TRUE,
            n_seeds=len(params.get(schema.PARAM_SEEDS, "0").split(",")),
            start_time=int(run.info.start_time or 0),
            changed=params.get(schema.PARAM_CLI_PARAMS, ""),
            source=source,
            config_digest=config_digest,
        )

    def preference(self) -> tuple:
        """Larger is preferred: complete before partial, then more seeds, then later."""
        return (not self.partial, self.n_seeds, self.start_time)


def collect(uri: str | None = None) -> list[Board]:
    """Read the chosen parent run of every configuration (see the module docstring) and its split runs."""
    tracking.use_store(uri)
    client = MlflowClient()
    experiments = [
        e for e in client.search_experiments() if e.name.startswith(schema.EXPERIMENT_PREFIX + "/")
    ]
    if not experiments:
        return []
    runs = mlflow.search_runs(
        [e.experiment_id for e in experiments],
        filter_string=schema.parent_filter(),
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    chosen: dict[tuple, _Parent] = {}  # (dataset, kind, checksum, config) -> preferred run
    for run in runs:
        parent = _Parent.read(run)
        key = (parent.dataset, parent.split_kind, parent.checksum, parent.config)
        if key not in chosen or parent.preference() > chosen[key].preference():
            chosen[key] = parent
    by_board: dict[tuple[str, str, str], list[_Parent]] = {}
    for (dataset, kind, checksum, _), parent in chosen.items():
        by_board.setdefault((dataset, kind, checksum), []).append(parent)
    names = _board_names(by_board)
    boards = []
    for key in sorted(by_board, key=lambda k: (names[k], k[1])):
        dataset, kind, checksum = key
        board = Board(names[key], kind, {}, pd.DataFrame(), {}, {}, {}, {}, checksum=checksum)
        for label, parent in _rows(by_board[key]):
            _add_parent(board, label, parent.run, partial=parent.partial)
        boards.append(board)
    return boards


def _board_names(by_board: dict[tuple[str, str, str], list[_Parent]]) -> dict[tuple[str, str, str], str]:
    """The dataset name, with a checksum prefix where one name was run on several data files."""
    checksums: dict[str, set[str]] = {}
    for dataset, _, checksum in by_board:
        checksums.setdefault(dataset, set()).add(checksum)
    return {
        key: key[0] if len(checksums[key[0]]) == 1 else f"{key[0]} (data {key[2][:8]})" for key in by_board
    }


def _rows(parents: list[_Parent]) -> list[tuple[str, _Parent]]:
    """The rows of one board, labelled: complete configurations, and partial ones of predictors with none."""
    complete = {(p.predictor, p.source) for p in parents if not p.partial}
    shown = [p for p in parents if not p.partial or (p.predictor, p.source) not in complete]
    shown.sort(key=lambda p: (p.predictor, p.partial, p.changed, -p.start_time))
    per_predictor: dict[str, int] = {}
    for p in shown:
        per_predictor[p.predictor] = per_predictor.get(p.predictor, 0) + 1
    rows, used = [], set()
    for p in shown:
        label = p.predictor
        extra = [x for x in (p.changed, f"config {p.config_digest[:8]}" if p.config_digest else "") if x]
        if extra:  # a tuned config's per-split values read "per split": its digest tells configs apart
            label += f" ({'; '.join(extra)})"
        elif per_predictor[p.predictor] > 1 and p.source == schema.SOURCE_SCORE:
            label += " (scored file)"
        elif per_predictor[p.predictor] > 1:
            label += " (defaults)"
        if label in used:  # e.g. old runs without the recorded parameters: tell them apart by their run
            label += f" [{p.run.info.run_id[:8]}]"
        used.add(label)
        rows.append((label + (" (partial)" if p.partial else ""), p))
    # complete rows first, so their ceiling and oracle values win over a partial run's for the same split
    return sorted(rows, key=lambda r: r[1].partial)


def _add_parent(board: Board, label: str, parent, partial: bool = False) -> None:
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=schema.children_filter(parent.info.run_id),
        output_format="list",
    )
    rows, ceilings, references, oracles, seconds, na_splits = {}, {}, {}, {}, {}, set()
    for child in children:
        tags, metrics = child.data.tags, child.data.metrics
        unit = (
            tags.get(schema.TAG_SPLIT, "?") + ":" + tags.get(schema.TAG_CONTEXT, ""),
            int(tags.get(schema.TAG_SEED, 0)),
        )
        if tags.get(schema.TAG_STATUS) != schema.STATUS_OK:
            na_splits.add(unit[0])
            continue
        rows[unit] = schema.unprefixed("", metrics)
        ceilings[unit] = schema.unprefixed(schema.CEILING_PREFIX, metrics)
        references[unit] = schema.unprefixed(schema.REFERENCE_PREFIX, metrics)
        oracles[unit] = schema.unprefixed(schema.ORACLE_PREFIX, metrics)
        seconds[unit] = {schema.FIT_SECONDS: metrics.get(schema.FIT_SECONDS, np.nan)}
    board.scores[label] = per_split(rows)
    board.seconds[label] = per_split(seconds)
    board.references[label] = per_split(references)
    if ceilings:
        board.ceiling = _first_per_split(board.ceiling, per_split(ceilings))
    if oracles and any(np.isfinite(v).any() for v in per_split(oracles).to_numpy().T):
        board.oracle = _first_per_split(board.oracle, per_split(oracles))
    board.not_applicable[label] = len(na_splits)
    board.parents[label] = parent.info.run_id
    if partial:
        board.partial.add(label)
    board.commands[label] = reproduce_command(parent, board)


def _first_per_split(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of `existing`, plus those of `new` for splits it lacks (the first run read per split wins)."""
    frame = pd.concat([existing, new]) if not existing.empty else new
    return frame[~frame.index.duplicated(keep="first")]


def reproduce_command(parent, board: Board) -> str:
    """The `bench run` (or, for a scored predictions file, `bench score`) command that reproduces a parent run, as
    recorded; reconstructed for runs logged before the arguments were recorded."""
    params = parent.data.params
    if schema.PARAM_CLI in params:
        command = "score" if parent.data.tags.get(schema.TAG_SOURCE) == schema.SOURCE_SCORE else "run"
        return f"bench {command} {params[schema.PARAM_CLI]}"
    seeds = params.get(schema.PARAM_SEEDS, "0")
    seed_flag = f"--seeds {seeds}" if "," in seeds else f"--seed {seeds}"
    predictor = parent.data.tags[schema.TAG_PREDICTOR]
    return (
        f"bench run --predictor {predictor} --dataset {parent.data.tags[schema.TAG_DATASET]} "
        f"--split {board.split_kind} {seed_flag}"
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


TIE_TOLERANCE = 1e-6
"""Top values closer than this (relative to max(1, |value|)) are a tie: no row is bold. Predictions are float32,
so "control cells + a constant shift" reproduces the controls' spread only to float32 rounding (~1e-7): such
rows must tie on var_ratio, whatever the shift."""


def _ranked(frames: dict[str, pd.DataFrame], metric: str) -> list[tuple[str, float]]:
    """(row, goodness on the splits all rows scored), best first; rows without a defined score left out."""
    scored = {p: f[metric].dropna() for p, f in frames.items() if metric in f and f[metric].notna().any()}
    if not scored:
        return []
    common = set.intersection(*(set(v.index) for v in scored.values()))
    higher = METRICS[metric].higher_is_better
    key = {p: _goodness(v.loc[sorted(common)] if common else v, higher) for p, v in scored.items()}
    return sorted(key.items(), key=lambda item: -item[1])


def rank_predictors(frames: dict[str, pd.DataFrame], metric: str) -> list[str]:
    """Predictors with a defined score, best first, compared on the splits they all scored.

    Means over different split sets are not comparable (a predictor that declines the hard splits would win),
    so ranking uses the common splits; the table still shows each predictor's mean over its own splits.
    """
    return [p for p, _ in _ranked(frames, metric)]


def best_row(frames: dict[str, pd.DataFrame], metric: str) -> tuple[str, bool] | None:
    """The row to bold for `metric` and whether its lead is within noise; None when the top values tie."""
    order = _ranked(frames, metric)
    if not order:
        return None
    if len(order) > 1:
        (first, g1), (second, g2) = order[0], order[1]
        if abs(g1 - g2) <= TIE_TOLERANCE * max(1.0, abs(g1)):
            return None
        return first, lead_within_noise(frames[first][metric], frames[second][metric])
    return order[0][0], False


def _fmt(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return "NaN"
    value = f"{mean:.3f}" if abs(mean) >= 0.01 or mean == 0 else f"{mean:.2e}"
    if not np.isfinite(half):
        return value
    return f"{value} ± {half:.3f}" if half >= 0.001 or half == 0 else f"{value} ± {half:.1e}"


def _cells(frame: pd.DataFrame, metrics: list[str]) -> list[str]:
    return [_fmt(*mean_ci(frame[m])[:2]) if m in frame else "NaN" for m in metrics]


def _reference_rows(board: Board, metrics: list[str], trailing: str = "") -> list[str]:
    """The italic reference rows: the mean oracle and the noise ceiling (those the board has)."""
    lines = []
    for name, frame in ((schema.ORACLE, board.oracle), (schema.CEILING, board.ceiling)):
        if not frame.empty:
            lines.append(
                f"| *{name}* | {len(frame)} | " + " | ".join(_cells(frame, metrics)) + f" |{trailing}"
            )
    return lines


def _metric_table(
    frames: dict[str, pd.DataFrame], extra: dict[str, str], mark_best: bool, unranked: set[str] = frozenset()
) -> list[str]:
    metrics = list(METRICS)
    header = "| predictor | n | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    ranked = {p: f for p, f in frames.items() if p not in unranked}
    best = {m: b for m in metrics if mark_best and (b := best_row(ranked, m)) is not None}
    for name, frame in frames.items():
        cells = []
        for m, text in zip(metrics, _cells(frame, metrics), strict=True):
            if m in best and best[m][0] == name:
                text = f"**{text}**" + (" ≈" if best[m][1] else "")
            cells.append(text)
        lines.append(f"| {name}{extra.get(name, '')} | {len(frame)} | " + " | ".join(cells) + " |")
    return lines


def _normalized_of(scores: pd.Series, refs: pd.Series, ceil: pd.Series, metric: str) -> float:
    """Ratio of means over the splits where score, reference and ceiling are all defined."""
    scores = scores.dropna()
    refs, ceil = refs.reindex(scores.index), ceil.reindex(scores.index)
    keep = refs.notna() & ceil.notna()
    if not keep.any():
        return float("nan")
    return normalized_score(
        scores[keep].mean(), refs[keep].mean(), ceil[keep].mean(), METRICS[metric].higher_is_better
    )


def normalized(board: Board, predictor: str, metric: str) -> float:
    """(mean score − mean reference) / (mean ceiling − mean reference) over the predictor's scored splits.

    A ratio of means across splits: per-split ratios explode where a split's ceiling is barely above its
    baseline. 0 = the reference baseline, 1 = the noise ceiling; unclipped (the per-split values are in MLflow).
    """
    ceil = board.ceiling[metric] if metric in board.ceiling else pd.Series(dtype=float)
    return _normalized_of(board.scores[predictor][metric], board.references[predictor][metric], ceil, metric)


def normalized_oracle(board: Board, metric: str) -> float:
    """The mean oracle's normalized score, against the reference baseline of the same splits."""
    if board.oracle.empty or metric not in board.oracle or metric not in board.ceiling:
        return float("nan")
    refs = [f[metric] for f in board.references.values() if metric in f]
    if not refs:
        return float("nan")
    ref = pd.concat(refs).groupby(level=0).first()
    return _normalized_of(board.oracle[metric], ref, board.ceiling[metric], metric)


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
    if not board.oracle.empty:
        cells = [_fmt_normalized(normalized_oracle(board, m)) for m in metrics]
        lines.append(f"| *{schema.ORACLE}* | " + " | ".join(cells) + " |")
    return lines


def _direction(higher: bool | None) -> str:
    return "↑" if higher else "↓" if higher is False else "→0"


def render(boards: list[Board], figure_links: dict[tuple[str, str, str], list[str]]) -> str:
    """The leaderboard markdown."""
    out = [
        "# pertbench leaderboard",
        "",
        "Generated by `bench leaderboard` from the MLflow store; do not edit by hand.",
        "Each cell: mean over splits (each split first averaged over its seeds) ± half-width of a 95% Student-t",
        "interval across splits; n = number of splits. **Bold** = best mean in the column (none when the top",
        "values tie); ≈ = its lead over the runner-up is within noise (paired 95% t-interval of the per-split",
        "differences contains 0).",
        "Directions: "
        + ", ".join(f"`{m.name}` {_direction(m.higher_is_better)}" for m in METRICS.values())
        + ".",
        "`NaN` = undefined (e.g. r of a constant prediction). (+k n/a) = k splits the predictor declared not applicable;",
        "best values are judged on the splits all predictors scored.",
        "Rows: one per predictor configuration, from its complete run (all splits; the most seeds, then the",
        "latest); a label in parentheses lists hyperparameters that differ from the registered defaults. A",
        "predictor with no complete run shows its latest quick look, labelled (partial) and never bold.",
        f"*{schema.ORACLE}* = the held-out control cells plus the TRUE mean shift of the held-out group, scored",
        "identically: how much of each metric the mean alone explains. Reference baseline: mean_shift (additive",
        "for combinations). Noise ceiling: the real perturbed cells scored against themselves (see README).",
        "",
    ]
    for board in sorted(boards, key=lambda b: (b.dataset, b.split_kind)):
        out += [f"## {board.dataset} · {board.split_kind}", ""]
        na = {p: f" (+{n} n/a)" for p, n in board.not_applicable.items() if n}  # splits it declined
        out += _metric_table(board.scores, na, mark_best=True, unranked=board.partial)
        out += _reference_rows(board, list(METRICS))
        out += [
            "",
            "Normalized (ratio of means over each predictor's splits: 0 = reference baseline, 1 = noise ceiling;",
            "shown clipped to [-1, 1], › marks a clipped value):",
            "",
        ]
        out += _normalized_table(board)
        out += ["", "Reproduce:", ""]
        out += [f"- {label}: `{cmd}`" for label, cmd in board.commands.items()]
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


def render_results(boards: list[Board]) -> str:
    """A compact results block for the README: headline metrics, the reference rows and fit time per split."""
    metrics = schema.headline_metrics()
    out = [
        "Generated by `bench leaderboard --readme README.md` from the same store as the leaderboard; mean over",
        "splits ± 95% t half-width; fit s = mean wall seconds to fit (or load from the model cache) one split;",
        f"*{schema.ORACLE}* = control cells + the true mean shift (what the mean alone explains).",
        "",
    ]
    for board in sorted(boards, key=lambda b: (b.dataset, b.split_kind)):
        out += [f"**{board.dataset} · {board.split_kind}**", ""]
        out += [
            "| predictor | n | " + " | ".join(metrics) + " | fit s |",
            "|---" * (len(metrics) + 3) + "|",
        ]
        for name, frame in board.scores.items():
            if frame.empty:
                continue
            secs = board.seconds.get(name, pd.DataFrame()).get(schema.FIT_SECONDS, pd.Series(dtype=float))
            fit = f"{secs.mean():.1f}" if secs.notna().any() else "NaN"
            out.append(f"| {name} | {len(frame)} | " + " | ".join(_cells(frame, metrics)) + f" | {fit} |")
        out += _reference_rows(board, metrics, trailing=" |")
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
            sources = [(parent_id, f"{schema.FIGURES_DIR}/{schema.SUMMARY_FIGURE}", "summary")]
            children = mlflow.search_runs(
                [client.get_run(parent_id).info.experiment_id],
                filter_string=schema.children_filter(parent_id, schema.STATUS_OK),
                order_by=["attributes.start_time ASC"],
                max_results=1,
                output_format="list",
            )
            if children:
                sources.append(
                    (children[0].info.run_id, f"{schema.FIGURES_DIR}/{schema.COMPOSITE_FIGURE}", "composite")
                )
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
