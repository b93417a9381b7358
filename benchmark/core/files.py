"""Writing files safely: atomic replacement, marked-block replacement, file names made from user text, and the
checks that a path names a file to write."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from benchmark.core.errors import PertbenchError


def safe_name(text: str) -> str:
    """`text` as a file-name component: letters, digits, '-', '_' and '.' kept, anything else '_'."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def file_to_write(path: Path | str, what: str, kind: str = "file", example: str = "") -> Path:
    """`path` as a Path, after checking it is not a directory: a one-line error naming `what` (e.g. '--output')
    and the `kind` of file expected, with `example` as a file name inside it."""
    path = Path(path)
    if path.is_dir():
        hint = f", e.g. {path / example}" if example else ""
        raise PertbenchError(f"{what} {path} is a directory; give the {kind} to write{hint}")
    return path


def atomic_write(path: Path | str, data: str | bytes, mode: int = 0o644) -> None:
    """Write a file through a uniquely named temp file in the same folder and os.replace: readers and concurrent
    writers only ever see a whole old or a whole new file, and a failed write leaves no temp file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_block(path: Path | str, start: str, end: str, body: str) -> Path:
    """Replace the text between the markers start and end in a file, atomically; the markers must exist."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PertbenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if start not in text or end not in text:
        raise PertbenchError(f"{path} has no {start} ... {end} block to update")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write(path, f"{head}{start}\n{body}\n{end}{tail}")
    return path


def shown_path(path: Path | str) -> str:
    """A path as a command line should show it: relative to the working directory when the file lies under it (so a
    Reproduce line runs from the project folder on any machine), else absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def plugin_pythonpath(predictor: str) -> str:
    """The PYTHONPATH a `module:Class` predictor needs when its module belongs to no installed distribution but is
    found through the working directory or PYTHONPATH (e.g. "."), shown as `shown_path` shows it; "" otherwise."""
    import importlib.metadata
    import importlib.util

    if ":" not in predictor:
        return ""
    top = predictor.split(":", 1)[0].split(".")[0]
    if top in importlib.metadata.packages_distributions():  # installed (editable installs too)
        return ""
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return ""
    origin = Path(spec.origin).resolve()
    root = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    return shown_path(root) or "."
