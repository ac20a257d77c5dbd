"""The labelled table, the manifest helpers and the PNG tree (real files, real processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistflow.data.images import (
    arrays_sha256,
    class_counts,
    images_manifest,
    labelled_table,
    png_relpath,
    remove_png_tree,
    split_arrays,
    write_png_tree,
)
from tests.helpers import synthetic_digits

pytestmark = pytest.mark.unit


@pytest.fixture
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": synthetic_digits(40, seed=1), "test": synthetic_digits(15, seed=2)}


def test_png_relpath_layout() -> None:
    assert png_relpath("test", np.uint8(3), 1234) == Path("test/3/01234.png")


def test_table_shape_columns_and_rows(splits: dict) -> None:
    table = labelled_table(splits)
    assert table.shape == (55, 3 + 784)
    assert list(table.columns[:4]) == ["split", "index", "label", "px0"]
    assert table.columns[-1] == "px783"
    assert (table["split"] == "train").sum() == 40
    assert (table["split"] == "test").sum() == 15
    assert table["label"].dtype == np.uint8
    assert table["px0"].dtype == np.uint8
    test_rows = table[table["split"] == "test"]
    np.testing.assert_array_equal(test_rows["index"], np.arange(15))
    x_test, y_test = splits["test"]
    row = test_rows.iloc[7]
    assert row["label"] == y_test[7]
    np.testing.assert_array_equal(
        row[[f"px{i}" for i in range(784)]].to_numpy(np.uint8), x_test[7].ravel()
    )


def test_table_round_trips_through_parquet(splits: dict, tmp_path: Path) -> None:
    import pandas as pd

    table = labelled_table(splits)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back.shape == table.shape
    assert back["px300"].dtype == np.uint8
    assert list(back["split"][:2]) == ["train", "train"]


def test_class_counts_include_empty_classes() -> None:
    assert class_counts(np.array([0, 2, 2], np.uint8), 4) == {"0": 1, "1": 0, "2": 2, "3": 0}


def test_arrays_sha256_depends_on_content_and_names() -> None:
    a = {"x": np.zeros((2, 2), np.uint8), "y": np.ones(2, np.uint8)}
    same = {"y": np.ones(2, np.uint8), "x": np.zeros((2, 2), np.uint8)}
    assert arrays_sha256(a) == arrays_sha256(same)
    changed = {"x": np.zeros((2, 2), np.uint8), "y": np.array([1, 2], np.uint8)}
    assert arrays_sha256(changed) != arrays_sha256(a)
    reshaped = {"x": np.zeros((4,), np.uint8), "y": np.ones(2, np.uint8)}
    assert arrays_sha256(reshaped) != arrays_sha256(a)


@pytest.mark.parametrize("workers", [1, 2])
def test_png_tree_matches_arrays(splits: dict, tmp_path: Path, workers: int) -> None:
    root = tmp_path / "images"
    assert write_png_tree(root, splits, workers) == 55
    pngs = sorted(root.rglob("*.png"))
    assert len(pngs) == 55
    for split, (images, labels) in splits.items():
        for index in (0, len(images) - 1):
            path = root / split / str(labels[index]) / f"{index:05d}.png"
            with Image.open(path) as img:
                assert img.mode == "L"
                np.testing.assert_array_equal(np.asarray(img), images[index])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no temp sibling


def test_png_tree_replaces_old_tree_whole(splits: dict, tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "train" / "7").mkdir(parents=True)
    (root / "train" / "7" / "99999.png").write_bytes(b"stale")
    write_png_tree(root, splits, 1)
    assert not (root / "train" / "7" / "99999.png").exists()
    assert len(list(root.rglob("*.png"))) == 55
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_failed_png_write_keeps_old_tree_and_leaves_no_temp(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    (root / "train" / "keep.png").write_bytes(b"old")
    bad = {"train": (np.zeros((3, 28, 28), np.float64), np.zeros(3, np.uint8))}
    with pytest.raises(OSError, match="cannot write mode F as PNG"):
        write_png_tree(root, bad, 2)
    assert (root / "train" / "keep.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_remove_png_tree(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    remove_png_tree(root)
    assert not root.exists()
    remove_png_tree(root)  # absent: nothing to do


def test_split_arrays_and_manifest(splits: dict) -> None:
    arrays = split_arrays(splits)
    assert list(arrays) == ["x_train", "y_train", "x_test", "y_test"]
    assert arrays["y_test"] is splits["test"][1]
    manifest = images_manifest("tiny", splits, 10, "data/images", png_written=False)
    assert manifest["counts"] == {"train": 40, "test": 15}
    assert sum(manifest["class_counts"]["train"].values()) == 40
    assert manifest["arrays_sha256"] == arrays_sha256(arrays)
    assert (manifest["dataset"], manifest["images_dir"], manifest["png_written"]) == (
        "tiny",
        "data/images",
        False,
    )
