"""Every comparison command docs/experiments.md shows, run as written against a real DVC repo
holding two experiments named as in the docs (`narrow`, `wide`; tiny synthetic data).

The oracle for each command is the docs themselves: where the docs show the command's
output, the real output's header line must match it word for word, so a renamed metric or a
stale sample fails here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run, tiny_repo_after_repro

pytestmark = pytest.mark.e2e

DOC = REPO_ROOT / "docs" / "experiments.md"
SECTIONS = ("## Where to look at the results", "## Compare two experiments")
EXPERIMENTS = {  # name -> the -S settings the docs' sample experiments used
    "narrow": ["train.max_iter=3"],
    "wide": ["train.max_iter=3", "train.hidden_layer_sizes=[32]"],
}


@dataclass
class Shown:
    """One command of the docs and the sample output printed under it (may be empty)."""

    command: str
    sample: list[str]


def section_text(doc: str, heading: str) -> str:
    start = doc.index(heading)
    end = doc.find("\n## ", start + len(heading))
    return doc[start : end if end >= 0 else len(doc)]


def join_continuations(lines: list[str]) -> list[str]:
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + line.strip()
        else:
            joined.append(line.strip())
    return joined


def shown_commands(doc: str) -> list[Shown]:
    """The `dvc ...` commands of the comparison sections: in fenced blocks (a `$ ` prompt
    line with its output below, or a bash block whose output is the next plain block) and
    in inline code spans."""
    found: list[Shown] = []
    for heading in SECTIONS:
        text = section_text(doc, heading)
        blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
        for i, (lang, body) in enumerate(blocks):
            lines = join_continuations(body.rstrip("\n").splitlines())
            if any(line.startswith("$ ") for line in lines):
                for line in lines:
                    if line.startswith("$ "):
                        found.append(Shown(line[2:], []))
                    elif line and found:
                        found[-1].sample.append(line)
            elif lang == "bash":
                commands = [Shown(line, []) for line in lines if line.startswith("dvc ")]
                nxt = blocks[i + 1] if i + 1 < len(blocks) else None
                if commands and nxt is not None and nxt[0] == "":
                    commands[-1].sample = [x for x in nxt[1].splitlines() if x.strip()]
                found.extend(commands)
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        found.extend(Shown(span, []) for span in re.findall(r"`(dvc [^`]+)`", prose))
    # the commands that made the sample experiments are not comparisons (the fixture runs them)
    return [s for s in found if not s.command.startswith("dvc exp run")]


def header(lines: list[str]) -> list[str]:
    """The words of a table's header: its first line with a letter in it."""
    return next(line.split() for line in lines if re.search(r"[A-Za-z]", line))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path, env = tiny_repo_after_repro(tmp_path_factory.mktemp("docs-compare"))
    for name, settings in EXPERIMENTS.items():
        sets = [arg for s in settings for arg in ("-S", s)]
        run(["dvc", "exp", "run", "-n", name, *sets], path, env)
    return path, env


def test_the_docs_show_the_comparison_commands() -> None:
    commands = [s.command.split(" #")[0].strip() for s in shown_commands(DOC.read_text())]
    for expected in ("dvc exp show", "dvc metrics show", "dvc params diff narrow wide"):
        assert any(c.startswith(expected) for c in commands), (expected, commands)
    assert any("--sort-by" in c for c in commands)


@pytest.mark.parametrize(
    "shown", shown_commands(DOC.read_text()), ids=lambda s: s.command.split(" #")[0][:60]
)
def test_a_docs_comparison_command_runs_as_written(
    shown: Shown, repo: tuple[Path, dict[str, str]]
) -> None:
    path, env = repo
    args = shlex.split(shown.command, comments=True)
    env = {**env, "COLUMNS": "80"}  # an 80-column pipe (stdout is not a terminal)
    proc = subprocess.run(
        args, cwd=path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{shown.command}\n{proc.stdout}\n{proc.stderr}"
    assert "ERROR" not in proc.stderr, proc.stderr
    out = proc.stdout.splitlines()
    assert out, shown.command
    if args[:3] == ["dvc", "exp", "show"] and ({"--keep", "--only-changed"} & set(args)):
        assert {"Experiment", "test_accuracy"} <= set(header(out)), proc.stdout  # not "…"
        assert "narrow" in proc.stdout
        assert "wide" in proc.stdout
    if args[:3] == ["dvc", "metrics", "show"]:
        assert len(header(out)) <= 10, header(out)
        assert "test_accuracy" in header(out)
    if args[1:3] == ["params", "diff"] or args[1:3] == ["metrics", "diff"]:
        assert {"narrow", "wide"} <= set(header(out)), proc.stdout
    if shown.sample and not shown.sample[0].startswith("file:"):
        assert header(out) == header(shown.sample), "the docs' sample is stale"
