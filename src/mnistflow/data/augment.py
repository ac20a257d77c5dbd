"""Deskewing and seeded augmentation of digit images (pure numpy).

Both functions resample each image once with :func:`bilinear` (linear interpolation, zeros
outside the image, the semantics of ``scipy.ndimage.map_coordinates(order=1,
mode="constant")``): every output pixel gets a source coordinate, so shift, rotation and
elastic distortion are composed into a single resampling and the image is blurred only once.
The work is whole-chunk array arithmetic in float32 (the gaussian smoothing of the elastic
field is two small matrix products), so an epoch of fresh distortions costs less than an
epoch of training. Chunks run on a process pool; the random numbers of a chunk come from its
own child of ``SeedSequence(seed)``, and chunk boundaries do not depend on the number of
workers, so the result is identical for any ``workers``.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from tqdm import tqdm

from mnistflow.config import AugmentConfig

log = logging.getLogger(__name__)

# Images per task. Fixed (not derived from the worker count) because it decides which
# random stream each augmented image draws from; changing it changes the augmented data.
CHUNK = 2000
PIXEL_MAX = 255.0


def _check_images(images: np.ndarray, name: str) -> None:
    """Raise ValueError unless ``images`` is a non-empty (n, rows, cols) numeric array."""
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"{name}: expected images of shape (n, rows, cols); got {images.shape}")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ValueError(f"{name}: expected a numeric array; got dtype {images.dtype}")


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}")


def bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample each image at its own source coordinates, linearly, as float32.

    A coordinate outside ``[0, h - 1] x [0, w - 1]`` gives 0, as
    ``scipy.ndimage.map_coordinates(order=1, mode="constant", cval=0)`` does (the tests
    compare the two); whole-chunk array arithmetic instead of one call per image.

    Args:
        images: (m, h, w) stack, h and w at least 2.
        rows, cols: (m, h, w) source row/column of every output pixel (float32 or float64).

    Returns:
        A new float32 (m, h, w) array; within the input's range, as linear interpolation is.
    """
    m, h, w = images.shape
    flat = np.ascontiguousarray(images, dtype=np.float32).reshape(-1)
    inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
    fr = np.clip(rows, 0, h - 1, dtype=np.float32)
    fc = np.clip(cols, 0, w - 1, dtype=np.float32)
    # The top-left neighbour; on the last row/column it moves in by one, with weight 1 on
    # the far side, so the four neighbours are always inside the image.
    r0 = np.minimum(np.floor(fr), h - 2)
    c0 = np.minimum(np.floor(fc), w - 2)
    fr -= r0  # the weights of the bottom row and the right column
    fc -= c0
    r0 *= w
    r0 += c0
    index = r0.astype(np.int32)
    index += (np.arange(m, dtype=np.int32) * (h * w))[:, None, None]
    top = flat[index]
    top += fc * (flat[index + 1] - top)
    bottom = flat[index + w]
    bottom += fc * (flat[index + (w + 1)] - bottom)
    bottom -= top
    bottom *= fr
    top += bottom
    top *= inside
    return top


@functools.lru_cache(maxsize=16)
def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float32 matrix ``G`` with ``G @ v`` = ``scipy.ndimage.gaussian_filter1d(v,
    sigma, mode="constant")`` (kernel truncated at 4 sigma, zeros beyond the edges)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]
    near = np.abs(offset) <= radius
    matrix = np.where(near, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0).astype(np.float32)
    matrix.flags.writeable = False  # cached and shared: nobody may change it
    return matrix


def smooth(fields: np.ndarray, sigma: float) -> np.ndarray:
    """Each (h, w) field of ``fields`` (k, h, w) smoothed by a 2-D gaussian of ``sigma``
    pixels with zeros beyond the edges, as float32: ``G_h @ field @ G_w.T``."""
    k, h, w = fields.shape
    along_cols = (
        fields.astype(np.float32, copy=False).reshape(k * h, w) @ gaussian_matrix(w, sigma).T
    )
    return np.matmul(gaussian_matrix(h, sigma), along_cols.reshape(k, h, w))


def _resample(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """:func:`bilinear`, clipped to [0, 255] (the clip only guards rounding)."""
    return np.clip(bilinear(images, rows, cols), 0.0, PIXEL_MAX)


def skew_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre of mass and skew of each image from its intensity moments.

    Args:
        images: (n, h, w) non-negative intensities.

    Returns:
        ``(centre_row, centre_col, skew)``, each (n,) float64, where
        ``skew = cov(col, row) / var(row)``: columns drift by ``skew`` per row. Blank images
        get the geometric centre and skew 0; images with zero row variance get skew 0.
    """
    n, h, w = images.shape
    flat = images.reshape(n, h * w).astype(np.float64)
    r, c = np.mgrid[:h, :w]
    r = r.ravel().astype(np.float64)
    c = c.ravel().astype(np.float64)
    mass = flat.sum(axis=1)
    blank = mass <= 0
    safe = np.where(blank, 1.0, mass)
    mr = np.where(blank, (h - 1) / 2, flat @ r / safe)
    mc = np.where(blank, (w - 1) / 2, flat @ c / safe)
    dr = r[None, :] - mr[:, None]
    dc = c[None, :] - mc[:, None]
    var_r = (flat * dr * dr).sum(axis=1) / safe
    cov_rc = (flat * dr * dc).sum(axis=1) / safe
    skew = np.where(var_r > 1e-12, cov_rc / np.where(var_r > 1e-12, var_r, 1.0), 0.0)
    return mr, mc, np.where(blank, 0.0, skew)


def _deskew_chunk(images: np.ndarray) -> np.ndarray:
    """Deskew one chunk (see :func:`deskew`)."""
    _, h, w = images.shape
    mr, mc, skew = skew_moments(images)
    r, c = np.mgrid[:h, :w].astype(np.float64)
    r = r - (h - 1) / 2
    c = c - (w - 1) / 2
    # Output pixel (r, c) relative to the image centre reads the input at
    # (centre_row + r, centre_col + c + skew * r): the shear that removes the slant,
    # with the centre of mass moved to the image centre.
    rows = mr[:, None, None] + r[None]
    cols = mc[:, None, None] + c[None] + skew[:, None, None] * r[None]
    return _resample(images, rows, cols)


def deskew(images: np.ndarray, workers: int) -> np.ndarray:
    """Straighten each image by its second-order moments and centre its mass.

    Each image is sheared horizontally so that ``cov(col, row) / var(row)`` becomes 0 and
    translated so its centre of mass lands on the image centre (linear interpolation).

    Args:
        images: (n, h, w) intensities in [0, 255], any numeric dtype; not modified.
        workers: processes to use (1 = in this process).

    Returns:
        A new float32 (n, h, w) array in [0, 255].
    """
    _check_images(images, "deskew")
    _check_workers(workers)
    out = np.empty(images.shape, dtype=np.float32)
    tasks = ((start, images[start : start + CHUNK]) for start in range(0, len(images), CHUNK))
    for start, chunk in _run(_deskew_task, tasks, len(images), workers, "deskew"):
        out[start : start + len(chunk)] = chunk
    return out


def _deskew_task(task: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    start, images = task
    return start, _deskew_chunk(images)


def distort(images: np.ndarray, cfg: AugmentConfig, seed: np.random.SeedSequence) -> np.ndarray:
    """One distorted copy of each image in ``images`` (float32), drawn from ``seed``'s
    stream: what every chunk of :func:`augment` and :func:`epoch_batch` computes."""
    rng = np.random.default_rng(seed)
    m, h, w = images.shape
    shift = rng.integers(-cfg.max_shift, cfg.max_shift + 1, size=(2, m, 1, 1)).astype(np.float32)
    angle = np.deg2rad(rng.uniform(-cfg.max_rotation, cfg.max_rotation, size=(m, 1, 1)))
    r, c = np.mgrid[:h, :w].astype(np.float32)
    r -= (h - 1) / 2
    c -= (w - 1) / 2
    if cfg.elastic_alpha > 0:
        # Simard et al. (2003): a per-pixel uniform(-1, 1) displacement field, smoothed by a
        # gaussian (sigma in pixels, images kept separate) and scaled by alpha.
        field = smooth(rng.uniform(-1.0, 1.0, size=(2 * m, h, w)), cfg.elastic_sigma)
        field *= np.float32(cfg.elastic_alpha)
        field = field.reshape(2, m, h, w)
        r = field[0] + r
        c = field[1] + c
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    return _resample(images, *source_coordinates(r, c, cos, sin, shift[0], shift[1], (h, w)))


def source_coordinates(
    r: np.ndarray,
    c: np.ndarray,
    cos: np.ndarray | float,
    sin: np.ndarray | float,
    shift_rows: np.ndarray | float,
    shift_cols: np.ndarray | float,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel of an (h, w) image reads its input, for :func:`bilinear`.

    ``r``, ``c``: the output pixels relative to the image centre (distorted or scaled, if
    need be); each is rotated by the angle of ``cos``/``sin``, then the shift is undone: an
    image moved by +shift reads its input at p - shift. All arguments broadcast together.
    """
    h, w = shape
    rows = cos * r - sin * c + ((h - 1) / 2 - shift_rows)
    cols = sin * r + cos * c + ((w - 1) / 2 - shift_cols)
    return rows, cols


def _augment_task(
    task: tuple[int, np.ndarray, AugmentConfig, np.random.SeedSequence],
) -> tuple[int, np.ndarray]:
    start, images, cfg, seed = task
    return start, distort(images, cfg, seed)


def augment(
    images: np.ndarray, labels: np.ndarray, cfg: AugmentConfig, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training images followed by ``cfg.copies`` randomly transformed copies.

    Each copy applies to every image an integer shift in ``[-max_shift, max_shift]`` pixels
    on each axis, a rotation in ``[-max_rotation, max_rotation]`` degrees about the centre
    and, when ``elastic_alpha > 0``, an elastic distortion; all in one linear resampling.
    The random numbers come from ``SeedSequence(cfg.seed)``, one child per chunk of
    ``CHUNK`` augmented images, so the result depends on the seed only (not on ``workers``).

    Args:
        images: (n, h, w) intensities in [0, 255], any numeric dtype; not modified.
        labels: (n,) labels of ``images``.
        cfg: the ``encode.augment`` settings.
        workers: processes to use (1 = in this process).

    Returns:
        ``(x, y)``: float32 (n * (1 + copies), h, w) in [0, 255], originals first, and the
        labels tiled to match (``y[k * n + i] == labels[i]``).
    """
    _check_images(images, "augment")
    _check_workers(workers)
    if labels.shape != (len(images),):
        raise ValueError(
            f"augment: {len(images)} images but labels of shape {labels.shape}; "
            "expected one label per image"
        )
    n = len(images)
    total = n * (1 + cfg.copies)
    # The only full-size allocation: originals and copies are written into it in place.
    x = np.empty((total, *images.shape[1:]), dtype=np.float32)
    x[:n] = images
    y = np.tile(labels, 1 + cfg.copies)
    if cfg.copies == 0:
        return x, y
    starts = range(0, n * cfg.copies, CHUNK)
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(starts))

    def tasks() -> Iterator[tuple[int, np.ndarray, AugmentConfig, np.random.SeedSequence]]:
        for start, seed in zip(starts, seeds, strict=True):
            stop = min(start + CHUNK, n * cfg.copies)
            # Augmented image j is a copy of original j % n.
            yield start, images[np.arange(start, stop) % n], cfg, seed

    log.info(
        "augmenting %d images x %d copies (shift %d px, rotation %.1f deg, elastic alpha %.1f "
        "sigma %.1f, seed %d) on %d workers",
        n,
        cfg.copies,
        cfg.max_shift,
        cfg.max_rotation,
        cfg.elastic_alpha,
        cfg.elastic_sigma,
        cfg.seed,
        workers,
    )
    for start, chunk in _run(_augment_task, tasks(), n * cfg.copies, workers, "augment"):
        x[n + start : n + start + len(chunk)] = chunk
    return x, y


def epoch_seeds(seed: int, epoch: int, n: int) -> list[np.random.SeedSequence]:
    """The random streams of online epoch ``epoch`` (1-based) over ``n`` images, one per
    chunk of ``CHUNK``: chunk ``j`` draws from ``SeedSequence(seed, spawn_key=(epoch, j))``.

    Two-element spawn keys never meet the one-element keys of :func:`augment`'s copies, and
    every (seed, epoch) pair has streams of its own (no hashing of seed and epoch together).
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"epoch must be a positive integer; got {epoch!r}")
    return np.random.SeedSequence(seed, spawn_key=(epoch,)).spawn(-(-n // CHUNK))


def epoch_chunks(
    images: np.ndarray, epoch: int, cfg: AugmentConfig
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, distorted images[start:start + CHUNK])`` of online epoch ``epoch``, in order
    (see :func:`epoch_batch`); lets a caller write each chunk where it wants it."""
    _check_images(images, "epoch_batch")
    for j, seed in enumerate(epoch_seeds(cfg.seed, epoch, len(images))):
        start = j * CHUNK
        yield start, distort(images[start : start + CHUNK], cfg, seed)


def epoch_batch(
    base_images: np.ndarray, labels: np.ndarray, epoch: int, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One freshly distorted copy of every base image for online epoch ``epoch`` (1-based).

    The distortions are :func:`augment`'s (shift, rotation, elastic; ``cfg.copies`` is not
    used), drawn from :func:`epoch_seeds`: the same epoch gives the same batch, bit for bit,
    and different epochs differ.

    Args:
        base_images: (n, h, w) intensities in [0, 255], any numeric dtype; not modified.
        labels: (n,) labels (or (n, k) one-hot targets) of ``base_images``.
        epoch: the 1-based epoch.
        cfg: the ``encode.augment`` settings.

    Returns:
        ``(x, y)``: float32 (n, h, w) in [0, 255], image ``i`` a distortion of base image
        ``i``, and ``labels`` unchanged (``y[i] == labels[i]``).
    """
    _check_images(base_images, "epoch_batch")
    if len(labels) != len(base_images):
        raise ValueError(
            f"epoch_batch: {len(base_images)} images but {len(labels)} labels; "
            "expected one label per image"
        )
    x = np.empty(base_images.shape, dtype=np.float32)
    for start, chunk in epoch_chunks(base_images, epoch, cfg):
        x[start : start + len(chunk)] = chunk
    return x, labels


def _run(
    fn: Callable[[Any], tuple[int, np.ndarray]],
    tasks: Iterator[Any],
    total: int,
    workers: int,
    desc: str,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``fn(task)`` for each task, in a pool of ``workers`` processes, with a progress bar.

    Tasks are submitted lazily (at most ``2 * workers`` in flight), so only a few chunks
    exist at a time outside the caller's preallocated output.
    """
    with tqdm(total=total, desc=desc, unit="img", leave=False, disable=None) as bar:
        if workers == 1:
            for task in tasks:
                result = fn(task)
                bar.update(len(result[1]))
                yield result
            return
        # fork: workers start instantly and need no re-import; the tasks carry their data.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = []
            for task in tasks:
                pending.append(pool.submit(fn, task))
                if len(pending) >= 2 * workers:
                    result = pending.pop(0).result()
                    bar.update(len(result[1]))
                    yield result
            for future in pending:
                result = future.result()
                bar.update(len(result[1]))
                yield result
