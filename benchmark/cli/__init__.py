"""The `bench` command line: one module per command, shared arguments in `args`, the entry point in `app`."""

import sys

try:
    from benchmark.cli.app import build_parser, main
except KeyboardInterrupt:  # Ctrl-C while the console script still imports: one line, as once it runs
    print("bench: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

__all__ = ["build_parser", "main"]
