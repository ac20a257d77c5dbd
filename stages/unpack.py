"""DVC stage ``unpack``: parse the IDX files into arrays, a labelled table and a PNG tree."""

from __future__ import annotations

import logging
import sys

from mnistflow.data.idx import SPLITS, read_split
from mnistflow.data.images import (
    images_manifest,
    labelled_table,
    remove_png_tree,
    split_arrays,
    write_png_tree,
)
from mnistflow.stage_config import stage_config
from mnistflow.util.entrypoint import run_main
from mnistflow.util.fileio import atomic_path, save_npz, write_json

log = logging.getLogger("mnistflow.stages.unpack")


def main() -> None:
    """Read params, unpack the raw files, write arrays, table, manifest and PNG tree."""
    params = stage_config("unpack")
    paths, cfg, spec = params.paths, params.unpack, params.dataset

    splits = {split: read_split(paths.path("raw_dir"), spec, split) for split in SPLITS}
    for split, (images, labels) in splits.items():
        log.info(
            "%s: %d images of %s, %d labels", split, len(images), images.shape[1:], len(labels)
        )
    save_npz(paths.arrays, **split_arrays(splits))

    table = labelled_table(splits)
    with atomic_path(paths.table) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("table %s: %d rows x %d columns", paths.table, *table.shape)
    del table

    if cfg.write_png:
        write_png_tree(paths.path("images_dir"), splits, cfg.png_workers)
    else:
        remove_png_tree(paths.path("images_dir"))
    manifest = images_manifest(
        params.dataset_name, splits, len(spec.classes), paths.images_dir, cfg.write_png
    )
    write_json(paths.images_manifest, manifest)
    log.info("manifest written to %s", paths.images_manifest)


if __name__ == "__main__":
    sys.exit(run_main(main, "stage unpack"))
