"""Model inputs from images and labels: flattening, pixel scaling, label encoding (pure).

Every function returns new arrays and leaves its inputs untouched; intermediate results are
float32 and made in place on arrays the function itself created, to keep memory low.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

from mnistflow.config import DatasetSpec

Scaling = Literal["divide255", "none", "standardize"]
LabelEncoding = Literal["onehot", "index"]


def flatten(images: np.ndarray) -> np.ndarray:
    """View images (n, rows, cols) as rows (n, rows*cols) without copying when possible."""
    return images.reshape(len(images), -1)


def scale(train: np.ndarray, test: np.ndarray, scaling: Scaling) -> tuple[np.ndarray, np.ndarray]:
    """Scale pixel rows (n, d) of values in [0, 255] into float32 features.

    Args:
        train: training rows (any numeric dtype).
        test: test rows, scaled with statistics from ``train`` only.
        scaling: ``divide255`` (x/255), ``none`` (raw values as float32) or
            ``standardize`` (per-pixel (x - mean) / std of the training rows; a pixel
            with std 0 is divided by 1).

    Returns:
        New float32 arrays ``(train, test)`` of the input shapes.
    """
    if scaling == "divide255":
        return (
            np.divide(train, np.float32(255), dtype=np.float32),
            np.divide(test, np.float32(255), dtype=np.float32),
        )
    if scaling == "none":
        return train.astype(np.float32), test.astype(np.float32)
    if scaling == "standardize":
        mean, std = pixel_stats(train)
        return _standardize(train, mean, std), _standardize(test, mean, std)
    raise ValueError(f"unknown scaling {scaling!r} (encode.scaling)")


def pixel_stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of ``rows`` (float64 sums, float32 results; std 0 → 1)."""
    mean = np.mean(rows, axis=0, dtype=np.float64)
    std = np.std(rows, axis=0, dtype=np.float64)
    std[std == 0] = 1.0  # constant pixels (e.g. MNIST's border) would divide by zero
    return mean.astype(np.float32), std.astype(np.float32)


def _standardize(rows: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = np.subtract(rows, mean, dtype=np.float32)
    out /= std
    return out


def onehot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The original ``value_encode``: float32 (n, n_classes) with a 1 at each label.

    Raises:
        ValueError: a label outside 0..n_classes-1.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must be in 0..{n_classes - 1}; found {labels.min()}..{labels.max()}"
        )
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels.astype(np.intp)] = 1.0
    return out


def encode_labels(labels: np.ndarray, encoding: LabelEncoding, n_classes: int) -> np.ndarray:
    """Targets for the model: one-hot float32 (n, n_classes) or int64 class indices (n,)."""
    if encoding == "onehot":
        return onehot(labels, n_classes)
    if encoding == "index":
        return np.asarray(labels).astype(np.int64)
    raise ValueError(f"unknown label encoding {encoding!r} (encode.labels)")


def dataset_sha256(spec: DatasetSpec) -> str:
    """Content hash of a dataset: SHA-256 of its files' decompressed SHA-256s joined in role
    order (train_images, train_labels, test_images, test_labels)."""
    joined = "".join(file_spec.sha256 for _, file_spec in spec.files.items())
    return hashlib.sha256(joined.encode("ascii")).hexdigest()
