"""User images to MNIST digits, the way MNIST was made (LeCun et al.).

Grayscale, white ink on black, cropped to the ink, scaled to fit 20x20 with the aspect ratio
kept, and pasted into 28x28 so that the centre of mass sits at the centre (pixel (14, 14), as
measured on the MNIST test set). A 28x28 image that already has a dark background is used as
is.

Supported files: anything Pillow opens as a single frame in mode 1, L, LA, P, RGB or RGBA
(8 bits per channel). Transparent pixels are composited onto white (how a viewer shows
them). 16-bit, 32-bit, float and CMYK/YCbCr/LAB images and animations are rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnistflow.util.errors import UserError

SIDE = 28  # MNIST image side
BOX = 20  # the digit's bounding box is scaled to fit BOX x BOX
CENTRE = 14.0  # where MNIST puts the centre of mass (row and column)
SUPPORTED_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
DARK = 128  # a border median below this is a dark background
MIN_CONTRAST = 32  # ink this close to the background (0..255) counts as a blank image
INK_FRACTION = 0.2  # pixels above this fraction of the peak ink define the bounding box


class ImageError(UserError, ValueError):
    """An input file is not a usable image; the message names the file."""


def read_grayscale(path: Path) -> np.ndarray:
    """Open an image file and return its luminance as a uint8 (h, w) array.

    Raises:
        ImageError: missing file, not an image, several frames, or an unsupported mode.
    """
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ImageError(
                    f"{path}: has {frames} frames (an animation?); give a single still image"
                )
            if img.mode not in SUPPORTED_MODES:
                raise ImageError(
                    f"{path}: unsupported image mode {img.mode!r}; supported are 8-bit "
                    f"{', '.join(SUPPORTED_MODES)} (save it as 8-bit grayscale or RGB PNG)"
                )
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode in ("LA", "RGBA"):
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, img.convert("RGBA"))
            gray = img.convert("L")
            return np.asarray(gray, dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory, not an image file") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image file (Pillow cannot identify it)") from exc
    except (OSError, SyntaxError) as exc:  # Pillow reports truncated/corrupt data so
        raise ImageError(f"{path}: unreadable image data: {exc}") from exc


def border_median(gray: np.ndarray) -> float:
    """Median of the outermost ring of pixels: the background level."""
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.median(ring))


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Turn a grayscale image into a 28x28 MNIST-style digit (pure).

    Args:
        gray: uint8 (h, w) luminance, any size, dark or light background.

    Returns:
        A new uint8 (28, 28) array: white ink on black, the ink scaled to fit 20x20 and its
        centre of mass at (14, 14). A 28x28 input on a dark background is returned unchanged.

    Raises:
        ValueError: not a 2-D image, or no ink distinguishable from the background.
    """
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"expected a 2-D image of at least 2x2 pixels; got shape {gray.shape}")
    background = border_median(gray)
    light = background >= DARK
    if gray.shape == (SIDE, SIDE) and not light:
        return gray.astype(np.uint8, copy=True)

    values = gray.astype(np.float32)
    ink = (255.0 - values) - (255.0 - background) if light else values - background
    np.clip(ink, 0.0, None, out=ink)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ValueError("no digit found: the image has no ink that stands out of its background")
    ink *= 255.0 / peak  # stretch: background 0, strongest ink 255, as in MNIST

    rows = np.flatnonzero((ink > INK_FRACTION * 255).any(axis=1))
    cols = np.flatnonzero((ink > INK_FRACTION * 255).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow wants (w, h)
    small = Image.fromarray(np.rint(crop).astype(np.uint8), mode="L").resize(
        size, Image.Resampling.LANCZOS
    )
    digit = np.asarray(small, dtype=np.float64)

    mass = digit.sum()
    r, c = np.mgrid[: digit.shape[0], : digit.shape[1]]
    com_r = (digit * r).sum() / mass if mass > 0 else (digit.shape[0] - 1) / 2
    com_c = (digit * c).sum() / mass if mass > 0 else (digit.shape[1] - 1) / 2
    # Whole-pixel shift (no second resampling), kept inside the frame.
    top = int(np.clip(round(CENTRE - com_r), 0, SIDE - digit.shape[0]))
    left = int(np.clip(round(CENTRE - com_c), 0, SIDE - digit.shape[1]))
    out = np.zeros((SIDE, SIDE), dtype=np.uint8)
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit.astype(np.uint8)
    return out


def load_digit(path: Path) -> np.ndarray:
    """Read an image file and convert it to a 28x28 MNIST digit.

    Raises:
        ImageError: the file is not a usable image (the message names it).
    """
    gray = read_grayscale(path)
    try:
        return to_mnist(gray)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from exc
