"""Secrets never printed: credentials inside URIs (user:password@, tokens in the query) are masked in any text
bench writes to the terminal."""

from __future__ import annotations

import io
import re

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^\s/@'\"<>]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|token|access_token|api_key|apikey|secret|key)=)[^&\s'\"]+",
    re.IGNORECASE,
)
MASK = "***"


def redact(text: str) -> str:
    """`text` with every URI's password (or bare token user) and secret query values replaced by ***."""

    def userinfo(match: re.Match) -> str:
        user, sep, _ = match["info"].partition(":")
        return f"{match['scheme']}{user}:{MASK}@" if sep else f"{match['scheme']}{MASK}@"

    return _QUERY_SECRET.sub(lambda m: m["key"] + MASK, _USERINFO.sub(userinfo, text))


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what it writes line by line before passing it on (stdout/stderr of `bench`),
    so MLflow's own messages are covered too."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        data = self._pending + text
        head, sep, tail = data.rpartition("\n")
        if sep:
            self._stream.write(redact(head + sep))
        self._pending = tail
        if len(self._pending) > 4096 or "\r" in self._pending:  # progress bars redraw without newlines
            self._stream.write(redact(self._pending))
            self._pending = ""
        return len(text)

    def flush(self) -> None:
        try:
            if self._pending:
                self._stream.write(redact(self._pending))
                self._pending = ""
            self._stream.flush()
        except (OSError, ValueError):  # the stream underneath was closed (a logging handler outlived it)
            pass

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")
