"""Parse and write the IDX format of MNIST (pure functions on bytes and arrays).

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions,
then one uint32 per dimension) followed by the data. MNIST uses unsigned bytes (type 0x08):
images have magic 2051 (3 dims), labels magic 2049 (1 dim).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from mnistflow.config import DatasetSpec
from mnistflow.util.errors import UserError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


class IdxError(UserError, ValueError):
    """An IDX file that is malformed or does not match what was expected."""

    exit_code = 3


def gunzip(data: bytes, name: str) -> bytes:
    """Decompress gzip bytes.

    Args:
        data: the compressed bytes.
        name: the file name, used in errors.

    Returns:
        The decompressed bytes.

    Raises:
        IdxError: not gzip, or a truncated/corrupt stream.
    """
    if data[:2] != b"\x1f\x8b":
        head = data[:16]
        raise IdxError(f"{name}: not a gzip file (starts with {head!r})")
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise IdxError(f"{name}: corrupt or truncated gzip data ({exc})") from exc


def parse_idx(data: bytes, name: str, expected_magic: int) -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array.

    Args:
        data: the decompressed file content.
        name: the file name, used in errors.
        expected_magic: IMAGES_MAGIC or LABELS_MAGIC.

    Returns:
        A new array of shape (n, rows, cols) for images or (n,) for labels.

    Raises:
        IdxError: wrong magic, type or dimensions, or a byte count that does not match
            the header (truncated or trailing bytes).
    """
    if len(data) < 4:
        raise IdxError(f"{name}: only {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}.get(expected_magic, "?")
        raise IdxError(
            f"{name}: magic number {magic} (0x{magic:08x}), expected {expected_magic} "
            f"for an IDX {kind} file"
        )
    # The magic encodes the type (0x08, unsigned byte) and the number of dimensions.
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if any(d == 0 for d in shape[1:]):
        raise IdxError(f"{name}: zero-sized dimension in {shape}")
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header
    if actual < expected:
        raise IdxError(
            f"{name}: truncated: header says {shape} = {expected} bytes of data, found {actual}"
        )
    if actual > expected:
        raise IdxError(
            f"{name}: {actual - expected} trailing bytes after the {expected} bytes of data "
            f"the header {shape} describes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def check_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> None:
    """Check that an images array and a labels array describe the same samples.

    Raises:
        IdxError: the counts differ.
    """
    if images.shape[0] != labels.shape[0]:
        raise IdxError(
            f"{images_name} has {images.shape[0]} images but {labels_name} has "
            f"{labels.shape[0]} labels"
        )


def encode_idx(array: np.ndarray) -> bytes:
    """Serialise a uint8 array of 1 or 3 dimensions as IDX bytes (the inverse of parse_idx)."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError("encode_idx takes a uint8 array of 1 (labels) or 3 (images) dimensions")
    magic = LABELS_MAGIC if array.ndim == 1 else IMAGES_MAGIC
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


SPLITS = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


def read_split(raw_dir: Path, spec: DatasetSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate one split's images and labels (errors name the file)."""
    images_role, labels_role = SPLITS[split]
    images_name = getattr(spec.files, images_role).name
    labels_name = getattr(spec.files, labels_role).name
    images_path, labels_path = raw_dir / images_name, raw_dir / labels_name
    images = parse_idx(
        gunzip(images_path.read_bytes(), str(images_path)), str(images_path), IMAGES_MAGIC
    )
    labels = parse_idx(
        gunzip(labels_path.read_bytes(), str(labels_path)), str(labels_path), LABELS_MAGIC
    )
    check_pair(images, labels, str(images_path), str(labels_path))
    n_classes = len(spec.classes)
    if labels.size and int(labels.max()) >= n_classes:
        raise IdxError(
            f"{labels_path}: label {int(labels.max())} out of range for the dataset's "
            f"{n_classes} classes (datasets.<name>.classes)"
        )
    return images, labels
