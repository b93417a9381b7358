"""The leaderboard's read-back: the chosen parent run of every predictor configuration and its split runs, read
through `benchmark.tracking.runs` into one `Board` of per-split frames per (dataset, data checksum, split kind).

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmark.scoring.metrics import METRICS
from benchmark.tracking import runs, schema
from benchmark.tracking import store as tracking
from benchmark.tracking.runs import RunRecord


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

    run: RunRecord
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
    def read(cls, run: RunRecord) -> _Parent:
        tags, params = run.tags, run.params
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
            start_time=int(run.start_time or 0),
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
    experiments = runs.experiment_ids(schema.EXPERIMENT_PREFIX + "/")
    parents = runs.search(
        experiments, filter_string=schema.parent_filter(), order_by=["attributes.start_time DESC"]
    )
    chosen: dict[tuple, _Parent] = {}  # (dataset, kind, checksum, config) -> preferred run
    for run in parents:
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
            label += f" [{p.run.run_id[:8]}]"
        used.add(label)
        rows.append((label + (" (partial)" if p.partial else ""), p))
    # complete rows first, so their ceiling and oracle values win over a partial run's for the same split
    return sorted(rows, key=lambda r: r[1].partial)


def _add_parent(board: Board, label: str, parent: RunRecord, partial: bool = False) -> None:
    """Add one parent run's split runs to the board as the row `label` (scores, ceiling, references, oracle)."""
    children = runs.search([parent.experiment_id], filter_string=schema.children_filter(parent.run_id))
    rows, ceilings, references, oracles, seconds, na_splits = {}, {}, {}, {}, {}, set()
    for child in children:
        tags, metrics = child.tags, child.metrics
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
    board.parents[label] = parent.run_id
    if partial:
        board.partial.add(label)
    board.commands[label] = reproduce_command(parent, board)


def _first_per_split(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of `existing`, plus those of `new` for splits it lacks (the first run read per split wins)."""
    frame = pd.concat([existing, new]) if not existing.empty else new
    return frame[~frame.index.duplicated(keep="first")]


def reproduce_command(parent: RunRecord, board: Board) -> str:
    """The `bench run` (or, for a scored predictions file, `bench score`) command that reproduces a parent run, as
    recorded; reconstructed for runs logged before the arguments were recorded."""
    params = parent.params
    if schema.PARAM_CLI in params:
        command = "score" if parent.tags.get(schema.TAG_SOURCE) == schema.SOURCE_SCORE else "run"
        env = params.get(schema.PARAM_CLI_ENV, "")
        return f"{env + ' ' if env else ''}bench {command} {runs.param_value(parent, schema.PARAM_CLI)}"
    seeds = params.get(schema.PARAM_SEEDS, "0")
    seed_flag = f"--seeds {seeds}" if "," in seeds else f"--seed {seeds}"
    predictor = parent.tags[schema.TAG_PREDICTOR]
    return (
        f"bench run --predictor {predictor} --dataset {parent.tags[schema.TAG_DATASET]} "
        f"--split {board.split_kind} {seed_flag}"
    )


def per_split(rows: dict[tuple[str, int], dict[str, float]]) -> pd.DataFrame:
    """One row per split: the mean over its seeds (NaN-aware), so seeds never count as independent splits."""
    if not rows:
        return pd.DataFrame(columns=list(METRICS))
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["split", "seed"])
    return frame.groupby(level="split").mean()
