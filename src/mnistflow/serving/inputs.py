"""The served model's inputs and outputs (pure): raw images in, digit and probabilities out.

Input: a DataFrame with one row per image and the columns ``px0``..``px783`` (row-major
28x28 pixels, integers 0-255, the layout of unpack's table). Output: a DataFrame with
``digit`` (the argmax class, the pipeline's headline decision) and ``p0``..``p<k-1>`` (the
model's per-class scores: sigmoid outputs for one-hot targets, softmax otherwise).
"""

from __future__ import annotations

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
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"pixel values must be numbers ({exc})") from exc
    bad = ~np.isfinite(values) | (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"pixel values must be integers in 0..255; row {row} {PIXEL_COLUMNS[col]} is "
            f"{values[row, col]:g} ({int(bad.sum())} bad values)"
        )
    return values.astype(np.uint8).reshape(len(frame), *IMAGE_SHAPE)


def output_frame(scores: np.ndarray) -> pd.DataFrame:
    """``digit`` (argmax of each row, int64) and ``p0``.. (float64) from scores (n, k)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = pd.DataFrame(scores, columns=probability_columns(scores.shape[1]))
    out.insert(0, DIGIT_COLUMN, decode_argmax(scores))
    return out
