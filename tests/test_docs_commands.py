"""Every `mnistflow …` and `make …` command the docs show parses as written.

A doc check, not a run: each `mnistflow` line goes through the real argument parser (an unknown
command, option or a missing argument fails it), each `make` target must be a target of the
Makefile. The commands for comparing runs are also run for real (tests/test_docs_compare.py),
and the pipeline's, by the e2e tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mnistflow.cli import COMMANDS, build_parser
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.unit

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# A placeholder a reader replaces (RUN_ID, <run id>, TRIAL, …): stands in for a real value
PLACEHOLDER = re.compile(r"<[^>]+>|…|\.\.\.")
OPTIONAL = re.compile(r"\[[^\]]*\]")  # [--workers N] in a synopsis
ENV = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")


def commands(page: Path) -> list[tuple[str, bool]]:
    """`mnistflow`/`make` commands in the page: (command, whole) per item, ``whole`` for a
    line of a code block (parsed in full), not for inline code (which may name a command
    without its arguments: only the command itself is checked)."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        found += [(line, True) for line in joined.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    found += [(item, False) for item in inline]
    out = []
    for item, whole in found:
        for part in re.split(r"&&|;", item):
            part = part.split("|")[0]  # a pipe's first command (and not a diagram's box)
            part = ENV.sub("", part.strip().removeprefix("$ ").strip())
            part = part.removeprefix(".venv/bin/")
            if re.match(r"(mnistflow|make) [a-z]", part):
                out.append((part, whole))
    return out


def make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.M))


ALL = [(page.name, cmd, whole) for page in PAGES for cmd, whole in commands(page)]


def test_the_reader_finds_the_commands() -> None:
    """The check below is only as good as this reader: the pages show dozens of commands."""
    assert len(ALL) > 40
    assert any(cmd.startswith("mnistflow tune") and whole for _, cmd, whole in ALL)
    assert any(cmd.startswith("make repro") and whole for _, cmd, whole in ALL)


@pytest.mark.parametrize(("page", "command", "whole"), ALL, ids=[f"{p}:{c}" for p, c, _ in ALL])
def test_each_command_the_docs_show_exists_as_written(page: str, command: str, whole: bool) -> None:
    text = OPTIONAL.sub("", PLACEHOLDER.sub("X", command))
    words = shlex.split(text, comments=True) if whole else text.split()[:2]
    words = [w.strip(",.:") for w in words]
    if words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        targets = [w for w in targets if "*" not in w]  # `make bench*`: a family
        assert set(targets) <= make_targets(), f"{page}: `{command}`"
        return
    if not whole:
        assert words[1] in COMMANDS, f"{page}: `{command}`"
        return
    argv = words[1:]
    chosen = next((w for w in argv if not w.startswith("-")), None)
    try:
        build_parser(chosen).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")


def test_the_development_page_lists_every_make_target() -> None:
    documented = set(
        re.findall(r"`make ([a-z][a-z0-9-]*)", (REPO_ROOT / "docs/development.md").read_text())
    )
    helped = set(re.findall(r"^([a-z][a-z0-9-]*):.*##", (REPO_ROOT / "Makefile").read_text(), re.M))
    assert helped - {"help"} <= documented
