"""Test helpers, imported one way: ``from tests.helpers import ...``.

Tiny synthetic IDX datasets, temporary copies of the repository, and running commands there.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnistflow.config import DatasetSpec, DownloadConfig, config
from mnistflow.data.download import DownloadError, download_dataset, env_mirror, mirror_order
from mnistflow.data.encode import Encoding
from mnistflow.data.idx import encode_idx
from mnistflow.util import fileio
from mnistflow.util.git import git
from mnistflow.util.workspace import copy_working_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "mnist"
FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The original baseline's settings, written out here and in no other test (never read from
# params.yaml): tests/test_config.py checks the shipped params.yaml against them once; other
# tests use them where they expect the baseline's values.
BASELINE_TRAIN = {
    "hidden_layer_sizes": [100, 50, 25],
    "activation": "relu",
    "solver": "adam",
    "alpha": 0.0001,
    "learning_rate": "adaptive",
    "learning_rate_init": 0.001,
    "max_iter": 20,
    "random_state": 42,
    "early_stopping": False,
    "online_augment": False,
}
BASELINE_ENCODE = {"scaling": "divide255", "labels": "onehot", "deskew": False}
BASELINE_AUGMENT_COPIES = 0  # encode.augment.copies: no augmented copies


def data_cache() -> Path:
    """Where the real-data tests keep the MNIST files they fetched:
    ``$XDG_CACHE_HOME/mnistflow/mnist`` (default ``~/.cache/mnistflow/mnist``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnistflow" / "mnist"


def real_data_sources(params: dict, environ: dict[str, str]) -> list[str]:
    """The sources of the real MNIST files, in the download stage's order (MNISTFLOW_MIRROR,
    download.mirror, the dataset's mirrors of params.yaml), with the local mirror beside the
    repository (:data:`SHARED_MNIST`) before the public ones."""
    spec = config(params, "datasets.mnist", DatasetSpec)
    mirror = config(params, "download", DownloadConfig).mirror
    local = [str(SHARED_MNIST), *spec.mirrors]
    return mirror_order(env_mirror(environ), mirror, local, REPO_ROOT)


def fetch_dataset(spec: DatasetSpec, sources: list[str], cfg: DownloadConfig, cache: Path) -> Path:
    """``cache`` holding the dataset's four verified files, fetched by the download stage's
    own code (:func:`mnistflow.data.download.download_dataset`) from the first of
    ``sources`` that has each; valid files already in ``cache`` are kept.

    Fails the calling test with one line naming every source tried when no source has a file.
    """
    cache.mkdir(parents=True, exist_ok=True)
    only = spec.model_copy(update={"mirrors": sources})
    # one test session at a time fills the cache (the download removes stray temporaries)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            download_dataset(only, cache, cfg.model_copy(update={"mirror": ""}), None)
        except DownloadError as exc:
            message = " ".join(str(exc).split())
            pytest.fail(f"no source of the real data: {message}", pytrace=False)
    return cache


def synthetic_digits(n: int, seed: int, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: a fixed random template per class plus noise (uint8)."""
    templates = np.random.default_rng(1234).integers(0, 256, size=(n_classes, 28, 28))
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % n_classes).astype(np.uint8)
    rng.shuffle(labels)
    noise = rng.integers(-40, 41, size=(n, 28, 28))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_idx_dataset(
    folder: Path,
    n_train: int = 300,
    n_test: int = 100,
    digits: Callable[[int, int], tuple[np.ndarray, np.ndarray]] = synthetic_digits,
) -> dict[str, dict]:
    """Write the four gzipped IDX files of a synthetic dataset into ``folder``.

    ``digits(n, seed)`` makes the images and labels (default: :func:`synthetic_digits`).

    Returns:
        ``{role: {"name": file name, "sha256": decompressed SHA-256}}``, the shape of
        ``datasets.<name>.files`` in params.yaml.
    """
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = digits(n_train, 1)
    x_test, y_test = digits(n_test, 2)
    arrays = {
        "train_images": x_train,
        "train_labels": y_train,
        "test_images": x_test,
        "test_labels": y_test,
    }
    files = {}
    for role, array in arrays.items():
        raw = encode_idx(array)
        # mtime=0: identical bytes on every run
        (folder / FILE_NAMES[role]).write_bytes(gzip.compress(raw, mtime=0))
        files[role] = {"name": FILE_NAMES[role], "sha256": hashlib.sha256(raw).hexdigest()}
    return files


def run(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run a command, capturing output; on failure raise with the output in the message."""
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def start_queue(repo: Path, env: dict[str, str], jobs: int) -> None:
    """``dvc queue start -j jobs``: starts detached workers and returns.

    Not through :func:`run`: the workers inherit the command's stdout and stderr, so with
    captured pipes ``run`` would wait until the last worker exits, idle ones included (seen:
    15 minutes). A temporary file takes the output instead.
    """
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise AssertionError(f"dvc queue start exited {proc.returncode}\n{text[-6000:]}")


def workspace_env(mirror: Path | None = None) -> dict[str, str]:
    """Environment for commands in a temporary workspace: the venv first, no outside store."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in (
        "MLFLOW_TRACKING_URI",
        "MNIST_MIRROR",
        "MNISTFLOW_MIRROR",
        "DVC_ROOT",
        "DVC_EXP_NAME",
        "DVC_EXP_BASELINE_REV",
    ):
        env.pop(var, None)
    if mirror is not None:
        env["MNISTFLOW_MIRROR"] = str(mirror)
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    return env


def copy_repo(dest: Path, params_edit: Callable[[dict], None] | None = None) -> Path:
    """Copy the repository's tracked and unignored files into ``dest`` as a fresh git repo.

    Args:
        dest: the new workspace folder (created).
        params_edit: optional function that edits the parsed params.yaml in place; the
            edit is committed, so the copy's HEAD holds the edited params.

    Returns:
        ``dest``.
    """
    copy_working_tree(REPO_ROOT, dest)
    if params_edit is not None:
        params_file = dest / "params.yaml"
        params = yaml.safe_load(params_file.read_text())
        params_edit(params)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        git(["commit", "-q", "-am", "test params"], dest)
    return dest


def use_tiny_dataset(files: dict[str, dict], **overrides: dict) -> Callable[[dict], None]:
    """A params edit that selects a tiny dataset ``tiny`` (a params-only change) and applies
    ``overrides`` as ``{section: {key: value}}``."""

    def edit(params: dict) -> None:
        params["datasets"]["tiny"] = {
            "mirrors": [],
            "classes": [str(i) for i in range(10)],
            "files": files,
        }
        params["data"]["dataset"] = "tiny"
        params["evaluate"]["baseline_accuracy"]["tiny"] = 0.97  # every dataset has one
        params["unpack"]["png_workers"] = 1
        for name, values in overrides.items():
            params[name].update(values)

    return edit


def tiny_repo_after_repro(base: Path) -> tuple[Path, dict[str, str]]:
    """A repo copy on a tiny dataset (one 16-unit layer, 5 epochs) after one `dvc repro`.

    Returns:
        ``(repo, env)``: env runs commands there (venv first, the tiny mirror set).
    """
    mirror = base / "tiny-mirror"
    files = write_idx_dataset(mirror)
    repo = copy_repo(
        base / "repo",
        use_tiny_dataset(files, train={"hidden_layer_sizes": [16], "max_iter": 5}),
    )
    env = workspace_env(mirror)  # the venv's bin first: queue workers spawn `dvc` by name
    run(["dvc", "repro"], repo, env)
    return repo, env


def write_encoded(ws: Path, n_train: int, n_test: int) -> None:
    """Synthetic outputs of unpack + encode in a workspace (one-hot targets, x/255)."""
    x_tr, y_tr = synthetic_digits(n_train, seed=1)
    x_te, y_te = synthetic_digits(n_test, seed=2)
    fileio.save_npz(
        ws / "data/unpacked/arrays.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te
    )
    eye = np.eye(10, dtype=np.float32)
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        X = x.reshape(len(x), -1).astype(np.float32) / 255
        fileio.save_npz(ws / f"data/encoded/{name}.npz", X=X, y=eye[y])
    fileio.save_npz(ws / "data/encoded/stats.npz", **Encoding("divide255").to_arrays())
    fileio.write_json(
        ws / "data/encoded/info.json",
        {
            "dataset": "synthetic",
            "dataset_sha256": "ab" * 32,
            "labels": "onehot",
            "n_classes": 10,
            "scaling": "divide255",
            "deskew": False,
            "augment_copies": 0,
            "n_train": n_train,
            "n_test": n_test,
        },
    )


def stage_env() -> dict[str, str]:
    """Environment for running a stage script directly (python stages/x.py) in a workspace."""
    env = workspace_env()
    env["PYTHONPATH"] = "src"
    return env


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
