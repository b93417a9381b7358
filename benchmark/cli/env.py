"""`bench env build|list|remove`: the pinned environments foreign predictors run in (see benchmark.envs)."""

from __future__ import annotations

import argparse

NAME = "env"
USES_STORE = False


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench env` and its subcommands (benchmark.envs.command owns their flags)."""
    from benchmark.envs.command import add_parser as add_env_parser

    return add_env_parser(subparsers)


def cmd_env(args: argparse.Namespace) -> int:
    """Build, list or remove an environment."""
    from benchmark.envs.command import cmd_env as run_env

    return run_env(args)
