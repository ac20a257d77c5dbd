"""Model inputs from images and labels: flattening, pixel scaling, label encoding (pure).

:class:`Encoding` is the one place that says how images become features: it is *fitted* on
the training rows (per-pixel statistics for ``standardize``) and *applied* to any images, by
the encode stage and by prediction alike. It does not need MLflow.

Every function returns new arrays and leaves its inputs untouched; intermediate results are
float32 and made in place on arrays the function itself created, to keep memory low.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from mnistflow.config import DatasetSpec, EncodeConfig, ParamsError
from mnistflow.data import augment as augmentation
from mnistflow.data.augment import deskew as deskew_images

log = logging.getLogger(__name__)

Scaling = Literal["divide255", "none", "standardize"]
SCALINGS: tuple[str, ...] = get_args(Scaling)
LabelEncoding = Literal["onehot", "index"]


def flatten(images: np.ndarray) -> np.ndarray:
    """View images (n, rows, cols) as rows (n, rows*cols) without copying when possible."""
    return images.reshape(len(images), -1)


@dataclass(frozen=True, eq=False)
class Encoding:
    """How images (n, h, w) in [0, 255] become float32 feature rows (n, h*w).

    ``deskew`` straightens each image first; ``scaling`` is ``divide255`` (x/255), ``none``
    (raw values as float32) or ``standardize`` (per-pixel (x - mean) / std of the training
    rows, ``mean`` and ``std`` float32 (d,); a pixel with std 0 is divided by 1).
    """

    scaling: Scaling
    deskew: bool = False
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {self.scaling!r} (encode.scaling)")
        if self.scaling == "standardize" and (self.mean is None or self.std is None):
            raise ValueError("standardize scaling needs the training rows' mean and std")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Encoding):
            return NotImplemented
        return (self.scaling, self.deskew) == (other.scaling, other.deskew) and all(
            (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
            for a, b in ((self.mean, other.mean), (self.std, other.std))
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def fit(cls, train_rows: np.ndarray, scaling: Scaling, deskew: bool = False) -> Encoding:
        """The encoding of ``scaling`` with its statistics from ``train_rows`` (n, d), rows
        already deskewed when ``deskew`` (the encode stage deskews before augmenting)."""
        if scaling == "standardize":
            mean, std = pixel_stats(train_rows)
            return cls(scaling, deskew, mean, std)
        return cls(scaling, deskew)

    def scale(self, rows: np.ndarray) -> np.ndarray:
        """Scale pixel rows (n, d) (already deskewed if need be) into new float32 rows."""
        if self.scaling == "divide255":
            return np.divide(rows, np.float32(255), dtype=np.float32)
        if self.scaling == "none":
            return rows.astype(np.float32)
        assert self.mean is not None
        assert self.std is not None
        return _standardize(rows, self.mean, self.std)

    def unscale(self, rows: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`scale`: pixel values (float32, new array) of feature rows,
        exact up to float32 rounding (online augmentation resamples them)."""
        if self.scaling == "divide255":
            return np.multiply(rows, np.float32(255), dtype=np.float32)
        if self.scaling == "none":
            return rows.astype(np.float32)
        assert self.mean is not None  # __post_init__
        assert self.std is not None
        out = np.multiply(rows, self.std, dtype=np.float32)
        out += self.mean
        return out

    def blank(self, pixels: int) -> np.ndarray:
        """The features (pixels,) of an empty (all-zero) image: deskewing leaves it empty."""
        return self.scale(np.zeros((1, pixels), dtype=np.uint8))[0]

    def apply(self, images: np.ndarray, workers: int = 1) -> np.ndarray:
        """Features from images (n, h, w): deskew (if set), flatten, scale."""
        pixels = deskew_images(images, workers) if self.deskew else images
        return self.scale(flatten(pixels))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The encoding as named arrays for an ``.npz`` file (no pickled objects)."""
        out = {"scaling": np.array(self.scaling), "deskew": np.array(self.deskew)}
        if self.mean is not None and self.std is not None:
            out |= {"mean": self.mean, "std": self.std}
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str) -> Encoding:
        """Inverse of :meth:`to_arrays`; ``source`` names the file in errors."""
        try:
            scaling = str(arrays["scaling"])
            deskew = bool(arrays["deskew"])
            mean = arrays.get("mean")
            std = arrays.get("std")
            return cls(
                scaling,  # type: ignore[arg-type]
                deskew,
                None if mean is None else np.asarray(mean, dtype=np.float32),
                None if std is None else np.asarray(std, dtype=np.float32),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source}: not an encoding ({exc})") from exc

    def describe(self) -> str:
        """``divide255`` or ``standardize + deskew``, for logs."""
        return self.scaling + (" + deskew" if self.deskew else "")


def scale(train: np.ndarray, test: np.ndarray, scaling: Scaling) -> tuple[np.ndarray, np.ndarray]:
    """Scale pixel rows (n, d) with an :class:`Encoding` fitted on ``train`` only.

    Returns:
        New float32 arrays ``(train, test)`` of the input shapes.
    """
    encoding = Encoding.fit(train, scaling)
    return encoding.scale(train), encoding.scale(test)


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


def features(arrays: Mapping[str, np.ndarray], source: str) -> tuple[np.ndarray, np.ndarray]:
    """X (n, d) and y from an encode output's arrays, with a clear error if malformed."""
    if set(arrays) != {"X", "y"}:
        raise ValueError(f"{source}: expected arrays X and y, found {sorted(arrays)}")
    X, y = arrays["X"], arrays["y"]
    if X.ndim != 2 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{source}: X {X.shape} and y {y.shape} do not describe the same rows")
    return X, y


def dataset_sha256(spec: DatasetSpec) -> str:
    """Content hash of a dataset: SHA-256 of its files' decompressed SHA-256s joined in role
    order (train_images, train_labels, test_images, test_labels)."""
    joined = "".join(file_spec.sha256 for _, file_spec in spec.files.items())
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Encoded:
    """The encode stage's result: features, targets and the fitted encoding."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    encoding: Encoding


def encode_splits(arrays: Mapping[str, np.ndarray], cfg: EncodeConfig, n_classes: int) -> Encoded:
    """Features and targets from unpack's arrays (x/y_train, x/y_test).

    Training images are deskewed (if set), augmented (if set), and the encoding is fitted
    on them; test images go through :meth:`Encoding.apply`, the path prediction takes.
    """
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    if cfg.deskew:
        log.info("deskewing %d training images", len(x_train))
        x_train = deskew_images(x_train, cfg.workers)
    if cfg.augment.copies > 0:
        log.info("adding %d augmented copies of the training set", cfg.augment.copies)
        x_train, y_train = augmentation.augment(x_train, y_train, cfg.augment, cfg.workers)
    encoding = Encoding.fit(flatten(x_train), cfg.scaling, cfg.deskew)
    X_train = encoding.scale(flatten(x_train))
    del x_train  # the float32 features replace the images (memory)
    return Encoded(
        X_train=X_train,
        y_train=encode_labels(y_train, cfg.labels, n_classes),
        X_test=encoding.apply(arrays["x_test"], cfg.workers),
        y_test=encode_labels(arrays["y_test"], cfg.labels, n_classes),
        encoding=encoding,
    )


def split_holdout(arrays: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A tuning trial's arrays for :func:`encode_splits`: the training rows but the last
    ``rows`` to fit, and those last rows as the held-out side (``x_test``/``y_test`` there).

    Only the training arrays are read: a trial cannot encode, fit or score the test set.

    Raises:
        ParamsError: more than half of the training rows would be held out.
    """
    n = len(arrays["y_train"])
    if not 0 < rows <= n // 2:
        raise ParamsError(
            f"params.yaml: 'tune.holdout_size' is {rows} but the training set has {n} "
            "rows; hold out at most half of them"
        )
    cut = n - rows
    x, y = arrays["x_train"], arrays["y_train"]
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


def encode_info(dataset: str, spec: DatasetSpec, cfg: EncodeConfig, encoded: Encoded) -> dict:
    """The encode stage's info file: what the features are and where they came from."""
    return {
        "dataset": dataset,
        "dataset_sha256": dataset_sha256(spec),
        "labels": cfg.labels,
        "n_classes": len(spec.classes),
        "scaling": cfg.scaling,
        "deskew": cfg.deskew,
        "augment_copies": cfg.augment.copies,
        "n_train": int(encoded.X_train.shape[0]),
        "n_test": int(encoded.X_test.shape[0]),
    }
