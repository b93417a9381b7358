"""The `bench` command: the parser built from each command module's own arguments, and the entry point that
turns every failure into one line and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

from benchmark.cli import env, leaderboard, run, score, sweep, synthetic, tune
from benchmark.cli import list as list_
from benchmark.cli.args import _Parser
from benchmark.core.allocator import keep_freed_memory
from benchmark.core.errors import PertbenchError

COMMANDS: tuple[ModuleType, ...] = (run, tune, score, leaderboard, sweep, list_, env, synthetic)
"""The command modules in `bench --help` order; each has NAME, add_parser(subparsers) and cmd_<name>(args)."""


def handler(command: ModuleType) -> Callable[[argparse.Namespace], int]:
    """A command module's cmd_<name> function (make-synthetic: cmd_make_synthetic)."""
    return getattr(command, "cmd_" + command.NAME.replace("-", "_"))


def build_parser() -> argparse.ArgumentParser:
    """`bench` with --debug and one subcommand per command module."""
    parser = _Parser(prog="bench", description="Benchmark single-cell perturbation-response predictors.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


_TRACEBACK_HINT = "(rerun with --debug for the traceback)"


def _fail(message: str) -> int:
    """Print `bench: error: message` on stderr; the exit code of a failure that is not bad input."""
    print(f"bench: error: {message}", file=sys.stderr)
    return 1


def _report(exc: BaseException, args: argparse.Namespace | None) -> int:
    """Print one line for an exception that is not a PertbenchError; return the exit code."""
    try:
        from benchmark.tracking import store as tracking
    except Exception:  # noqa: BLE001 - e.g. a broken MLflow install: still one line
        text = " ".join(str(exc).split())[:300]
        return _fail(f"{type(exc).__name__}: {text} {_TRACEBACK_HINT}")
    if isinstance(exc, tracking.Terminated):
        print("bench: terminated by SIGTERM; the run in progress was marked KILLED", file=sys.stderr)
        return 143
    uri = tracking.tracking_uri(getattr(args, "tracking_uri", None))
    if tracking.server_unreachable(exc):
        return _fail(
            f"the MLflow tracking server {uri} did not answer ({tracking.one_line(exc, 200)}); "
            "check that it runs, or raise MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES"
        )
    written = tracking.store_write_error(exc)
    if written is not None:
        return _fail(
            f"the MLflow store {uri} refused a write ({written}); the write was rolled back; "
            "free disk space or make the store writable, then rerun"
        )
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror}{where} {_TRACEBACK_HINT}")
    return _fail(f"{type(exc).__name__}: {tracking.one_line(exc)} {_TRACEBACK_HINT}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bench` console script; errors print one line unless --debug.

    Exit codes: 0 done, 2 bad input (PertbenchError), 1 any other failure (store, disk, server, a bug),
    130 Ctrl-C, 143 SIGTERM (the run is marked KILLED).
    """
    from benchmark.core.redact import RedactingStream

    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)  # no password printed
    try:
        return _main(argv)
    finally:
        for wrapped in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                wrapped.flush()
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> int:
    """`main` inside the redacting streams."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore", category=FutureWarning)
    keep_freed_memory()  # large per-target arrays are reused instead of re-faulted (benchmark.core.allocator)
    args = None
    try:
        args = build_parser().parse_args(argv)
        command = next(c for c in COMMANDS if c.NAME == args.command)
        if not getattr(command, "USES_STORE", True):  # no MLflow store involved
            return handler(command)(args)
        from benchmark.tracking import store as tracking

        if args.debug:
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.ERROR)
        with tracking.sigterm_raises():
            return handler(command)(args)
    except PertbenchError as exc:
        if args is not None and args.debug:
            raise
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        if args is not None and args.debug and type(exc).__name__ != "Terminated":
            raise
        return _report(exc, args)
