"""End to end: ``dvc repro encode`` (download → unpack → encode) in temporary repo copies."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mnistflow.util.fileio import load_npz, read_json
from tests.helpers import copy_repo, run, use_tiny_dataset, workspace_env

DVC = str(Path(sys.executable).parent / "dvc")


def tree_state(root: Path) -> dict[str, int]:
    """``{relative path: mtime_ns}`` of every file under ``root``."""
    state = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            state[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return state


def assert_png_equals_row(ws: Path, split: str, index: int) -> None:
    arrays = load_npz(ws / "data/unpacked/arrays.npz")
    image, label = arrays[f"x_{split}"][index], arrays[f"y_{split}"][index]
    with Image.open(ws / f"data/images/{split}/{label}/{index:05d}.png") as png:
        np.testing.assert_array_equal(np.asarray(png), image)


def repro_twice(ws: Path, env: dict[str, str]) -> tuple[dict[str, int], str]:
    """Run ``dvc repro encode``, then again; return the PNG tree state before the second
    run and the second run's output (which must be a no-op that leaves the PNGs alone)."""
    run([DVC, "repro", "encode"], ws, env)
    before = tree_state(ws / "data/images")
    second = run([DVC, "repro", "encode"], ws, env)
    assert tree_state(ws / "data/images") == before
    return before, second.stdout


@pytest.mark.e2e
def test_tiny_dataset_through_encode(tiny_mirror: tuple[Path, dict], tmp_path: Path) -> None:
    folder, files = tiny_mirror
    ws = copy_repo(tmp_path / "ws", use_tiny_dataset(files))
    env = workspace_env(mirror=folder)
    pngs, second = repro_twice(ws, env)

    assert len(pngs) == 400
    assert "Data and pipelines are up to date" in second
    train, test = load_npz(ws / "data/encoded/train.npz"), load_npz(ws / "data/encoded/test.npz")
    assert train["X"].shape == (300, 784)
    assert train["X"].dtype == np.float32
    assert train["y"].shape == (300, 10)
    assert test["X"].shape == (100, 784)
    assert float(train["X"].max()) <= 1.0
    info = read_json(ws / "data/encoded/info.json")
    assert info["dataset"] == "tiny"
    assert info["labels"] == "onehot"
    assert (info["n_train"], info["n_test"], info["n_classes"]) == (300, 100, 10)
    manifest = read_json(ws / "data/unpacked/images.json")
    assert manifest["counts"] == {"train": 300, "test": 100}
    assert manifest["png_written"] is True
    table = pd.read_parquet(ws / "data/unpacked/table.parquet")
    assert table.shape == (400, 787)
    assert_png_equals_row(ws, "test", 99)
    # the PNG tree is not a DVC output: dvc status never looks at it
    status = run([DVC, "status"], ws, env).stdout
    assert not re.search(r"data/images(?!\.py)", status), status  # the module may be listed


@pytest.mark.e2e
def test_tiny_dataset_encode_variants(tiny_mirror: tuple[Path, dict], tmp_path: Path) -> None:
    folder, files = tiny_mirror
    edit = use_tiny_dataset(
        files,
        unpack={"write_png": False},
        encode={"labels": "index", "scaling": "standardize", "deskew": True, "workers": 1},
    )

    def with_copies(params: dict) -> None:
        edit(params)
        params["encode"]["augment"]["copies"] = 1

    ws = copy_repo(tmp_path / "ws", with_copies)
    run([DVC, "repro", "encode"], ws, workspace_env(mirror=folder))
    train = load_npz(ws / "data/encoded/train.npz")
    assert train["X"].shape == (600, 784)  # originals + one augmented copy
    assert train["y"].dtype == np.int64
    np.testing.assert_array_equal(train["y"][:300], train["y"][300:])
    np.testing.assert_allclose(train["X"].mean(axis=0), 0, atol=1e-4)
    info = read_json(ws / "data/encoded/info.json")
    assert (info["deskew"], info["augment_copies"], info["n_train"]) == (True, 1, 600)
    assert not (ws / "data/images").exists()
    assert read_json(ws / "data/unpacked/images.json")["png_written"] is False


@pytest.mark.slow
def test_real_mnist_through_encode(shared_mnist: Path, tmp_path: Path) -> None:
    ws = copy_repo(tmp_path / "ws")
    env = workspace_env(mirror=shared_mnist)
    run([DVC, "repro", "encode"], ws, env)
    before = tree_state(ws / "data/images")
    second = run([DVC, "repro", "encode"], ws, env).stdout

    assert "Data and pipelines are up to date" in second
    assert tree_state(ws / "data/images") == before  # the no-op did not touch a PNG
    assert len(before) == 70_000
    train, test = load_npz(ws / "data/encoded/train.npz"), load_npz(ws / "data/encoded/test.npz")
    assert train["X"].shape == (60_000, 784)
    assert test["X"].shape == (10_000, 784)
    assert train["y"].shape == (60_000, 10)
    assert int(train["y"][:, 0].sum()) == 5923
    assert int(test["y"][:, 0].sum()) == 980
    manifest = read_json(ws / "data/unpacked/images.json")
    assert manifest["class_counts"]["train"]["0"] == 5923
    assert manifest["class_counts"]["test"]["0"] == 980
    assert_png_equals_row(ws, "test", 1234)
    assert_png_equals_row(ws, "train", 59_999)
    assert read_json(ws / "data/encoded/info.json")["dataset_sha256"] == (
        "c65580678af93f1ea48c2c0d01d543ec89307c6b8a0eb7ca542d7c18c5f4c681"
    )
