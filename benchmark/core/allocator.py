"""Keeps freed large arrays in the process's heap (glibc's malloc) instead of handing them back to the OS.

Scoring a target allocates a few dozen dense cells x genes arrays of 10-130 MB and frees them a moment later.
glibc serves every block above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it when freed, so
the next target faults and zeroes the same pages again: on the 310k x 8,000 screen that was 2 million page
faults and a quarter of the CPU time per target. Raising the threshold (and the trim threshold above it) lets
those blocks be reused: 120 targets of that screen took 156 s instead of 183 s, with peak memory 3.7 GB instead
of 3.1 GB (2-core machine, 2026-12-06). The scores do not depend on it.

Only `bench` calls `keep_freed_memory`, once at start; PERTBENCH_MALLOC=system leaves glibc's defaults. On a C
library other than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 1 << 30
"""Blocks up to this size (1 GiB) come from the heap and are reused after being freed."""

TOP_PAD = 1 << 26
"""Extra heap (64 MiB) requested whenever the heap grows, so it grows in few steps."""

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters, glibc's malloc.h
ENV = "PERTBENCH_MALLOC"


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether it applied (glibc only, not opted out)."""
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    return all([bool(mallopt(param, value)) for param, value in settings])
