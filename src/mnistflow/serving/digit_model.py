"""The logged model: raw 28x28 images in, digit and per-class probabilities out.

This file is logged as MLflow *models-from-code* (``mlflow.pyfunc.log_model(python_model=
<this file>)``): loading a model executes this file (``set_model`` at the bottom) instead of
unpickling a Python object. Its artifacts are the estimator in skops format, loaded with the
fixed allow-list below (not one read from the model), and the run's fitted encoding as an
``.npz`` read with ``allow_pickle=False``. The maths lives in :mod:`mnistflow.serving.inputs`,
:mod:`mnistflow.data.encode` and :mod:`mnistflow.modeling.model`, the modules the pipeline
uses, so a served answer is the one evaluate scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from mnistflow.data.encode import Encoding
from mnistflow.internals import SKOPS_TRUSTED_TYPES
from mnistflow.modeling.model import predict_scores
from mnistflow.serving.inputs import InputError, images_from_input, output_frame
from mnistflow.tracking.artifacts import MODEL_ENCODING, MODEL_ESTIMATOR, MODEL_N_CLASSES


def load_estimator(folder: str | Path) -> Any:
    """The estimator of an MLflow sklearn model folder saved with skops, loaded with
    :data:`SKOPS_TRUSTED_TYPES` only (skops refuses any other non-default type)."""
    import skops.io
    from mlflow.models import Model

    conf = Model.load(Path(folder) / "MLmodel").flavors["sklearn"]
    if conf.get("serialization_format") != "skops":
        raise MlflowException(f"{folder}: the estimator is not in skops format; refusing it")
    return skops.io.load(Path(folder) / conf["pickled_model"], trusted=SKOPS_TRUSTED_TYPES)


def load_encoding(path: str | Path) -> Encoding:
    """The fitted encoding from its ``.npz`` (no pickled objects allowed)."""
    with np.load(path, allow_pickle=False) as data:
        return Encoding.from_arrays({k: data[k] for k in data.files}, str(path))


class DigitModel(PythonModel):
    """MLflow pyfunc: pixel columns, images (n, 28, 28) or rows (n, 784) -> ``digit`` and
    ``p0``.. columns."""

    def load_context(self, context: Any) -> None:
        """Load the estimator and the encoding from the model's artifacts."""
        self.estimator = load_estimator(context.artifacts[MODEL_ESTIMATOR])
        self.encoding = load_encoding(context.artifacts[MODEL_ENCODING])
        self.n_classes = int(context.model_config[MODEL_N_CLASSES])

    # The logged signature has no input schema (:func:`mnistflow.serving.logged_model.signature`),
    # so MLflow hands over what a request carries as it parsed it: a DataFrame for
    # dataframe_split/records, an array for inputs/instances; this method checks either.
    # The hint is one MLflow derives no signature from and validates nothing against
    # (np.ndarray is the other; a union or list[...] would replace the logged signature).
    # Without any hint MLflow warns "Add type hints to the `predict` method" at each load.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Check the images, encode them as the run's encode stage did, score, shape."""
        try:
            images = images_from_input(model_input)
        except InputError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
        return predict_frame(self.estimator, self.encoding, self.n_classes, images)


def predict_frame(
    estimator: Any, encoding: Encoding, n_classes: int, images: np.ndarray
) -> pd.DataFrame:
    """The model's answer for checked uint8 images (n, 28, 28)."""
    return output_frame(predict_scores(estimator, encoding.apply(images), n_classes))


mlflow.models.set_model(DigitModel())
