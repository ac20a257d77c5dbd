"""The labelled table and the PNG tree people browse: ``<split>/<label>/<index:05d>.png``."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Images per task sent to a worker process: large enough to amortise pickling, small
# enough for a smooth progress bar and an even split over the workers.
PNG_CHUNK = 1000


def png_relpath(split: str, label: int, index: int) -> Path:
    """Where image ``index`` of ``split`` with ``label`` lives, relative to the tree root."""
    return Path(split) / str(int(label)) / f"{index:05d}.png"


def pixel_columns(n_pixels: int) -> list[str]:
    """``px0``..``px<n-1>``: the pixel columns of the table (and of the served model's input)."""
    return [f"px{i}" for i in range(n_pixels)]


def labelled_table(splits: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per image: split, index (position within its split), label, px0..px783.

    Args:
        splits: ``{split: (images uint8 (n, rows, cols), labels uint8 (n,))}`` in row order.

    Returns:
        A new DataFrame; pixel columns are uint8, in row-major order.
    """
    import pandas as pd  # here: a tuning trial's evaluate imports this module, not pandas

    pixels = np.concatenate([x.reshape(len(x), -1) for x, _ in splits.values()])
    n_pixels = pixels.shape[1]
    meta = pd.DataFrame(
        {
            "split": np.concatenate(
                [np.full(len(y), name, dtype=object) for name, (_, y) in splits.items()]
            ),
            "index": np.concatenate(
                [np.arange(len(y), dtype=np.int64) for _, y in splits.values()]
            ),
            "label": np.concatenate([y for _, y in splits.values()]).astype(np.uint8),
        }
    )
    px = pd.DataFrame(pixels, columns=pixel_columns(n_pixels), copy=False)
    return pd.concat([meta, px], axis=1)


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Content hash of named arrays (names, dtypes, shapes and bytes, in sorted name order)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()


def class_counts(labels: np.ndarray, n_classes: int) -> dict[str, int]:
    """``{"0": count, ...}`` for every class 0..n_classes-1 (zeros included)."""
    counts = np.bincount(labels, minlength=n_classes)
    return {str(k): int(c) for k, c in enumerate(counts)}


def _write_chunk(root: str, split: str, start: int, images: np.ndarray, labels: np.ndarray) -> int:
    """Worker: write one chunk of images as PNGs; return how many were written."""
    # Plain string paths: pathlib costs ~15% of the time per 28x28 image here.
    for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = f"{root}/{split}/{int(label)}/{start + offset:05d}.png"  # = png_relpath(...)
        Image.fromarray(image).save(path, "PNG")
    return len(images)


def _chunks(
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    for split, (images, labels) in splits.items():
        for start in range(0, len(images), PNG_CHUNK):
            stop = start + PNG_CHUNK
            yield split, start, images[start:stop], labels[start:stop]


def write_png_tree(
    images_dir: Path, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], workers: int
) -> int:
    """Write every image as ``images_dir/<split>/<label>/<index:05d>.png``.

    The tree is built in a temporary sibling folder and swapped in at the end, so
    ``images_dir`` is either the complete old tree or the complete new one, never a mix.

    Args:
        images_dir: the tree's root (replaced if it exists).
        splits: ``{split: (images uint8 (n, rows, cols), labels (n,))}``.
        workers: processes writing PNGs (1 = in this process).

    Returns:
        The number of PNG files written.
    """
    images_dir = Path(images_dir)
    images_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=images_dir.parent, prefix=f".{images_dir.name}.new-"))
    total = sum(len(x) for x, _ in splits.values())
    try:
        # Create every folder up front so the workers never race on mkdir.
        for split, (_, labels) in splits.items():
            for label in np.unique(labels):
                (tmp / split / str(int(label))).mkdir(parents=True)
        with tqdm(total=total, desc="PNG", unit="img", disable=None) as bar:
            if workers == 1:
                for split, start, images, labels in _chunks(splits):
                    bar.update(_write_chunk(str(tmp), split, start, images, labels))
            else:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    futures = [
                        pool.submit(_write_chunk, str(tmp), split, start, images, labels)
                        for split, start, images, labels in _chunks(splits)
                    ]
                    try:
                        for future in futures:
                            bar.update(future.result())
                    except BaseException:
                        # stop queued chunks instead of finishing a tree about to be deleted
                        pool.shutdown(cancel_futures=True)
                        raise
        _swap_in(tmp, images_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return total


def _swap_in(new: Path, target: Path) -> None:
    """Replace the folder ``target`` by ``new`` (two renames; the old tree is then deleted)."""
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        old.rmdir()
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)
    log.info("PNG tree written to %s", target)


def remove_png_tree(images_dir: Path) -> None:
    """Delete a PNG tree left from an earlier run (when PNGs are switched off)."""
    if Path(images_dir).exists():
        shutil.rmtree(images_dir)
        log.info("removed the old PNG tree %s (unpack.write_png is false)", images_dir)


def split_arrays(splits: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{"x_train", "y_train", "x_test", "y_test"}`` from ``{split: (images, labels)}``."""
    out = {}
    for split, (images, labels) in splits.items():
        out[f"x_{split}"], out[f"y_{split}"] = images, labels
    return out


def images_manifest(
    dataset: str,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    images_dir: str,
    png_written: bool,
) -> dict:
    """The small DVC output standing in for the PNG tree: counts per split and class, and the
    content hash of the arrays the tree was drawn from."""
    return {
        "dataset": dataset,
        "counts": {split: len(labels) for split, (_, labels) in splits.items()},
        "class_counts": {
            split: class_counts(labels, n_classes) for split, (_, labels) in splits.items()
        },
        "arrays_sha256": arrays_sha256(split_arrays(splits)),
        "images_dir": images_dir,
        "png_written": png_written,
    }
