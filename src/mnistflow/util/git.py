"""The one way this project runs git: ``git(args, cwd)``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mnistflow.util.errors import UserError

GIT_TIMEOUT_S = 120  # a local git command takes milliseconds; minutes means a hung lock

# Commits made by the project itself (throw-away copies in tests and benchmarks) need an
# identity even on a machine where none is configured.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "mnistflow",
    "GIT_AUTHOR_EMAIL": "mnistflow@localhost",
    "GIT_COMMITTER_NAME": "mnistflow",
    "GIT_COMMITTER_EMAIL": "mnistflow@localhost",
}


class GitError(UserError):
    """git failed; the message names the command, the folder and git's own words."""

    exit_code = 5


def git(args: list[str], cwd: str | Path, check: bool = True) -> str:
    """Run git in ``cwd`` and return its stripped stdout.

    Args:
        args: git's arguments, e.g. ``["rev-parse", "HEAD"]``.
        cwd: the working directory.
        check: raise on a non-zero exit; otherwise return what git printed (often "").

    Raises:
        GitError: git is missing, hangs, or fails while ``check`` is true.
    """
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=GIT_TIMEOUT_S,
            env={**_IDENTITY, **os.environ} if "commit" in args else None,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git {' '.join(args)} in {cwd}: {exc}") from exc
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.rstrip()  # not lstrip: `status --porcelain` lines start with a space


def git_or_none(args: list[str], cwd: str | Path) -> str | None:
    """Like :func:`git` but None when git, the repository or the object is unavailable."""
    try:
        return git(args, cwd)
    except GitError:
        return None
