"""Classify images with a logged model: the champion or a given run's.

Images become MNIST digits (:mod:`mnistflow.data.preprocess`), then go through the run's
fitted :class:`~mnistflow.data.encode.Encoding` (artifact ``encode/stats.npz``, logged by
train from the encode stage's output), exactly as the test set did.
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

from mnistflow.data.encode import SCALINGS, Encoding
from mnistflow.data.preprocess import load_digit
from mnistflow.tracking.artifacts import ENCODING_ARTIFACT
from mnistflow.tracking.registry import MODEL_ARTIFACT, RegistryConfig
from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)


class PredictError(UserError):
    """The model or its encoding cannot be used for prediction."""


@dataclass(frozen=True)
class Prediction:
    """One file's result."""

    path: str
    digit: int
    probability: float


def encoding_from_params(params: Mapping[str, str], source: str) -> Encoding:
    """The encoding of a run that logged no encoding artifact (runs from before it existed),
    from its logged (string) params; ``source`` names the run in errors (pure).

    Raises:
        PredictError: a param is missing or unknown, or standardize (its statistics were
            never logged).
    """
    scaling = params.get("encode.scaling")
    if scaling not in SCALINGS:
        raise PredictError(
            f"{source}: logged param encode.scaling is {scaling!r}; cannot encode inputs as "
            "the model was trained"
        )
    deskew_text = params.get("encode.deskew", "False")
    if deskew_text not in ("True", "False", "true", "false"):
        raise PredictError(f"{source}: logged param encode.deskew is {deskew_text!r}")
    if scaling == "standardize":
        raise PredictError(
            f"{source} was trained with encode.scaling=standardize, but its per-pixel "
            f"mean/std are not logged (artifact {ENCODING_ARTIFACT}), so new images cannot be "
            "scaled as the training set was: retrain it (dvc repro), or use a run with "
            "divide255 or none"
        )
    return Encoding(scaling, deskew_text.lower() == "true")  # type: ignore[arg-type]


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


def load_run_model(tracking_uri: str, model_uri: str, run_id: str) -> tuple[Any, Encoding]:
    """Load a logged sklearn model and the input encoding of the run that trained it."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    encoding = run_encoding(client, run_id)
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
        encoding.describe(),
    )
    return model, encoding


def run_encoding(client: Any, run_id: str) -> Encoding:
    """The run's fitted encoding: its ``ENCODING_ARTIFACT``, else (older runs) its params.

    Raises:
        PredictError: the artifact cannot be read, or the params do not describe a usable
            encoding.
    """
    from mlflow.exceptions import MlflowException

    folder = str(Path(ENCODING_ARTIFACT).parent)
    source = f"run {run_id}"
    if ENCODING_ARTIFACT not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return encoding_from_params(client.get_run(run_id).data.params, source)
    try:
        local = client.download_artifacts(run_id, ENCODING_ARTIFACT)
        with np.load(local, allow_pickle=False) as data:
            return Encoding.from_arrays({k: data[k] for k in data.files}, source)
    except (MlflowException, OSError, ValueError) as exc:
        raise PredictError(f"{source}: cannot read {ENCODING_ARTIFACT}: {exc}") from exc


def predict_files(model: Any, encoding: Encoding, paths: Sequence[Path]) -> list[Prediction]:
    """Classify image files; every file is checked before any prediction.

    Raises:
        ImageError: the first unusable file.
    """
    digits = np.stack([load_digit(p) for p in paths])
    results = classify(model, encoding.apply(digits))
    return [Prediction(str(p), d, prob) for p, (d, prob) in zip(paths, results, strict=True)]
