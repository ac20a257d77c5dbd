"""Atomic writes leave either the old file or the complete new one, never a partial one."""

from __future__ import annotations

import numpy as np
import pytest

from mnistflow.util.fileio import atomic_path, load_npz, read_json, save_npz, write_json

pytestmark = pytest.mark.unit


def test_failed_write_leaves_old_content_and_no_temp_file(tmp_path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})

    def crash_mid_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        crash_mid_write()
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_npz_round_trip_and_parent_created(tmp_path) -> None:
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = save_npz(tmp_path / "deep" / "a.npz", x=x, y=x.astype(np.float32))
    loaded = load_npz(path)
    np.testing.assert_array_equal(loaded["x"], x)
    assert loaded["y"].dtype == np.float32


def test_npz_bytes_are_reproducible(tmp_path) -> None:
    x = np.random.default_rng(0).random((5, 5), dtype=np.float32)
    a = save_npz(tmp_path / "a.npz", x=x).read_bytes()
    b = save_npz(tmp_path / "b.npz", x=x).read_bytes()
    assert a == b


def test_load_npz_only_the_named_arrays(tmp_path) -> None:
    path = save_npz(tmp_path / "a.npz", x=np.zeros(2), y=np.ones(3))
    assert list(load_npz(path, ["y"])) == ["y"]
    assert sorted(load_npz(path)) == ["x", "y"]
