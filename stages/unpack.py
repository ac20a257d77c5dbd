"""DVC stage ``unpack``: parse the IDX files into arrays, a labelled table and a PNG tree."""

from __future__ import annotations

import logging
import sys

from mnistflow.config import load_config
from mnistflow.data.idx import SPLITS, read_split
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


def main() -> None:
    """Read params, unpack the raw files, write arrays, table, manifest and PNG tree."""
    params = load_config()
    paths, cfg, name, spec = params.paths, params.unpack, params.dataset_name, params.dataset
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
