"""Classify images with a logged model: the champion or a given run's.

Images become MNIST digits (:mod:`mnistflow.data.preprocess`), then go to the run's logged
model (:mod:`mnistflow.serving.logged_model`), the one ``mnistflow serve`` serves: it applies the
run's own encoding and answers the argmax digit, as evaluate's headline does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistflow.data.preprocess import load_digit
from mnistflow.serving import logged_model
from mnistflow.serving.inputs import DIGIT_COLUMN, probability_columns
from mnistflow.serving.registry import RegistryConfig
from mnistflow.tracking.artifacts import DATASET_TAG, MODEL_ARTIFACT
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


def resolve_model(
    tracking_uri: str, cfg: RegistryConfig, run_id: str | None, dataset: str
) -> tuple[str, str]:
    """The model URI and the run it was logged in: ``run_id``'s model, else the alias's of
    ``dataset``'s registered model. The run must be of ``dataset`` (params.yaml's).

    Raises:
        PredictError: the run or the alias does not exist, or the run is of another dataset.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if run_id is not None:
        uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    else:
        name = cfg.model_for(dataset)
        try:
            run_id = client.get_model_version_by_alias(name, cfg.alias).run_id
        except MlflowException as exc:
            raise PredictError(
                f"no model {name}@{cfg.alias} in {tracking_uri}: register one with "
                "`mnistflow register` (or pass --run RUN_ID)"
            ) from exc
        uri = f"models:/{name}@{cfg.alias}"
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise PredictError(f"no MLflow run {run_id} in {tracking_uri}") from exc
    trained_on = run.data.tags.get(DATASET_TAG, "an unknown dataset")
    if trained_on != dataset:
        raise PredictError(
            f"{uri} (run {run_id}) was trained on {trained_on}, but params.yaml's "
            f"data.dataset is {dataset}: use a run of {dataset}, or set data.dataset"
        )
    return uri, run_id


def load_run_model(tracking_uri: str, model_uri: str) -> Any:
    """Load a run's logged model (:mod:`mnistflow.serving.logged_model`) as MLflow pyfunc.

    Raises:
        PredictError: it cannot be loaded, or it is an older run's bare sklearn model.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = logged_model.load_model(tracking_uri, model_uri)
    except MlflowException as exc:
        raise PredictError(f"cannot load {model_uri}: {exc.message}") from exc
    except ValueError as exc:
        raise PredictError(str(exc)) from exc
    log.info("model %s loaded", model_uri)
    return model


def predict_files(model: Any, paths: Sequence[Path]) -> list[Prediction]:
    """Classify image files; every file is checked before any prediction.

    The probability is the chosen class's score (with one-hot targets sklearn's MLP has
    independent sigmoid outputs, which need not sum to 1).

    Raises:
        ImageError: the first unusable file.
    """
    digits = np.stack([load_digit(p) for p in paths])
    out = logged_model.predict_images(model, digits)
    proba = out[probability_columns(out.shape[1] - 1)].to_numpy()
    chosen = out[DIGIT_COLUMN].to_numpy()
    return [
        Prediction(str(p), int(d), float(proba[i, d]))
        for i, (p, d) in enumerate(zip(paths, chosen, strict=True))
    ]
