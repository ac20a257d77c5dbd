"""DVC stage ``unpack``: parse the IDX files into arrays, a labelled table and a PNG tree."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from mnistflow.config import DatasetSpec, Paths, UnpackConfig, config, dataset_spec, load_params
from mnistflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, IdxError, check_pair, gunzip, parse_idx
from mnistflow.data.images import (
    arrays_sha256,
    class_counts,
    labelled_table,
    remove_png_tree,
    write_png_tree,
)
from mnistflow.util.entrypoint import run_main
from mnistflow.util.fileio import atomic_path, save_npz, write_json

log = logging.getLogger("mnistflow.stages.unpack")

SPLITS = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


def read_split(raw_dir: Path, spec: DatasetSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate one split's images and labels (errors name the file)."""
    images_role, labels_role = SPLITS[split]
    images_name = getattr(spec.files, images_role).name
    labels_name = getattr(spec.files, labels_role).name
    images_path, labels_path = raw_dir / images_name, raw_dir / labels_name
    images = parse_idx(
        gunzip(images_path.read_bytes(), str(images_path)), str(images_path), IMAGES_MAGIC
    )
    labels = parse_idx(
        gunzip(labels_path.read_bytes(), str(labels_path)), str(labels_path), LABELS_MAGIC
    )
    check_pair(images, labels, str(images_path), str(labels_path))
    n_classes = len(spec.classes)
    if labels.size and int(labels.max()) >= n_classes:
        raise IdxError(
            f"{labels_path}: label {int(labels.max())} out of range for the dataset's "
            f"{n_classes} classes (datasets.<name>.classes)"
        )
    return images, labels


def main() -> None:
    """Read params, unpack the raw files, write arrays, table, manifest and PNG tree."""
    params = load_params()
    paths = config(params, "paths", Paths)
    cfg = config(params, "unpack", UnpackConfig)
    name, spec = dataset_spec(params)
    raw_dir = paths.path("raw_dir")

    splits = {split: read_split(raw_dir, spec, split) for split in SPLITS}
    for split, (images, labels) in splits.items():
        log.info(
            "%s: %d images of %s, %d labels", split, len(images), images.shape[1:], len(labels)
        )
    arrays = {
        "x_train": splits["train"][0],
        "y_train": splits["train"][1],
        "x_test": splits["test"][0],
        "y_test": splits["test"][1],
    }
    save_npz(paths.arrays, **arrays)

    table = labelled_table(splits)
    with atomic_path(paths.table) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("table %s: %d rows x %d columns", paths.table, *table.shape)
    del table

    images_dir = paths.path("images_dir")
    if cfg.write_png:
        write_png_tree(images_dir, splits, cfg.png_workers)
    else:
        remove_png_tree(images_dir)

    n_classes = len(spec.classes)
    write_json(
        paths.images_manifest,
        {
            "dataset": name,
            "counts": {split: len(labels) for split, (_, labels) in splits.items()},
            "class_counts": {
                split: class_counts(labels, n_classes) for split, (_, labels) in splits.items()
            },
            "arrays_sha256": arrays_sha256(arrays),
            "images_dir": paths.images_dir,
            "png_written": cfg.write_png,
        },
    )
    log.info("manifest written to %s", paths.images_manifest)


if __name__ == "__main__":
    sys.exit(run_main(main, "stage unpack"))
