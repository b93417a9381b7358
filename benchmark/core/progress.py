"""One progress-bar style for the CLI and the predictors: a tqdm bar on stderr when it is an interactive terminal,
nothing in CI or when stderr is a file or pipe (logs stay clean); `write` prints a line without breaking a bar."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

BAR_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"
)
"""The shared look: `splits: 40%|█████▌  | 2/5 splits [00:03<00:05]`, `cvae: 12%|█▋ | 48/400 epochs [...]`."""
QUIET_VALUES = ("", "0", "false", "no")


def interactive() -> bool:
    """Whether to draw bars: stderr is a terminal and the `CI` variable is unset (or 0 / false)."""
    if os.environ.get("CI", "").strip().lower() not in QUIET_VALUES:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def bar(total: int, desc: str, unit: str) -> tqdm:
    """A bar of `total` steps in the shared style; disabled (updates are no-ops) unless `interactive()`."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        bar_format=BAR_FORMAT,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        disable=not interactive(),
    )


def write(message: str) -> None:
    """Print a line on stderr above any open bar (a plain print would tear the bar's line)."""
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()
