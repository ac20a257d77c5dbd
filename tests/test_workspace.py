"""Finding the project root and copying the working tree."""

from __future__ import annotations

import pytest

from mnistflow.util.workspace import copy_working_tree, find_root, git
from tests.helpers import REPO_ROOT


@pytest.mark.unit
def test_find_root_walks_up_to_dvc(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_root(deep) == tmp_path


@pytest.mark.unit
def test_dvc_root_env_wins(tmp_path, monkeypatch) -> None:
    # DVC sets DVC_ROOT to the original repo inside its temporary experiment copies.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert find_root(REPO_ROOT) == tmp_path


@pytest.mark.unit
def test_no_repo_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="no DVC repository"):
        find_root(tmp_path)


@pytest.mark.e2e
def test_copy_is_a_committed_repo_without_run_outputs(tmp_path) -> None:
    dest = copy_working_tree(REPO_ROOT, tmp_path / "ws")
    assert (dest / "dvc.yaml").read_text() == (REPO_ROOT / "dvc.yaml").read_text()
    assert (dest / ".dvc" / "config").exists()
    assert not (dest / ".venv").exists()
    assert not (dest / "outputs").exists()
    assert git(["status", "--porcelain"], dest) == ""
