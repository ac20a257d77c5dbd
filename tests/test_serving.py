"""The served model's input checks and output shape (pure)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mnistflow.serving.inputs import (
    PIXEL_COLUMNS,
    InputError,
    images_from_array,
    images_from_frame,
    images_from_input,
    output_frame,
    pixel_frame,
)

pytestmark = pytest.mark.unit


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_pixel_frame_round_trips_images_and_rows() -> None:
    images = _images(3)
    frame = pixel_frame(images)
    assert list(frame.columns) == PIXEL_COLUMNS == [f"px{i}" for i in range(784)]
    assert frame.loc[1, "px29"] == images[1, 1, 1]  # row-major: px29 is row 1, column 1
    np.testing.assert_array_equal(images_from_frame(frame), images)
    np.testing.assert_array_equal(pixel_frame(images.reshape(3, 784)), frame)
    # What the scoring server hands the model: JSON numbers cast to the schema's doubles.
    np.testing.assert_array_equal(images_from_frame(frame.astype(np.float64)), images)


def test_pixel_frame_refuses_other_shapes_and_types() -> None:
    with pytest.raises(InputError, match=r"\(n, 28, 28\) or rows \(n, 784\); got \(2, 27, 28\)"):
        pixel_frame(np.zeros((2, 27, 28), dtype=np.uint8))
    with pytest.raises(InputError, match="uint8"):
        pixel_frame(np.zeros((2, 784)))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.iloc[:, :783], r"784 columns px0\.\.px783.*missing \['px783'\]"),
        (lambda f: f.assign(extra=0), r"got 785 columns.*unexpected \['extra'\]"),
        (lambda f: f[PIXEL_COLUMNS[::-1]], "in order"),
        (lambda f: f.iloc[:0], "at least one image"),
        (lambda f: f.astype(float).assign(px5=256.0), r"0\.\.255; row 0 px5 is 256 \(2 bad"),
        (lambda f: f.astype(float).assign(px0=-1.0), r"row 0 px0 is -1"),
        (lambda f: f.astype(float).assign(px7=0.5), r"row 0 px7 is 0\.5"),
        (lambda f: f.astype(float).assign(px1=np.nan), r"px1 is nan"),
        (lambda f: f.astype(object).assign(px2="x"), "must be numbers"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(edit, message: str) -> None:
    with pytest.raises(InputError, match=message):
        images_from_frame(edit(pixel_frame(_images(2))))


def test_not_a_frame_is_refused() -> None:
    with pytest.raises(InputError, match=r"DataFrame.*ndarray"):
        images_from_frame(np.zeros((1, 784)))  # type: ignore[arg-type]


def test_images_and_rows_arrays_are_images() -> None:
    images = _images(3)
    for given in (images, images.astype(np.int64), images.tolist(), images.reshape(3, 784)):
        np.testing.assert_array_equal(images_from_array(given), images)
        np.testing.assert_array_equal(images_from_input(given), images)
    np.testing.assert_array_equal(images_from_input(pixel_frame(images)), images)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (np.zeros((1, 27, 28)), r"\(n, 28, 28\) or rows \(n, 784\); got shape \(1, 27, 28\)"),
        (np.zeros((2, 783)), r"got shape \(2, 783\)"),
        (np.zeros(784), r"got shape \(784,\)"),
        (np.zeros((0, 784)), "at least one image"),
        ([[0] * 784, [0] * 10], "unequal lengths"),
        (np.full((1, 28, 28), 300), r"0\.\.255; image 0 pixel \[0\]\[0\] is 300 \(784 bad"),
        (np.eye(28)[None] * -1, r"image 0 pixel \[0\]\[0\] is -1 \(28 bad"),
        (np.full((2, 784), 0.5), r"row 0 pixel 0 is 0\.5"),
        ([["x"] * 784], "must be numbers"),
    ],
)
def test_bad_arrays_are_refused_with_a_clear_message(given, message: str) -> None:
    with pytest.raises(InputError, match=message):
        images_from_input(given)


def test_other_inputs_are_refused() -> None:
    with pytest.raises(InputError, match=r"px0\.\.px783, images .* got dict"):
        images_from_input({"px0": [0]})


def test_output_frame_is_the_argmax_digit_and_every_score() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.6, 0.1, 0.6]], dtype=np.float32)
    out = output_frame(scores)
    assert list(out.columns) == ["digit", "p0", "p1", "p2"]
    assert list(out["digit"]) == [1, 0]  # a tie goes to the first class, as in evaluate
    assert out["digit"].dtype == np.int64
    np.testing.assert_array_equal(out[["p0", "p1", "p2"]].to_numpy(), scores.astype(np.float64))
    assert isinstance(out, pd.DataFrame)
