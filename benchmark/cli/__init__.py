"""The `bench` command line: one module per command, shared arguments in `args`, the entry point in `app`."""

from benchmark.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
