"""Log and load the run's model: :mod:`.digit_model` as MLflow pyfunc (models-from-code).

Logged under the name ``MODEL_ARTIFACT`` (what the registry registers and predict loads);
inside it, ``artifacts/sklearn-model`` is the plain estimator as an MLflow sklearn model in
skops format, ``artifacts/stats.npz`` the run's encoding.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mnistflow.data.encode import Encoding
from mnistflow.internals import SKOPS_TRUSTED_TYPES
from mnistflow.serving.inputs import (
    DIGIT_COLUMN,
    pixel_frame,
    probability_columns,
)
from mnistflow.tracking.artifacts import (
    MODEL_ARTIFACT,
    MODEL_ENCODING,
    MODEL_ESTIMATOR,
    MODEL_N_CLASSES,
)
from mnistflow.util.fileio import save_npz
from mnistflow.util.signals import signals_deferred

log = logging.getLogger(__name__)

# Pinned from this environment: MLflow's own inference loads the model in a subprocess to
# watch its imports, seconds per run for the same answer. mnistflow itself is not on PyPI:
# a serving environment installs this repository (`--env-manager local` uses the venv).
REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "scipy", "pandas", "skops")


def signature(n_classes: int) -> Any:
    """Output only: ``digit`` and ``p0``.. (MLflow schema); no input schema.

    A request may carry the images as pixel columns px0..px783 (``dataframe_split``), as
    images (n, 28, 28) or as rows (n, 784) (``inputs``): no one MLflow input schema is all
    three (a column schema refuses tensors, a tensor schema has one shape). Without one the
    scoring server hands the parsed request to the model unchanged, and the model's own check
    (:func:`mnistflow.serving.inputs.images_from_input`) refuses anything else with HTTP 400
    naming the problem; it also refuses 0.5, which a cast to an integer schema would make 0.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = Schema(
        [ColSpec("long", DIGIT_COLUMN)]
        + [ColSpec("double", c) for c in probability_columns(n_classes)]
    )
    return ModelSignature(inputs=None, outputs=outputs)


def log_model(estimator: Any, encoding: Encoding, examples: np.ndarray, n_classes: int) -> None:
    """Log the active run's model; ``examples`` (a few raw images) are its input example."""
    import mlflow.pyfunc
    import mlflow.sklearn

    from mnistflow.serving import digit_model  # imports MLflow: only when logging

    with tempfile.TemporaryDirectory() as tmp:
        sk_folder = Path(tmp) / MODEL_ESTIMATOR
        mlflow.sklearn.save_model(
            estimator,
            str(sk_folder),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            conda_env=conda_env(),
        )
        stats = save_npz(Path(tmp) / "stats.npz", **encoding.to_arrays())
        # ~1 s of writes to the store: held signals, as runs.Run's writes (no commit cut in half)
        with signals_deferred():
            mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=digit_model.__file__,
                artifacts={MODEL_ESTIMATOR: str(sk_folder), MODEL_ENCODING: str(stats)},
                model_config={MODEL_N_CLASSES: n_classes},
                signature=signature(n_classes),
                input_example=pixel_frame(examples),
                conda_env=conda_env(),
            )


def _requirements() -> list[str]:
    return [f"{dist}=={importlib.metadata.version(dist)}" for dist in REQUIREMENTS]


def conda_env() -> dict[str, Any]:
    """The model's environment (its conda.yaml; MLflow derives requirements.txt from it), in
    the shape MLflow writes. Given whole, because left to MLflow it pins the installed pip,
    which a uv venv does not have, and warns "Failed to resolve installed pip version"."""
    return {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={platform.python_version()}", "pip", {"pip": _requirements()}],
    }


def is_digit_model(info: Any) -> bool:
    """Whether a logged model's info (``mlflow.models.get_model_info``) describes this model:
    runs logged before it hold a bare sklearn model answering one-hot rows."""
    outputs = info.signature.outputs if info.signature is not None else None
    return outputs is not None and DIGIT_COLUMN in outputs.input_names()


def load_model(tracking_uri: str, model_uri: str) -> Any:
    """Load a logged model (``runs:/``, ``models:/``) of the store as MLflow pyfunc.

    Raises:
        MlflowException: MLflow cannot find or load it.
        ValueError: it is not this module's model (an older run's sklearn model).
    """
    import mlflow
    import mlflow.pyfunc

    # MLflow resolves runs:/ and models:/ URIs against the global tracking/registry URIs.
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        if not is_digit_model(mlflow.models.get_model_info(model_uri)):
            raise ValueError(
                f"{model_uri} is not a model of raw images (logged before models answered "
                "digits, or by something else): retrain its run (dvc repro)"
            )
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def predict_images(model: Any, images: np.ndarray) -> Any:
    """The loaded model's answer (a DataFrame: digit, p0..) for uint8 images (n, 28, 28)."""
    return model.predict(pixel_frame(images))
