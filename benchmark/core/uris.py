"""Telling kinds of URI apart: the harness treats an http(s) tracking store as a server to reach, anything
else as a local store."""

from __future__ import annotations

import urllib.parse


def is_http(uri: str) -> bool:
    """Whether `uri` names an http or https server (any case of the scheme)."""
    return urllib.parse.urlparse(uri).scheme.lower() in ("http", "https")
