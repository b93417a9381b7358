"""Reading a process's state and start time from Linux /proc, to tell a live process from a finished one or a
reused pid."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

_START_FIELD = 19
"""starttime's index among /proc/<pid>/stat's fields after the command name (field 22 of `man 5 proc`)."""


class ProcStat(NamedTuple):
    """The two fields of /proc/<pid>/stat the harness reads: state (e.g. R, S, Z) and start time in clock ticks."""

    state: str
    start: str | None


def available() -> bool:
    """Whether this host has a Linux /proc to read."""
    return Path("/proc/self/stat").exists()


def read_stat(pid: int) -> ProcStat | None:
    """Process `pid`'s state and start time, or None when /proc/<pid>/stat cannot be read (no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in parentheses may hold spaces and ')'
    return ProcStat(
        state=fields[0] if fields else "",
        start=fields[_START_FIELD] if len(fields) > _START_FIELD else None,
    )


def start_time(pid: int) -> str | None:
    """Process `pid`'s start time in clock ticks since boot, or None where it cannot be read."""
    stat = read_stat(pid)
    return stat.start if stat is not None else None
