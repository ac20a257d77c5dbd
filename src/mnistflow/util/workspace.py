"""Repository glue: find the workspace root and make throw-away copies of it (git + DVC)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from mnistflow.util.git import git

logger = logging.getLogger(__name__)

# Outputs that belong to one run of the pipeline; a fresh copy must regenerate them.
_RUN_OUTPUTS = ("outputs/", "reports/latest/")


def find_root(start: str | Path | None = None) -> Path:
    """The project root: ``$DVC_ROOT`` when DVC runs us, else the nearest ancestor with ``.dvc/``.

    DVC sets ``DVC_ROOT`` to the *original* repository even inside the temporary copies it
    makes for queued experiments, which is what lets every run share one MLflow store.

    Raises:
        FileNotFoundError: no ``.dvc`` folder above ``start``.
    """
    env_root = os.environ.get("DVC_ROOT")
    if env_root:
        return Path(env_root).resolve()
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    raise FileNotFoundError(f"no DVC repository (.dvc/) at or above {here}")


def copy_working_tree(src: str | Path, dest: str | Path) -> Path:
    """Copy a repository's tracked and un-ignored files (as they are now) into a new git repo.

    Run outputs (``outputs/``, ``reports/latest/``) are left out so the copy starts cold.

    Args:
        src: the repository to copy.
        dest: the new folder.

    Returns:
        ``dest``, a git repository with one commit.
    """
    src, dest = Path(src), Path(dest)
    listed = git(["ls-files", "-co", "--exclude-standard", "-z"], src).split("\0")
    for rel in filter(None, listed):
        source = src / rel
        if source.is_file() and not rel.startswith(_RUN_OUTPUTS):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    init_repo(dest, "copy of the working tree")
    return dest


def init_repo(path: str | Path, message: str) -> None:
    """Make ``path`` a git repository whose single commit holds all its files."""
    git(["init", "-q", "-b", "main"], path)
    git(["add", "-A"], path)
    git(["commit", "-q", "-m", message], path)
