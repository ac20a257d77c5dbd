"""The encoded sets as the train and evaluate stages read them (file names from paths:).

Loading checks what it can: X and y describe the same rows, and the test set's classes are
the ones unpack read and the dataset names (the files of different runs never mix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistflow.config import Paths
from mnistflow.data.encode import Encoding, features
from mnistflow.modeling import metrics as m
from mnistflow.util import fileio


@dataclass(frozen=True)
class TrainSet:
    """The encoded training rows, the fitted encoding and two raw test images (the logged
    model's input example and the image shape)."""

    X: np.ndarray
    y: np.ndarray
    encoding: Encoding
    examples: np.ndarray
    info: dict[str, Any]  # paths.encode_info

    @property
    def n_classes(self) -> int:
        return int(self.info["n_classes"])

    def describe(self, threads: int) -> str:
        """What the fit trains on, in one line (the train stage's log)."""
        plural = "" if threads == 1 else "s"
        return (
            f"training on {self.X.shape[0]} rows x {self.X.shape[1]} features "
            f"({self.info['labels']} targets), {threads} BLAS thread{plural}"
        )


@dataclass(frozen=True)
class TestSet:
    """The encoded test rows, their class indices and the raw test images."""

    X: np.ndarray
    y_true: np.ndarray
    images: np.ndarray  # uint8 (n, 28, 28), the x_test of paths.arrays
    info: dict[str, Any]  # paths.encode_info

    @property
    def multilabel(self) -> bool:
        """One-hot targets: the model predicts a set of classes per row."""
        return bool(self.info["labels"] == "onehot")


def load_train_set(paths: Paths) -> TrainSet:
    """The train stage's inputs: paths.train_features, encode_stats, encode_info, arrays."""
    X, y = features(fileio.load_npz(paths.train_features), paths.train_features)
    encoding = Encoding.from_arrays(fileio.load_npz(paths.encode_stats), paths.encode_stats)
    examples = fileio.load_npz(paths.arrays, ["x_test"])["x_test"][:2]
    return TrainSet(X, y, encoding, examples, fileio.read_json(paths.encode_info))


def load_test_set(paths: Paths, n_names: int) -> TestSet:
    """The evaluate stage's inputs: paths.test_features, encode_info and arrays.

    Raises:
        ValueError: the encoded test classes are not unpack's labels, or encode's class count
            is not ``n_names`` (the dataset's class names); the message names both files.
    """
    info = fileio.read_json(paths.encode_info)
    X, y = features(fileio.load_npz(paths.test_features), paths.test_features)
    images = fileio.load_npz(paths.arrays, ["x_test", "y_test"])
    y_true = m.true_classes(y)
    m.check_test_labels(
        y_true,
        images["y_test"],
        int(info["n_classes"]),
        n_names,
        f"{paths.test_features} and {paths.arrays}",
    )
    return TestSet(X, y_true, images["x_test"], info)
