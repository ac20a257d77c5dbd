"""Classify images with a logged model: the champion or a given run's.

Images become MNIST digits (:mod:`mnistflow.data.preprocess`), then get the same encode
transformation the run was trained with (deskew, scaling), read from the run's logged params.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistflow.data.preprocess import load_digit
from mnistflow.tracking.registry import MODEL_ARTIFACT, RegistryConfig
from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)

# Per-pixel statistics a run trained with encode.scaling=standardize must log to be usable.
STANDARDIZE_ARTIFACT = "encode/pixel_stats.npz"


class PredictError(UserError):
    """The model or its encoding cannot be used for prediction."""


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
    from mnistflow.data.augment import deskew
    from mnistflow.data.encode import flatten, scale

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
