"""The MLflow run the train stage opens: its experiment, tags, params and dataset, the
fit's epochs, then the fit, the encoding and the served model (evaluate continues it,
:func:`mnistflow.tracking.reports.log_evaluated`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from mnistflow.config import MlflowConfig, Params
from mnistflow.data.online import OnlineData
from mnistflow.data.sets import TrainSet
from mnistflow.modeling.training import FitResult, fit
from mnistflow.serving import logged_model
from mnistflow.tracking import datasets, liveness, provenance, record, store
from mnistflow.tracking.runs import Run, mlflow_run


def prepare_experiment(uri: str, cfg: MlflowConfig, cwd: Path) -> str:
    """The id of experiment mlflow.experiment_name (created when missing), after ending its
    runs left RUNNING by killed processes (:func:`liveness.sweep`)."""
    experiment_id = store.ensure_experiment(uri, cfg.experiment_name, store.store_root(cwd))
    liveness.sweep(uri, cfg.experiment_name)
    return experiment_id


@contextmanager
def open_run(
    params: Params,
    train: TrainSet,
    uri: str,
    experiment_id: str,
    cwd: Path,
    ignored: list[str],
    observed: Mapping[str, str],
) -> Iterator[Run]:
    """A new training run with its tags, params and dataset input; ended as
    :func:`runs.mlflow_run` ends it (FINISHED, KILLED or FAILED, never RUNNING).

    Args:
        params: the validated params.
        train: the training set (its encode info and shape are logged).
        uri: the tracking URI.
        experiment_id: from :func:`prepare_experiment`.
        cwd: the workspace (git provenance, baseline comparison).
        ignored: settings sklearn ignores with these params (``model.ignored_settings``).
        observed: the floating-point environment in force (``numerics.observe``).
    """
    # Every pipeline path: DVC rewrites outputs mid-run, so they do not make the tree dirty.
    outputs = list(params.paths.as_dict().values())
    tags = provenance.train_tags(params.raw, train.info, ignored, cwd, outputs, observed)
    name = tags[provenance.RUN_NAME_TAG]
    with mlflow_run(uri, experiment_id, run_name=name, log_system_metrics=True) as run:
        run.set_tags(tags)
        run.log_params(record.train_params(params))
        datasets.log_dataset(
            params.dataset_name,
            train.info["dataset_sha256"],
            params.paths.train_features,
            train.X.shape,
        )
        yield run


def fit_logged(run: Run, params: Params, train: TrainSet) -> FitResult:
    """Fit the model of params.train on ``train``, logging each epoch to ``run``."""
    online = OnlineData(train.encoding, train.examples.shape[1:], params.encode.augment)
    return fit(params.train, train.X, train.y, partial(record.log_epoch, run), online=online)


def log_trained(run: Run, result: FitResult, train: TrainSet, loss_curve: str) -> None:
    """Log the fit, the encoding, the loss curve file and the served model; tag the run
    ``trained``."""
    record.log_fit(run, result)
    record.log_encoding(run, train.encoding)
    run.log_artifact(loss_curve, "train")
    logged_model.log_model(result.model, train.encoding, train.examples, train.n_classes)
    run.set_tags({"mnistflow.stage": "trained"})
