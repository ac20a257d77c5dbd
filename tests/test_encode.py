"""Feature scaling, flattening and label encoding (pure functions, synthetic data)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mnistflow.config import DatasetSpec
from mnistflow.data.encode import dataset_sha256, encode_labels, flatten, onehot, pixel_stats, scale
from tests.helpers import synthetic_digits

pytestmark = pytest.mark.unit


@pytest.fixture
def rows() -> tuple[np.ndarray, np.ndarray]:
    x_train, _ = synthetic_digits(50, seed=1)
    x_test, _ = synthetic_digits(20, seed=2)
    return flatten(x_train), flatten(x_test)


def test_flatten_is_a_view_of_rows() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    flat = flatten(images)
    assert flat.shape == (2, 784)
    assert np.shares_memory(flat, images)
    np.testing.assert_array_equal(flat[1], images[1].ravel())


def test_divide255(rows: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = rows
    before = train.copy()
    X_train, X_test = scale(train, test, "divide255")
    assert X_train.dtype == X_test.dtype == np.float32
    assert X_train.shape == train.shape
    assert X_test.shape == test.shape
    np.testing.assert_allclose(X_train, train / 255.0, rtol=1e-6)
    np.testing.assert_allclose(X_test, test / 255.0, rtol=1e-6)
    assert X_train.min() >= 0
    assert X_train.max() <= 1
    np.testing.assert_array_equal(train, before)  # input untouched


def test_none_keeps_raw_values_as_float32(rows: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = rows
    X_train, X_test = scale(train, test, "none")
    assert X_train.dtype == np.float32
    np.testing.assert_array_equal(X_train, train.astype(np.float64))
    np.testing.assert_array_equal(X_test, test.astype(np.float64))


def test_standardize_uses_train_statistics_only() -> None:
    train = np.array([[0, 10, 7], [2, 30, 7], [4, 20, 7]], dtype=np.uint8)
    test = np.array([[2, 40, 9]], dtype=np.uint8)
    X_train, X_test = scale(train, test, "standardize")
    assert X_train.dtype == X_test.dtype == np.float32
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1  # the constant third pixel
    np.testing.assert_allclose(X_train, (train - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(X_test, (test - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(X_train[:, :2].mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(X_train[:, :2].std(axis=0), 1, rtol=1e-6)
    assert X_test[0, 2] == pytest.approx(2.0)  # (9 - 7) / 1: test does not change the stats


def test_pixel_stats_zero_std_becomes_one() -> None:
    mean, std = pixel_stats(np.zeros((5, 3), np.uint8))
    np.testing.assert_array_equal(std, [1, 1, 1])
    np.testing.assert_array_equal(mean, [0, 0, 0])


def test_unknown_scaling_is_rejected(rows: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"encode\.scaling"):
        scale(*rows, "minmax")  # type: ignore[arg-type]


def test_onehot_is_the_original_value_encode() -> None:
    labels = np.array([3, 0, 9, 3], dtype=np.uint8)
    y = onehot(labels, 10)
    assert y.dtype == np.float32
    assert y.shape == (4, 10)
    expected = np.zeros((4, 10), np.float32)
    for row, label in enumerate(labels):
        expected[row][label] = 1  # value_encode: a 10-wide vector with a 1 at the digit
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y.argmax(axis=1), labels)


def test_onehot_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9; found 0\.\.10"):
        onehot(np.array([0, 10]), 10)


def test_index_labels_are_int64() -> None:
    y = encode_labels(np.array([5, 1], dtype=np.uint8), "index", 10)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [5, 1])
    assert encode_labels(np.array([5, 1]), "onehot", 10).shape == (2, 10)


def _spec(hashes: list[str]) -> DatasetSpec:
    roles = ["train_images", "train_labels", "test_images", "test_labels"]
    files = {r: {"name": f"{r}.gz", "sha256": h} for r, h in zip(roles, hashes, strict=True)}
    return DatasetSpec.from_section({"mirrors": [], "classes": ["a"], "files": files}, "d")


def test_dataset_sha256_hashes_the_file_hashes_in_role_order() -> None:
    hashes = [c * 64 for c in "abcd"]
    assert dataset_sha256(_spec(hashes)) == hashlib.sha256("".join(hashes).encode()).hexdigest()
    assert dataset_sha256(_spec(hashes[::-1])) != dataset_sha256(_spec(hashes))
