"""Faults a real machine produces, each with a real process: a full disk, a file-size limit,
two ``dvc repro`` at once. Every one ends with a clear line and leaves earlier outputs intact."""

from __future__ import annotations

import hashlib
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run, stage_env, tiny_repo_after_repro

pytestmark = pytest.mark.e2e

DISK_FULL_EXIT = 6  # util/errors.py


def tree_digest(root: Path, *parts: str) -> dict[str, str]:
    """SHA-256 of every file below the given parts of ``root``."""
    out = {}
    for part in parts:
        for path in sorted((root / part).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(root: Path, *parts: str) -> list[Path]:
    """Temporary files or folders an interrupted write could leave behind."""
    return [p for part in parts for p in (root / part).rglob("*") if ".tmp" in p.name]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs mounted in the test's folder (needs root, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> None:
    """Fill the filesystem at ``disk`` until about ``leave_bytes`` stay free."""
    free = shutil.disk_usage(disk).free
    with (disk / "filler").open("wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * (1 << 20)
        remaining = free - leave_bytes
        while remaining > 0:
            n = min(len(chunk), remaining)
            fh.write(chunk[:n])
            remaining -= n


def test_disk_full_while_unpack_writes_keeps_the_previous_outputs(small_disk: Path) -> None:
    repo, _ = tiny_repo_after_repro(small_disk)
    before = tree_digest(repo, "data/unpacked", "data/images")
    assert any(k.endswith(".png") for k in before)
    # room to rewrite the arrays and the table (one at a time, each beside its old copy),
    # not for a second PNG tree: tmpfs spends a 4 KiB page per small file
    room = (
        max(
            (repo / "data/unpacked/arrays.npz").stat().st_size,
            (repo / "data/unpacked/table.parquet").stat().st_size,
        )
        + 100_000
    )
    assert room < 400 * 4096, "the test's premise: the new PNG tree must not fit"
    fill(small_disk, room)

    proc = subprocess.run(
        [sys.executable, "stages/unpack.py"],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == DISK_FULL_EXIT, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "stage unpack" in last
    assert "No space left on device" in last
    assert "Traceback" not in proc.stderr
    (small_disk / "filler").unlink()
    assert tree_digest(repo, "data/unpacked", "data/images") == before
    assert leftovers(repo, "data") == []


def test_file_size_limit_while_encode_writes_keeps_the_previous_features(
    tmp_path: Path,
) -> None:
    repo, _ = tiny_repo_after_repro(tmp_path)
    before = tree_digest(repo, "data/encoded")
    biggest = max((repo / "data/encoded").iterdir(), key=lambda p: p.stat().st_size)
    limit = biggest.stat().st_size // 2  # `ulimit -f`: the features file cannot be written

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "stages/encode.py"],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == DISK_FULL_EXIT, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "stage encode" in last
    assert "File too large" in last
    assert "Traceback" not in proc.stderr
    assert tree_digest(repo, "data/encoded") == before
    assert leftovers(repo, "data") == []


def test_two_dvc_repro_at_once_one_waits_or_fails_clearly(tmp_path: Path) -> None:
    repo, env = tiny_repo_after_repro(tmp_path)
    before = tree_digest(repo, "models", "data/encoded")
    # both must retrain (--force) train and evaluate; same params, so the same model bytes
    procs = [
        subprocess.Popen(
            ["dvc", "repro", "--force", "--downstream", "train"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outputs
    for code, out in zip(codes, outputs, strict=True):
        if code != 0:  # DVC's repository lock: a clear message, nothing half-done
            assert "lock" in out.lower(), out[-3000:]
    status = run(["dvc", "status"], repo, env).stdout
    assert "up to date" in status, status
    # the model was rewritten whole (same params and seed: the same bytes), never corrupted
    assert tree_digest(repo, "models", "data/encoded") == before
    assert leftovers(repo, "models") == []
