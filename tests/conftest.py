"""Fixtures shared by every test module, and the test tiers.

Every test carries exactly one tier marker (``unit``, ``e2e``, ``slow`` or ``browser``;
pyproject.toml says what each means), checked at collection. A ``unit`` test may not start
a subprocess: the guard below fails it, so ``make test-fast`` (unit only) stays fast and
honest.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# First of the project: importing it pins the floating-point environment (mnistflow.numerics)
# before tests.helpers loads numpy, so numbers computed here match the stages' own.
import mnistflow  # noqa: F401
from mnistflow.config import DatasetSpec, DownloadConfig, config, load_params
from tests.helpers import (
    REPO_ROOT,
    data_cache,
    fetch_dataset,
    real_data_sources,
    write_idx_dataset,
)

TIERS = ("unit", "e2e", "slow", "browser")


def tier(item: pytest.Item) -> str | None:
    """The test's tier marker, or None when it has none or several (refused at collection)."""
    tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
    return tiers.pop() if len(tiers) == 1 else None


def pytest_configure(config: pytest.Config) -> None:
    """Fill platform's cache now: importing mlflow calls ``platform.processor()``, which runs
    ``uname -p`` once per process, and would fail whichever unit test first imports mlflow."""
    platform.uname().processor  # noqa: B018  (the attribute access runs and caches it)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without exactly one tier marker."""
    wrong = [item.nodeid for item in items if tier(item) is None]
    if wrong:
        raise pytest.UsageError(
            f"each test needs exactly one tier marker of {', '.join(TIERS)}; not so:\n  "
            + "\n  ".join(wrong)
        )


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch) -> None:
    """A unit test that starts a subprocess fails, naming the command."""
    if tier(request.node) != "unit":
        return

    def refuse(self: subprocess.Popen, args: object, *_a: object, **_k: object) -> None:
        raise AssertionError(f"a unit test started a subprocess ({args!r}): mark it e2e")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """A local mirror folder holding a tiny synthetic dataset, and its file specs."""
    folder = tmp_path / "tiny-mirror"
    return folder, write_idx_dataset(folder)


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    """A folder holding the four real MNIST files, verified: the test data cache
    (:func:`tests.helpers.data_cache`), filled on first use the way the download stage
    fetches, from the local mirror beside the repository (``../shared/mnist``) or the
    mirrors of params.yaml. Fails (one line naming every source) when no source has them."""
    params = load_params(REPO_ROOT / "params.yaml")
    spec = config(params, "datasets.mnist", DatasetSpec)
    cfg = config(params, "download", DownloadConfig)
    return fetch_dataset(spec, real_data_sources(params, dict(os.environ)), cfg, data_cache())


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
