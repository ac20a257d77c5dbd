"""What a pipeline run records in MLflow: params, the fit, the encoding, the evaluation, and
the per-run file naming the run. Metric names come from :mod:`mnistflow.modeling.metrics`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistflow.config import EvaluateConfig, Params
from mnistflow.data.encode import Encoding
from mnistflow.modeling import metrics as m
from mnistflow.tracking.artifacts import ENCODING_ARTIFACT
from mnistflow.tracking.runs import flatten
from mnistflow.util.fileio import save_npz

# Stepped by epoch: training loss, validation score, seconds since the start of the fit.
TRAIN_LOSS, EARLY_STOP_SCORE, ELAPSED = "train_loss", "early_stop_score", "elapsed_s"

if TYPE_CHECKING:
    from mnistflow.modeling.training import FitResult
    from mnistflow.tracking.runs import Run


def train_params(params: Params) -> dict[str, Any]:
    """The flat MLflow params of a training run: dataset, encode, train, experiment."""
    return flatten(
        {
            "data": {"dataset": params.dataset_name},
            "encode": params.encode.as_dict(),
            "train": params.train.as_dict(),
            "mlflow": {"experiment_name": params.mlflow.experiment_name},
        }
    )


def evaluate_params(params: Params) -> dict[str, Any]:
    """The ``evaluate`` settings of a run: the baseline of its own dataset only (logged as
    ``evaluate.baseline_accuracy.<dataset>``, the params.yaml key it came from)."""
    fields = [name for name in EvaluateConfig.model_fields if name != "baseline_accuracy"]
    return {
        "baseline_accuracy": {params.dataset_name: params.baseline_accuracy},
        **{name: getattr(params.evaluate, name) for name in fields},
    }


def log_epoch(run: Run, epoch: int, loss: float, early_stop_score: float | None) -> None:
    """The stepped per-epoch metrics: ``train_loss``, and ``early_stop_score`` (sklearn's
    score on its early-stopping hold-out) with early stopping."""
    run.log_metric(TRAIN_LOSS, loss, step=epoch)
    if early_stop_score is not None:
        run.log_metric(EARLY_STOP_SCORE, early_stop_score, step=epoch)


def log_validation(run: Run, accuracies: list[float]) -> None:
    """Hold-out accuracy per epoch (stepped) and the last epoch's as the run's value."""
    for epoch, value in enumerate(accuracies, start=1):
        run.log_metric(m.HOLDOUT_ACCURACY, value, step=epoch)


def log_fit(run: Run, result: FitResult) -> None:
    """The fit's wall-clock time and epochs (timings go to MLflow, not to DVC outputs), and
    the time at the end of each epoch as the stepped ``elapsed_s`` when measured (online)."""
    run.log_metrics({"fit_time_s": result.fit_time_s, "n_iter": result.n_iter})
    for epoch, seconds in enumerate(result.epoch_times, start=1):
        run.log_metric(ELAPSED, seconds, step=epoch)


def log_encoding(run: Run, encoding: Encoding) -> None:
    """The fitted encoding as artifact ``ENCODING_ARTIFACT`` (whatever paths.encode_stats is)."""
    folder, name = ENCODING_ARTIFACT.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_npz(Path(tmp) / name, **encoding.to_arrays())
        run.log_artifact(path, folder)


def log_evaluation(run: Run, ev: m.Evaluation, baseline: float) -> None:
    """The evaluation's metrics (:func:`metrics.mlflow_metrics`) and the headline tag."""
    run.set_tags({"headline_metric": m.headline_key(ev.headline)})
    run.log_metrics(m.mlflow_metrics(ev, baseline))


def run_info(
    run: Run, experiment_name: str, ignored: list[str], numerics: dict[str, str]
) -> dict[str, Any]:
    """Content of paths.run_info: the MLflow run train opened, which evaluate continues.

    This is the pipeline's one per-run file (a new run id on every fit, so `git status`
    shows it after a rerun); everything in it is the same on every machine but the run
    id (``numerics``, the fit's floating-point environment, is too under the pin). It
    holds no tracking URI (a machine path): evaluate resolves the store the way train did
    (mlflow.tracking_uri / MLFLOW_TRACKING_URI).
    """
    return {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "experiment_name": experiment_name,
        "ignored_settings": ignored,
        "numerics": numerics,
    }
