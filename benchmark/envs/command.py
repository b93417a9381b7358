"""`bench env build NAME`, `bench env list`, `bench env remove NAME`: the environments of foreign predictors."""

from __future__ import annotations

import argparse

from benchmark.envs.build import build_env, describe, remove_env
from benchmark.envs.spec import committed_specs, env_root, load_spec


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `env` and its three actions on the CLI's subparsers."""
    env = subparsers.add_parser("env", help="build, list or remove the environments of foreign predictors")
    actions = env.add_subparsers(dest="env_action", required=True, parser_class=type(env))
    build = actions.add_parser("build", help="build an environment (a venv of its Python + its exact pins)")
    build.add_argument("name", help="an environment under envs/ (see `bench env list`)")
    build.add_argument("--force", action="store_true", help="rebuild even when it is built and current")
    actions.add_parser("list", help="each environment: built, stale (spec changed) or missing")
    remove = actions.add_parser("remove", help="delete a built environment")
    remove.add_argument("name")
    env.set_defaults(env_handler=cmd_env)
    return env


def cmd_env(args: argparse.Namespace) -> int:
    """Run one `bench env` action; errors are PertbenchErrors (one line, exit 2)."""
    if args.env_action == "list":
        specs = committed_specs()
        print(f"environments (built under {env_root()}):")
        for spec in specs:
            print(f"  {describe(spec)}")
        if not specs:
            print("  none")
        return 0
    spec = load_spec(args.name)
    if args.env_action == "build":
        print(f"building environment {spec.name!r} (python {spec.python}); this can take minutes", flush=True)
        print(build_env(spec, force=args.force))
    else:
        print(remove_env(spec))
    return 0
