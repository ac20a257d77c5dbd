"""Atomic file writes: a reader never sees a half-written output."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the output the usual permissions (0666 minus the umask)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)
    try:
        yield tmp_path
        tmp_path.replace(target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``target`` atomically; return target."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def write_bytes(target: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    return write_atomic(target, lambda p: p.write_bytes(data))


def write_text(target: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(target: str | Path, obj: Any, sort_keys: bool = True) -> Path:
    """Write JSON (indented, keys sorted unless ``sort_keys`` is false, trailing newline)
    atomically."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npz(target: str | Path, **arrays: np.ndarray) -> Path:
    """Save arrays uncompressed to ``.npz`` atomically (fast to load, reproducible bytes)."""

    def _write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)

    return write_atomic(target, _write)


def load_npz(path: str | Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Load the arrays ``names`` (default: every array) of an ``.npz`` file into memory."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in (data.files if names is None else names)}
