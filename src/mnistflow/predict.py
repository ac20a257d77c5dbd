"""Classify image files with a logged model: the champion or a given run's.

Images are turned into MNIST digits the way MNIST was made (LeCun et al.): grayscale, white
ink on black, cropped to the ink, scaled to fit 20x20 with the aspect ratio kept, and pasted
into 28x28 so that the centre of mass sits at the centre (pixel (14, 14), as measured on the
MNIST test set). A 28x28 image that already has a dark background is used as is. The pixels
then get the same encode transformation the run was trained with (deskew, scaling), read
from the run's logged params.

Supported files: anything Pillow opens as a single frame in mode 1, L, LA, P, RGB or RGBA
(8 bits per channel). Transparent pixels are composited onto white (how a viewer shows
them). 16-bit, 32-bit, float and CMYK/YCbCr/LAB images and animations are rejected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnistflow.params import MlflowConfig, config, load_params
from mnistflow.registry import MODEL_ARTIFACT, RegistryConfig

log = logging.getLogger(__name__)

SIDE = 28  # MNIST image side
BOX = 20  # the digit's bounding box is scaled to fit BOX x BOX
CENTRE = 14.0  # where MNIST puts the centre of mass (row and column)
SUPPORTED_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
DARK = 128  # a border median below this is a dark background
MIN_CONTRAST = 32  # ink this close to the background (0..255) counts as a blank image
INK_FRACTION = 0.2  # pixels above this fraction of the peak ink define the bounding box
# Per-pixel statistics a run trained with encode.scaling=standardize must log to be usable.
STANDARDIZE_ARTIFACT = "encode/pixel_stats.npz"


class ImageError(ValueError):
    """An input file is not a usable image; the message names the file."""


class PredictError(RuntimeError):
    """The model or its encoding cannot be used for prediction."""


USER_ERRORS = (ImageError, PredictError)  # reported by the CLI without a traceback


@dataclass(frozen=True)
class InputEncoding:
    """How a run turned 28x28 uint8 images into model features (from its logged params)."""

    scaling: str
    deskew: bool
    mean: np.ndarray | None = None  # per-pixel, for scaling == "standardize"
    std: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction:
    """One file's result."""

    path: str
    digit: int
    probability: float


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


def input_encoding(
    params: Mapping[str, str], stats: Mapping[str, np.ndarray] | None, source: str
) -> InputEncoding:
    """The encoding a run used, from its logged (string) params (pure).

    Args:
        params: the run's MLflow params (``encode.scaling``, ``encode.deskew``).
        stats: ``{"mean", "std"}`` per pixel when the run logged them, else None.
        source: the run or model, for error messages.

    Raises:
        PredictError: a param is missing or unknown, or standardize without statistics.
    """
    scaling = params.get("encode.scaling")
    if scaling not in ("divide255", "none", "standardize"):
        raise PredictError(
            f"{source}: logged param encode.scaling is {scaling!r}; cannot encode inputs as "
            "the model was trained"
        )
    deskew_text = params.get("encode.deskew", "False")
    if deskew_text not in ("True", "False", "true", "false"):
        raise PredictError(f"{source}: logged param encode.deskew is {deskew_text!r}")
    if scaling == "standardize":
        if stats is None:
            raise PredictError(
                f"{source} was trained with encode.scaling=standardize, but its per-pixel "
                f"mean/std are not logged (artifact {STANDARDIZE_ARTIFACT}), so new images "
                "cannot be scaled as the training set was; use a run with divide255 or none"
            )
        return InputEncoding(scaling, deskew_text.lower() == "true", stats["mean"], stats["std"])
    return InputEncoding(scaling, deskew_text.lower() == "true")


def encode_images(images: np.ndarray, encoding: InputEncoding) -> np.ndarray:
    """Features from 28x28 uint8 digits, exactly as the encode stage makes them (pure).

    Args:
        images: uint8 (n, 28, 28).
        encoding: the run's encoding.

    Returns:
        float32 (n, 784).
    """
    from mnistflow.augment import deskew
    from mnistflow.encode import flatten, scale

    pixels: np.ndarray = images
    if encoding.deskew:
        pixels = deskew(images, workers=1)
    rows = flatten(pixels)
    if encoding.scaling == "standardize":
        if encoding.mean is None or encoding.std is None:
            raise PredictError("standardize scaling needs the training set's mean and std")
        out = np.subtract(rows, encoding.mean, dtype=np.float32)
        out /= encoding.std
        return out
    # scale() scales its second argument with statistics of the first; both are ours here.
    return scale(rows, rows, encoding.scaling)[1]  # type: ignore[arg-type]


def classify(model: Any, features: np.ndarray) -> list[tuple[int, float]]:
    """``(class, probability)`` per row: the most probable class of ``predict_proba``.

    With one-hot targets sklearn's MLP has ten independent sigmoid outputs; the probability
    is then that output's value (the outputs need not sum to 1).
    """
    proba = np.asarray(model.predict_proba(features))
    best = proba.argmax(axis=1)
    classes = np.asarray(model.classes_)
    return [(int(classes[i]), float(proba[row, i])) for row, i in enumerate(best)]


@contextmanager
def _models_from_own_store() -> Iterator[None]:
    """Allow MLflow to unpickle models while loading one from the project's own store.

    MLflow 3.17 refuses to deserialize any sklearn model unless
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION is true; the models here are the project's own
    runs. An explicit setting in the environment (e.g. "false") is respected.
    """
    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    if key in os.environ:
        yield
        return
    os.environ[key] = "true"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def resolve_model(tracking_uri: str, cfg: RegistryConfig, run_id: str | None) -> tuple[str, str]:
    """The model URI and the run it was logged in: ``run_id``'s model, else the alias's.

    Raises:
        PredictError: the run or the alias does not exist.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if run_id is not None:
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            raise PredictError(f"no MLflow run {run_id} in {tracking_uri}") from exc
        return f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id
    try:
        version = client.get_model_version_by_alias(cfg.model_name, cfg.alias)
    except MlflowException as exc:
        raise PredictError(
            f"no model {cfg.model_name}@{cfg.alias} in {tracking_uri}: register one with "
            "`mnistflow register` (or pass --run RUN_ID)"
        ) from exc
    return f"models:/{cfg.model_name}@{cfg.alias}", version.run_id


def load_run_model(tracking_uri: str, model_uri: str, run_id: str) -> tuple[Any, InputEncoding]:
    """Load a logged sklearn model and the input encoding of the run that trained it."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(run_id)
    stats = None
    if run.data.params.get("encode.scaling") == "standardize":
        stats = _standardize_stats(client, run_id)
    encoding = input_encoding(run.data.params, stats, f"run {run_id}")
    # load_model resolves runs:/ and models:/ URIs against the global tracking/registry URIs.
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        with _models_from_own_store():
            model = mlflow.sklearn.load_model(model_uri)
    except MlflowException as exc:
        raise PredictError(f"cannot load {model_uri}: {exc.message}") from exc
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    log.info(
        "model %s (run %s): %s, encode %s",
        model_uri,
        run_id,
        type(model).__name__,
        encoding.scaling + (" + deskew" if encoding.deskew else ""),
    )
    return model, encoding


def _standardize_stats(client: Any, run_id: str) -> dict[str, np.ndarray] | None:
    """The run's per-pixel mean/std artifact, or None when it has none."""
    from mlflow.exceptions import MlflowException

    folder = str(Path(STANDARDIZE_ARTIFACT).parent)
    names = {a.path for a in client.list_artifacts(run_id, folder)}
    if STANDARDIZE_ARTIFACT not in names:
        return None
    try:
        local = client.download_artifacts(run_id, STANDARDIZE_ARTIFACT)
    except MlflowException as exc:
        raise PredictError(f"run {run_id}: cannot read {STANDARDIZE_ARTIFACT}: {exc}") from exc
    with np.load(local, allow_pickle=False) as data:
        return {"mean": data["mean"].astype(np.float32), "std": data["std"].astype(np.float32)}


def predict_files(model: Any, encoding: InputEncoding, paths: Sequence[Path]) -> list[Prediction]:
    """Classify image files; every file is checked before any prediction.

    Raises:
        ImageError: the first unusable file.
    """
    digits = np.stack([load_digit(p) for p in paths])
    results = classify(model, encode_images(digits, encoding))
    return [Prediction(str(p), d, prob) for p, (d, prob) in zip(paths, results, strict=True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow predict``."""
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument(
        "--run",
        metavar="RUN_ID",
        help="use this MLflow run's model instead of the registered champion",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow predict``: print ``path<TAB>digit<TAB>probability`` per image."""
    from mnistflow import tracking

    params = load_params(args.params)
    mlflow_cfg = config(params, "mlflow", MlflowConfig)
    cfg = config(params, "registry", RegistryConfig)
    # Images first: a typo in a file name should not wait for the model to load.
    for path in args.images:
        read_grayscale(path)
    uri = tracking.resolve_tracking_uri(mlflow_cfg, Path.cwd())
    model_uri, run_id = resolve_model(uri, cfg, args.run)
    model, encoding = load_run_model(uri, model_uri, run_id)
    for result in predict_files(model, encoding, args.images):
        sys.stdout.write(f"{result.path}\t{result.digit}\t{result.probability:.4f}\n")
    return 0
