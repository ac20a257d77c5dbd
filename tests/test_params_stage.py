"""End to end: params.yaml is validated by the first stage, ``check_params``, before any
stage removes an output (DVC deletes a stage's outputs before running its command)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_repo, run, tiny_repo_after_repro, use_tiny_dataset, workspace_env

pytestmark = pytest.mark.e2e

OUTPUTS = ("models", "outputs/train", "outputs/evaluate", "data/encoded", "data/unpacked")


def contents(ws: Path) -> dict[str, bytes]:
    """Every file under the pipeline's output folders, with its bytes."""
    return {
        str(p.relative_to(ws)): p.read_bytes()
        for folder in OUTPUTS
        for p in sorted((ws / folder).rglob("*"))
        if p.is_file()
    }


def edit_params(ws: Path, section: str, **values: object) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params[section].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran(stdout: str) -> list[str]:
    """The stages a ``dvc repro`` ran, in order."""
    return [line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")]


def assert_typo_named(proc) -> None:
    """Exit != 0 and one line naming the key, from the check stage."""
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    named = [line for line in output.splitlines() if "'train.alpah'" in line]
    assert named, output
    assert "stage check_params: params.yaml: unknown key 'train.alpah' (known keys:" in named[0]
    assert ran(proc.stdout) == ["check_params"]


def test_param_change_reruns_only_its_readers_and_a_typo_removes_nothing(tmp_path: Path) -> None:
    repo, env = tiny_repo_after_repro(tmp_path)

    # The check's output is constant: a train param reruns the check, train and evaluate only.
    edit_params(repo, "train", alpha=0.001)
    status = run(["dvc", "status"], repo, env).stdout
    assert not {"download:", "unpack:", "encode:"} & set(status.split())
    assert ran(run(["dvc", "repro"], repo, env).stdout) == ["check_params", "train", "evaluate"]

    # A typo fails in check_params: the warm outputs are all still there, byte for byte.
    before = contents(repo)
    assert {"models/model.pkl", "outputs/train/run.json", "data/encoded/train.npz"} <= set(before)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["alpah"] = params["train"].pop("alpha")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert_typo_named(run(["dvc", "repro"], repo, env, check=False))
    assert contents(repo) == before


def test_typo_in_a_cold_copy_fails_before_download(
    tmp_path: Path, tiny_mirror: tuple[Path, dict]
) -> None:
    mirror, files = tiny_mirror
    ws = copy_repo(tmp_path / "ws", use_tiny_dataset(files, train={"alpah": 0.1}))
    assert_typo_named(run(["dvc", "repro"], ws, workspace_env(mirror), check=False))
    assert not (ws / "data/raw").exists()
