"""The one way this project runs the dvc command line: ``dvc(args, cwd)``.

The command runs as ``python -m dvc`` with this interpreter, so it is the locked DVC of this
environment whatever is on PATH. (Read-only queries use DVC's Python API where one exists.)
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)


class DvcError(UserError):
    """A dvc command failed; the message names it and the folder."""

    exit_code = 5


def dvc_command(args: list[str]) -> list[str]:
    """The argv that runs ``dvc <args>`` with this environment's DVC."""
    return [sys.executable, "-m", "dvc", *args]


def dvc(
    args: list[str],
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``dvc <args>`` in ``cwd``.

    Args:
        args: dvc's arguments.
        cwd: the repository.
        env: the whole environment (default: ours).
        capture: return stdout/stderr as text instead of letting stdout go to our stderr
            (our stdout is kept for the command's own result).
        check: raise DvcError on a non-zero exit.
    """
    log.info("$ dvc %s  (in %s)", " ".join(args), cwd)
    proc = subprocess.run(
        dvc_command(args),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        detail = f": {proc.stderr.strip()}" if capture and proc.stderr else ""
        raise DvcError(f"`dvc {' '.join(args)}` failed in {cwd} (exit {proc.returncode}){detail}")
    return proc
