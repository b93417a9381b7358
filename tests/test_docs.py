"""The README and the docs site describe the software, not the project's history: no issue or commit references
and no progress talk outside generated blocks, and README stays a five-minute read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted(p for d in ("benchmark", "predictors", "pertbench") for p in (ROOT / d).rglob("*.py"))
GENERATED = re.compile(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", re.S)
FORBIDDEN = {
    "an issue reference": re.compile(r"\b[Ii]ssues? #?\d+|(?<![\w&])#\d{1,4}\b(?!;)"),
    "a commit reference": re.compile(r"\bcommit [0-9a-f]{7,40}\b"),
    "progress talk": re.compile(
        r"\btargets? (?:were |was |is |are )?met\b|\b(?:is |was |are )?not met\b|\bwas reported\b|"
        r"\bthe goal\b|SIGSTOP|\bas of (?:today|now)\b|:\s*met\b",
        re.I,
    ),
}


def _prose(path: Path) -> str:
    """A page without its generated blocks; a source file's comments and docstrings only."""
    text = path.read_text()
    if path.suffix == ".md":
        return GENERATED.sub("", text)
    comments = re.findall(r"#[^\n]*", text)
    docstrings = re.findall(r'"""(.*?)"""', text, re.S)
    return "\n".join(comments + docstrings)


@pytest.mark.parametrize("path", PAGES + SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_history_in_documents_comments_or_docstrings(path):
    text = _prose(path)
    found = [f"{what}: {m.group(0)!r}" for what, rule in FORBIDDEN.items() for m in rule.finditer(text)]
    assert not found, f"{path.relative_to(ROOT)}: " + "; ".join(found[:5])


def test_readme_is_a_five_minute_read_and_every_page_is_in_the_site():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p.name not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def test_the_rules_catch_what_they_are_for():
    samples = ["as Issue 13 reported", "see #42", "fixed in commit 0c7a7df", "targets ≤ 30 min: met",
               "the goal ... is not met", "paused (SIGSTOP)"]  # fmt: skip
    for sample in samples:
        assert any(rule.search(sample) for rule in FORBIDDEN.values()), sample
    for fine in [
        "`|` becomes &#124;",
        "see [MLflow](#mlflow)",
        "# a comment",
        "top-100 genes",
        "commit message",
    ]:
        assert not any(rule.search(fine) for rule in FORBIDDEN.values()), fine


FENCE = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)


def _documented_commands(program: str) -> list[tuple[str, str]]:
    """Every `program ...` command in the README's and the pages' shell blocks, continuation lines joined."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                words = line.split("#", 1)[0].split()
                while words and ("=" in words[0] or words[0].endswith("/bin/" + program)):
                    if words[0].endswith("/bin/" + program):
                        words[0] = program
                        break
                    words = words[1:]  # environment assignments before the command
                if words and words[0] == program:
                    found.append((page.name, " ".join(words[1:])))
    return found


def test_every_documented_bench_command_parses():
    """A renamed flag or subcommand fails here instead of in a reader's shell."""
    import shlex

    from benchmark.cli import build_parser
    from benchmark.core.errors import PertbenchError

    commands = _documented_commands("bench")
    assert len(commands) >= 10
    for page, command in commands:
        try:
            build_parser().parse_args(shlex.split(command))
        except (SystemExit, PertbenchError) as exc:
            pytest.fail(f"{page}: `bench {command}` does not parse: {exc}")


def test_every_documented_make_target_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for page, command in _documented_commands("make"):
        target = command.split()[0] if command.split() else ""
        assert target in targets, f"{page}: `make {command}` names no Makefile target"
