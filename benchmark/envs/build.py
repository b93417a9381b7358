"""Building an environment: a venv of the spec's Python (pyenv's, where installed), then
`pip install -c <constraints> -r requirements.txt`, output to a log file, the marker written last."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmark.core.errors import PertbenchError
from benchmark.envs.spec import MARKER, EnvSpec, env_root


def find_python(version: str) -> Path:
    """The newest pyenv Python of `version` (e.g. "3.11" -> ~/.pyenv/versions/3.11.7/bin/python), else
    python<version> on PATH; a one-line error when neither exists."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for path in root.glob(f"{version}.*/bin/python"):
        patch = path.parent.parent.name.removeprefix(f"{version}.")
        if patch.isdigit():
            found.append((int(patch), path))
    if found:
        return max(found)[1]
    on_path = shutil.which(f"python{version}")
    if on_path:
        return Path(on_path)
    raise PertbenchError(
        f"no Python {version} found (looked in {root} and for python{version} on PATH); "
        f"install it, e.g. pyenv install {version}"
    )


def _size(path: Path) -> int:
    """Bytes on disk under `path` (files only, links not followed)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def build_env(spec: EnvSpec, root: Path | None = None, force: bool = False) -> str:
    """Build `spec` into `root`/<name> and return the one summary line; the full pip output goes to
    `root`/<name>.build.log. The marker is written last, so an interrupted build reads as stale, never built."""
    root = root or env_root()
    target = spec.location(root)
    if spec.status(root) == "built" and not force:
        return f"environment {spec.name!r} is already built ({target}); --force rebuilds it"
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"{spec.name}.build.log"
    shutil.rmtree(target, ignore_errors=True)
    python = find_python(spec.python)
    started = time.perf_counter()
    steps = [
        [str(python), "-m", "venv", str(target)],
        [str(target / "bin" / "python"), "-m", "pip", "install", "--no-input", "-c", str(spec.constraints),
         "-r", str(spec.requirements)],
    ]  # fmt: skip
    with open(log_path, "w", encoding="utf-8") as log:
        for command in steps:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if code != 0:
                shutil.rmtree(target, ignore_errors=True)
                raise PertbenchError(
                    f"building environment {spec.name!r} failed at `{' '.join(command[-4:])}` "
                    f"(exit {code}); see {log_path}"
                )
    seconds = time.perf_counter() - started
    marker = {"spec_hash": spec.digest(), "python": str(python), "seconds": round(seconds, 1)}
    (target / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    size = _size(target)
    return f"built environment {spec.name!r} in {seconds:.0f} s ({size / 1e9:.2f} GB) at {target}; log: {log_path}"


def remove_env(spec: EnvSpec, root: Path | None = None) -> str:
    """Delete a built environment; the one summary line."""
    target = spec.location(root)
    if not target.exists():
        return f"environment {spec.name!r} is not built ({target}); nothing removed"
    shutil.rmtree(target)
    return f"removed environment {spec.name!r} ({target})"


def describe(spec: EnvSpec, root: Path | None = None) -> str:
    """One line of `bench env list`: name, state, Python, where, and what it is for."""
    return f"{spec.name:<20} {spec.status(root):<8} python {spec.python:<5} {spec.location(root)}  {spec.description}"


if __name__ == "__main__":  # pragma: no cover - `python -m benchmark.envs.build NAME`
    from benchmark.envs.spec import load_spec

    print(build_env(load_spec(sys.argv[1])))
