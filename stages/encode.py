"""DVC stage ``encode``: arrays → float32 features and encoded targets for train."""

from __future__ import annotations

import logging
import sys

import numpy as np

from mnistflow.config import load_config
from mnistflow.data import augment as augmentation
from mnistflow.data.encode import dataset_sha256, encode_labels, flatten, scale
from mnistflow.util.entrypoint import run_main
from mnistflow.util.fileio import load_npz, save_npz, write_json

log = logging.getLogger("mnistflow.stages.encode")


def main() -> None:
    """Read params, encode the unpacked arrays, write train/test features and info."""
    params = load_config()
    paths, cfg, name, spec = params.paths, params.encode, params.dataset_name, params.dataset
    n_classes = len(spec.classes)

    arrays = load_npz(paths.arrays)
    x_train: np.ndarray = arrays.pop("x_train")
    y_train: np.ndarray = arrays.pop("y_train")
    x_test: np.ndarray = arrays.pop("x_test")
    y_test: np.ndarray = arrays.pop("y_test")

    if cfg.deskew:
        log.info("deskewing %d + %d images", len(x_train), len(x_test))
        x_train = augmentation.deskew(x_train, cfg.workers)
        x_test = augmentation.deskew(x_test, cfg.workers)
    if cfg.augment.copies > 0:
        log.info("adding %d augmented copies of the training set", cfg.augment.copies)
        x_train, y_train = augmentation.augment(x_train, y_train, cfg.augment, cfg.workers)

    # Rebinding drops the previous arrays as soon as the new ones exist (memory).
    X_train, X_test = scale(flatten(x_train), flatten(x_test), cfg.scaling)
    del x_train, x_test
    save_npz(paths.train_features, X=X_train, y=encode_labels(y_train, cfg.labels, n_classes))
    save_npz(paths.test_features, X=X_test, y=encode_labels(y_test, cfg.labels, n_classes))
    log.info(
        "features: train %s, test %s (%s, labels %s)",
        X_train.shape,
        X_test.shape,
        cfg.scaling,
        cfg.labels,
    )

    write_json(
        paths.encode_info,
        {
            "dataset": name,
            "dataset_sha256": dataset_sha256(spec),
            "labels": cfg.labels,
            "n_classes": n_classes,
            "scaling": cfg.scaling,
            "deskew": cfg.deskew,
            "augment_copies": cfg.augment.copies,
            "n_train": int(X_train.shape[0]),
            "n_test": int(X_test.shape[0]),
        },
    )


if __name__ == "__main__":
    sys.exit(run_main(main, "stage encode"))
