"""IDX parsing and validation on tiny files made here."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from mnistflow.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    IdxError,
    check_pair,
    encode_idx,
    gunzip,
    parse_idx,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([7, 0, 9], dtype=np.uint8)


def test_round_trip_through_gzip(images: np.ndarray, labels: np.ndarray) -> None:
    for array, magic in ((images, IMAGES_MAGIC), (labels, LABELS_MAGIC)):
        data = gzip.compress(encode_idx(array))
        parsed = parse_idx(gunzip(data, "f.gz"), "f.gz", magic)
        assert parsed.dtype == np.uint8
        np.testing.assert_array_equal(parsed, array)
    check_pair(images, labels, "i.gz", "l.gz")  # same count: no error


def test_header_layout_is_big_endian(images: np.ndarray) -> None:
    raw = encode_idx(images)
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", raw[4:16]) == (3, 4, 5)


def test_wrong_magic_names_file(labels: np.ndarray) -> None:
    with pytest.raises(IdxError, match=r"labels\.idx: magic number 2049.*expected 2051"):
        parse_idx(encode_idx(labels), "labels.idx", IMAGES_MAGIC)


def test_truncated_data(images: np.ndarray) -> None:
    raw = encode_idx(images)[:-7]
    with pytest.raises(IdxError, match=r"x\.idx: truncated.*60 bytes of data, found 53"):
        parse_idx(raw, "x.idx", IMAGES_MAGIC)


def test_truncated_header(images: np.ndarray) -> None:
    with pytest.raises(IdxError, match=r"x\.idx: truncated header"):
        parse_idx(encode_idx(images)[:10], "x.idx", IMAGES_MAGIC)


def test_too_short_for_header() -> None:
    with pytest.raises(IdxError, match=r"x\.idx: only 2 bytes"):
        parse_idx(b"\x00\x00", "x.idx", LABELS_MAGIC)


def test_trailing_bytes(labels: np.ndarray) -> None:
    with pytest.raises(IdxError, match=r"y\.idx: 2 trailing bytes"):
        parse_idx(encode_idx(labels) + b"\x00\x00", "y.idx", LABELS_MAGIC)


def test_count_mismatch_between_images_and_labels(images: np.ndarray) -> None:
    with pytest.raises(IdxError, match=r"i\.gz has 3 images but l\.gz has 2 labels"):
        check_pair(images, np.zeros(2, np.uint8), "i.gz", "l.gz")


def test_not_gzip() -> None:
    with pytest.raises(IdxError, match=r"page\.gz: not a gzip file.*<html>"):
        gunzip(b"<html><body>Not Found</body></html>", "page.gz")


def test_truncated_gzip(images: np.ndarray) -> None:
    data = gzip.compress(encode_idx(images))
    with pytest.raises(IdxError, match=r"cut\.gz: corrupt or truncated gzip"):
        gunzip(data[: len(data) // 2], "cut.gz")


def test_encode_idx_rejects_other_dtypes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_idx(np.zeros((2, 2), np.uint8))
