"""Feature scaling, flattening and label encoding (pure functions, synthetic data)."""

from __future__ import annotations

import hashlib
from typing import get_args, get_type_hints

import numpy as np
import pytest

from mnistflow.config import AugmentConfig, DatasetSpec, EncodeConfig, ParamsError
from mnistflow.data.augment import deskew
from mnistflow.data.encode import (
    SCALINGS,
    Encoding,
    dataset_sha256,
    encode_info,
    encode_labels,
    encode_splits,
    features,
    flatten,
    onehot,
    pixel_stats,
    scale,
    split_holdout,
)
from tests.helpers import synthetic_digits


@pytest.fixture
def rows() -> tuple[np.ndarray, np.ndarray]:
    x_train, _ = synthetic_digits(50, seed=1)
    x_test, _ = synthetic_digits(20, seed=2)
    return flatten(x_train), flatten(x_test)


@pytest.mark.unit
def test_flatten_is_a_view_of_rows() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    flat = flatten(images)
    assert flat.shape == (2, 784)
    assert np.shares_memory(flat, images)
    np.testing.assert_array_equal(flat[1], images[1].ravel())


@pytest.mark.unit
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


@pytest.mark.unit
def test_none_keeps_raw_values_as_float32(rows: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = rows
    X_train, X_test = scale(train, test, "none")
    assert X_train.dtype == np.float32
    np.testing.assert_array_equal(X_train, train.astype(np.float64))
    np.testing.assert_array_equal(X_test, test.astype(np.float64))


@pytest.mark.unit
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


@pytest.mark.unit
@pytest.mark.parametrize("scaling", ["divide255", "none", "standardize"])
def test_unscale_inverts_scale_up_to_float32_rounding(
    rows: tuple[np.ndarray, np.ndarray], scaling: str
) -> None:
    train, _ = rows
    encoding = Encoding.fit(train, scaling)  # type: ignore[arg-type]
    pixels = encoding.unscale(encoding.scale(train))
    assert pixels.dtype == np.float32
    assert pixels.shape == train.shape
    np.testing.assert_allclose(pixels, train, atol=1e-3)
    # exactly the deterministic inverse: same input, same bits
    assert np.array_equal(pixels, encoding.unscale(encoding.scale(train)))


@pytest.mark.unit
def test_pixel_stats_zero_std_becomes_one() -> None:
    mean, std = pixel_stats(np.zeros((5, 3), np.uint8))
    np.testing.assert_array_equal(std, [1, 1, 1])
    np.testing.assert_array_equal(mean, [0, 0, 0])


@pytest.mark.unit
def test_unknown_scaling_is_rejected(rows: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"encode\.scaling"):
        scale(*rows, "minmax")  # type: ignore[arg-type]


@pytest.mark.unit
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


@pytest.mark.unit
def test_onehot_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9; found 0\.\.10"):
        onehot(np.array([0, 10]), 10)


@pytest.mark.unit
def test_index_labels_are_int64() -> None:
    y = encode_labels(np.array([5, 1], dtype=np.uint8), "index", 10)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [5, 1])
    assert encode_labels(np.array([5, 1]), "onehot", 10).shape == (2, 10)


def _spec(hashes: list[str]) -> DatasetSpec:
    roles = ["train_images", "train_labels", "test_images", "test_labels"]
    files = {r: {"name": f"{r}.gz", "sha256": h} for r, h in zip(roles, hashes, strict=True)}
    return DatasetSpec.from_section({"mirrors": [], "classes": ["a"], "files": files}, "d")


@pytest.mark.unit
def test_dataset_sha256_hashes_the_file_hashes_in_role_order() -> None:
    hashes = [c * 64 for c in "abcd"]
    assert dataset_sha256(_spec(hashes)) == hashlib.sha256("".join(hashes).encode()).hexdigest()
    assert dataset_sha256(_spec(hashes[::-1])) != dataset_sha256(_spec(hashes))


@pytest.mark.unit
def test_encoding_fit_apply_and_round_trip() -> None:
    images, _ = synthetic_digits(30, seed=5)
    enc = Encoding.fit(flatten(images), "standardize")
    assert enc.mean is not None
    assert enc.std is not None
    assert enc.mean.dtype == enc.std.dtype == np.float32
    out = enc.apply(images)
    assert (out.dtype, out.shape) == (np.float32, (30, 784))
    np.testing.assert_allclose(out.mean(axis=0)[enc.std != 1], 0, atol=1e-5)
    assert Encoding.from_arrays(enc.to_arrays(), "f") == enc
    plain = Encoding.fit(flatten(images), "divide255", deskew=True)
    assert set(plain.to_arrays()) == {"scaling", "deskew"}
    assert Encoding.from_arrays(plain.to_arrays(), "f") == plain != enc
    np.testing.assert_array_equal(plain.apply(images), flatten(deskew(images, 1)) / np.float32(255))


@pytest.mark.unit
def test_blank_is_the_features_of_an_empty_image() -> None:
    """Oracle: an all-zero image through the encoding's own apply (deskew included)."""
    images, _ = synthetic_digits(30, seed=5)
    empty = np.zeros((1, 28, 28), dtype=np.uint8)
    for enc in (
        Encoding.fit(flatten(images), "standardize", deskew=True),
        Encoding.fit(flatten(images), "divide255"),
    ):
        np.testing.assert_array_equal(enc.blank(784), enc.apply(empty)[0])
    standard = Encoding.fit(flatten(images), "standardize")
    assert standard.mean is not None
    assert standard.std is not None
    np.testing.assert_allclose(standard.blank(784), -standard.mean / standard.std, rtol=1e-6)
    assert np.any(standard.blank(784) != 0)


@pytest.mark.unit
def test_encoding_rejects_what_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="needs the training rows' mean and std"):
        Encoding("standardize")
    with pytest.raises(ValueError, match=r"unknown scaling 'minmax' \(encode\.scaling\)"):
        Encoding("minmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stats\.npz: not an encoding"):
        Encoding.from_arrays({"deskew": np.array(False)}, "stats.npz")


@pytest.mark.unit
def test_scalings_are_the_ones_params_yaml_accepts() -> None:
    assert get_args(get_type_hints(EncodeConfig)["scaling"]) == SCALINGS


@pytest.mark.unit
def test_features_checks_the_arrays() -> None:
    X, y = np.zeros((3, 4), np.float32), np.zeros(3)
    assert features({"X": X, "y": y}, "f")[0] is X
    with pytest.raises(ValueError, match=r"f: expected arrays X and y, found \['X'\]"):
        features({"X": X}, "f")
    with pytest.raises(ValueError, match="do not describe the same rows"):
        features({"X": X, "y": np.zeros(2)}, "f")


def _encode_cfg(**overrides: object) -> EncodeConfig:
    augment = {
        "copies": 0,
        "max_shift": 2,
        "max_rotation": 10.0,
        "elastic_alpha": 0.0,
        "elastic_sigma": 4.0,
        "seed": 0,
    }
    raw = {
        "scaling": "standardize",
        "labels": "onehot",
        "deskew": True,
        "augment": augment,
        "workers": 1,
        **overrides,
    }
    return EncodeConfig.from_section(raw, "encode")


@pytest.mark.unit
def test_encode_splits_fits_on_train_and_applies_to_test() -> None:
    x_train, y_train = synthetic_digits(40, seed=1)
    x_test, y_test = synthetic_digits(10, seed=2)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    out = encode_splits(arrays, _encode_cfg(), n_classes=10)
    # statistics of the deskewed training rows, applied to the raw test images
    mean, std = pixel_stats(flatten(deskew(x_train, 1)))
    np.testing.assert_array_equal(out.encoding.mean, mean)
    np.testing.assert_array_equal(out.X_test, out.encoding.apply(x_test))
    np.testing.assert_allclose(out.X_test, (flatten(deskew(x_test, 1)) - mean) / std, atol=1e-5)
    assert out.y_train.shape == (40, 10)
    np.testing.assert_array_equal(out.y_test.argmax(axis=1), y_test)

    cfg = _encode_cfg(
        scaling="divide255",
        deskew=False,
        labels="index",
        augment={**_encode_cfg().augment.as_dict(), "copies": 1},
    )
    assert isinstance(cfg.augment, AugmentConfig)
    more = encode_splits(arrays, cfg, n_classes=10)
    assert more.X_train.shape == (80, 784)  # one augmented copy
    assert more.encoding == Encoding("divide255")
    spec = _spec([c * 64 for c in "abcd"])
    info = encode_info("tiny", spec, cfg, more)
    assert (info["n_train"], info["n_test"], info["augment_copies"]) == (80, 10, 1)
    assert (info["scaling"], info["labels"], info["n_classes"]) == ("divide255", "index", 1)


@pytest.mark.unit
def test_split_validation_holds_out_the_last_training_rows_and_drops_the_test_set() -> None:
    x = np.arange(20 * 28 * 28, dtype=np.uint8).reshape(20, 28, 28)
    y = (np.arange(20) % 10).astype(np.uint8)
    arrays = {"x_train": x, "y_train": y, "x_test": x[:3] * 0, "y_test": y[:3]}
    split = split_holdout(arrays, 5)
    assert split["x_train"].shape == (15, 28, 28)
    assert list(split["y_test"]) == list(y[15:])  # encode_splits' held-out side: validation
    assert (split["x_test"] == x[15:]).all()  # not the real test images
    with pytest.raises(ParamsError, match=r"tune\.holdout_size"):
        split_holdout(arrays, 11)
