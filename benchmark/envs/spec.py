"""Environment specs committed in the repository (`envs/<name>/env.toml` + `requirements.txt`), where each is
built (`$PERTBENCH_ENV_DIR/<name>`, default ~/.cache/pertbench/envs/<name>) and whether that build is current."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from benchmark.core.errors import PertbenchError

REPO_ENVS = Path(__file__).resolve().parents[2] / "envs"
"""The committed specs: one folder per environment; `_worker` holds the worker-side runner."""

WORKER_DIR = REPO_ENVS / "_worker"
MARKER = "pertbench-env.json"
"""Written into a built environment last: the spec hash it was built from (built / stale / missing)."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def env_root() -> Path:
    """Where environments are built: $PERTBENCH_ENV_DIR, else ~/.cache/pertbench/envs."""
    given = os.environ.get("PERTBENCH_ENV_DIR")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "pertbench" / "envs"


@dataclass(frozen=True)
class EnvSpec:
    """One environment: the Python version, the exact pins and the worker's model module."""

    name: str
    folder: Path
    python: str
    module: str
    constraints: Path
    description: str = ""

    @property
    def requirements(self) -> Path:
        return self.folder / "requirements.txt"

    def digest(self) -> str:
        """Hash of what decides the installed packages (env.toml, requirements, constraints)."""
        h = hashlib.sha256()
        for path in (self.folder / "env.toml", self.requirements, self.constraints):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return h.hexdigest()

    def location(self, root: Path | None = None) -> Path:
        return (root or env_root()) / self.name

    def interpreter(self, root: Path | None = None) -> Path:
        return self.location(root) / "bin" / "python"

    def status(self, root: Path | None = None) -> str:
        """'built' (marker matches the spec), 'stale' (built from another spec, or broken) or 'missing'."""
        where = self.location(root)
        if not where.exists():
            return "missing"
        try:
            marker = json.loads((where / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "stale"
        if marker.get("spec_hash") != self.digest() or not self.interpreter(root).exists():
            return "stale"
        return "built"

    def require_built(self, root: Path | None = None) -> Path:
        """The environment's Python, or a one-line PertbenchError naming the build command."""
        state = self.status(root)
        if state != "built":
            why = "is not built" if state == "missing" else "was built from another version of its spec"
            raise PertbenchError(
                f"environment {self.name!r} {why} ({self.location(root)}); build it with: "
                f"bench env build {self.name}"
            )
        return self.interpreter(root)

    def python_paths(self) -> list[Path]:
        """What the worker puts on PYTHONPATH: the runner, then the env's folder (its model module)."""
        return [WORKER_DIR, self.folder]


def load_spec(name_or_folder: str | Path) -> EnvSpec:
    """The spec of a committed environment (by name) or of a folder holding an env.toml."""
    folder = Path(name_or_folder)
    if not (folder / "env.toml").is_file():
        name = str(name_or_folder)
        if not _NAME.match(name):
            raise PertbenchError(f"invalid environment name {name!r}; known environments: {_known()}")
        folder = REPO_ENVS / name
        if not (folder / "env.toml").is_file():
            raise PertbenchError(f"unknown environment {name!r}; known environments: {_known()}")
    try:
        data = _read_toml((folder / "env.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PertbenchError(f"cannot read {folder / 'env.toml'}: {' '.join(str(exc).split())}") from exc
    name = str(data.get("name", folder.name))
    python, module = data.get("python"), data.get("module")
    if not isinstance(python, str) or not re.fullmatch(r"3\.\d+", python):
        raise PertbenchError(f'{folder / "env.toml"}: python must be a version like "3.11", not {python!r}')
    if not isinstance(module, str) or not module:
        raise PertbenchError(f"{folder / 'env.toml'}: module (the worker's model module) is missing")
    constraints = folder / str(data.get("constraints", "requirements.txt"))
    for path in (folder / "requirements.txt", constraints):
        if not path.is_file():
            raise PertbenchError(f"environment {name!r} has no {path}")
    return EnvSpec(name, folder, python, module, constraints, str(data.get("description", "")))


def _read_toml(text: str) -> dict[str, object]:
    """env.toml's flat `key = "value"` table: tomllib where there is one (Python >= 3.11), else those lines."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = None
    if tomllib is None:
        data: dict[str, object] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip() if not line.strip().startswith("#") else ""
            if not line:
                continue
            match = re.fullmatch(r'([A-Za-z_][\w-]*)\s*=\s*"([^"]*)"', line)
            if match is None:
                raise ValueError(f'line {number}: only key = "string" lines are read on Python 3.10')
            data[match.group(1)] = match.group(2)
        return data
    return tomllib.loads(text)


def committed_specs() -> list[EnvSpec]:
    """Every environment committed under envs/ (folders with an env.toml)."""
    return [load_spec(p.parent) for p in sorted(REPO_ENVS.glob("*/env.toml"))]


def _known() -> str:
    return ", ".join(p.parent.name for p in sorted(REPO_ENVS.glob("*/env.toml"))) or "none"
