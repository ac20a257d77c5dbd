"""The served model's inputs and outputs (pure): raw images in, digit and probabilities out.

Input: a DataFrame with one row per image and the columns ``px0``..``px783`` (row-major
28x28 pixels, integers 0-255, the layout of unpack's table), or an array of images
(n, 28, 28) or of rows (n, 784) with the same values. Output: a DataFrame with
``digit`` (the argmax class, the pipeline's headline decision) and ``p0``..``p<k-1>`` (the
model's per-class scores: sigmoid outputs for one-hot targets, softmax otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from mnistflow.data.images import pixel_columns
from mnistflow.modeling.model import decode_argmax

IMAGE_SHAPE = (28, 28)
PIXEL_COLUMNS: list[str] = pixel_columns(IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
DIGIT_COLUMN = "digit"


class InputError(ValueError):
    """A request that does not describe a batch of 28x28 images with values 0-255."""


def probability_columns(n_classes: int) -> list[str]:
    """``p0``..``p<n_classes-1>``."""
    return [f"p{i}" for i in range(n_classes)]


def pixel_frame(images: np.ndarray) -> pd.DataFrame:
    """The model input for uint8 images (n, 28, 28) or rows (n, 784): uint8 pixel columns."""
    images = np.asarray(images)
    if images.ndim not in (2, 3) or images.shape[1:] not in (IMAGE_SHAPE, (len(PIXEL_COLUMNS),)):
        raise InputError(f"expected images (n, 28, 28) or rows (n, 784); got {images.shape}")
    if images.dtype != np.uint8:
        raise InputError(f"expected uint8 pixels; got {images.dtype}")
    rows = images.reshape(len(images), -1)
    return pd.DataFrame(rows, columns=PIXEL_COLUMNS)


def images_from_input(value: object) -> np.ndarray:
    """uint8 images (n, 28, 28) from any model input (:func:`images_from_frame` for a
    DataFrame, :func:`images_from_array` for an array or nested lists), checked.

    Raises:
        InputError: neither, or a bad one.
    """
    if isinstance(value, pd.DataFrame):
        return images_from_frame(value)
    if isinstance(value, (np.ndarray, list)):
        return images_from_array(value)
    raise InputError(
        "expected pixel columns px0..px783, images (n, 28, 28) or rows (n, 784); got "
        f"{type(value).__name__}"
    )


def images_from_frame(frame: pd.DataFrame) -> np.ndarray:
    """uint8 images (n, 28, 28) from a model input, checked.

    Raises:
        InputError: no rows, columns other than px0..px783 in order, or a value that is not
            an integer in 0..255.
    """
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"expected a DataFrame of pixel columns; got {type(frame).__name__}")
    columns = [str(c) for c in frame.columns]
    if columns != PIXEL_COLUMNS:
        missing = [c for c in PIXEL_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in PIXEL_COLUMNS]
        raise InputError(
            f"expected the {len(PIXEL_COLUMNS)} columns px0..px783 in order; got "
            f"{len(columns)} columns (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    if len(frame) == 0:
        raise InputError("expected at least one image; got 0 rows")
    return _checked_pixels(frame, lambda row, pixel: f"row {row} {PIXEL_COLUMNS[pixel]}")


def images_from_array(array: np.ndarray | list) -> np.ndarray:
    """uint8 images (n, 28, 28) from an array (or nested lists) of images (n, 28, 28) or of
    rows (n, 784), checked.

    Raises:
        InputError: another shape (ragged lists included), no image, or a value that is not
            an integer in 0..255.
    """
    try:
        values = np.asarray(array)
    except ValueError as exc:  # ragged nested lists
        raise InputError(
            f"expected images (n, 28, 28) or rows (n, 784); got lists of unequal lengths ({exc})"
        ) from exc
    if values.ndim not in (2, 3) or values.shape[1:] not in (IMAGE_SHAPE, (len(PIXEL_COLUMNS),)):
        raise InputError(f"expected images (n, 28, 28) or rows (n, 784); got shape {values.shape}")
    if len(values) == 0:
        raise InputError("expected at least one image; got 0")
    if values.ndim == 3:
        return _checked_pixels(
            values.reshape(len(values), -1),
            lambda image, pixel: f"image {image} pixel [{pixel // 28}][{pixel % 28}]",
        )
    return _checked_pixels(values, lambda row, pixel: f"row {row} pixel {pixel}")


def _checked_pixels(
    rows: pd.DataFrame | np.ndarray, where: Callable[[int, int], str]
) -> np.ndarray:
    """uint8 images (n, 28, 28) from rows (n, 784); ``where(row, pixel)`` names a bad value.

    Raises:
        InputError: a value that is not a number, or not an integer in 0..255.
    """
    try:
        values = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"pixel values must be numbers ({exc})") from exc
    bad = ~np.isfinite(values) | (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        row, pixel = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"pixel values must be integers in 0..255; {where(row, pixel)} is "
            f"{values[row, pixel]:g} ({int(bad.sum())} bad values)"
        )
    return values.astype(np.uint8).reshape(len(values), *IMAGE_SHAPE)


def output_frame(scores: np.ndarray) -> pd.DataFrame:
    """``digit`` (argmax of each row, int64) and ``p0``.. (float64) from scores (n, k)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = pd.DataFrame(scores, columns=probability_columns(scores.shape[1]))
    out.insert(0, DIGIT_COLUMN, decode_argmax(scores))
    return out
