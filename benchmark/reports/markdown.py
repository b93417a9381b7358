"""Making text that users chose (predictor labels, dataset names, parameters, commands) inert in published
markdown: GitHub renders a leaderboard as HTML, so a name must never become a cell border, a tag or a link."""

from __future__ import annotations

import re

_ENTITIES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "|": "&#124;",
    "`": "&#96;",
    "[": "&#91;",
    "]": "&#93;",
    "*": "&#42;",
    "\\": "&#92;",
}
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def one_line(text: object) -> str:
    """`text` with every newline and control character turned into one space."""
    return _LINE_BREAKS.sub(" ", str(text)).strip()


def md_text(text: object) -> str:
    """User text for a markdown table cell, heading or list item: one line, HTML and markdown punctuation as
    entities, so it shows as typed and cannot end a cell, open a tag or form a link."""
    return "".join(_ENTITIES.get(ch, ch) for ch in one_line(text))


def code_span(text: object) -> str:
    """User text as one inline code span (shown verbatim, never interpreted), fenced by more backticks than any
    run inside it."""
    text = one_line(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"
