"""One MLflow run's lifecycle and logging: started once, always ended, never left RUNNING."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from mnistflow.tracking import liveness
from mnistflow.tracking.store import TrackingError
from mnistflow.util.signals import Interrupted, signals_deferred

log = logging.getLogger(__name__)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"alpha": 1}}`` -> ``{"train.alpha": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


class Run:
    """Logging into one active MLflow run (use through :func:`mlflow_run`).

    Each write method holds SIGINT/SIGTERM until it is done (``signals_deferred`` as a
    decorator): an :class:`Interrupted` raised inside SQLAlchemy's commit would skip its
    rollback (it is a BaseException) and leave the sqlite store locked, so that ending the
    run KILLED then fails with "database is locked". The writes are short; the signal is
    delivered right after.
    """

    def __init__(self, run_id: str, experiment_id: str, uri: str) -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri

    @signals_deferred()
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params; values already logged with the same value are skipped.

        MLflow params cannot change; a re-evaluation with a different value is recorded as a
        tag ``changed.<key>`` instead, with a warning.
        """
        existing = MlflowClient(self.uri).get_run(self.run_id).data.params
        new = {}
        for key, value in params.items():
            text = str(value)
            if key not in existing:
                new[key] = text
            elif existing[key] != text:
                log.warning(
                    "MLflow param %s is already %r in run %s; recording %r as tag changed.%s",
                    key,
                    existing[key],
                    self.run_id,
                    text,
                    key,
                )
                mlflow.set_tag(f"changed.{key}", text)
        if new:
            mlflow.log_params(new)

    @signals_deferred()
    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags."""
        mlflow.set_tags(dict(tags))

    @signals_deferred()
    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Log one metric, optionally at a step (e.g. the epoch)."""
        mlflow.log_metric(key, float(value), step=step)

    @signals_deferred()
    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log several unstepped metrics."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    @signals_deferred()
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or a folder's files into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextmanager
def mlflow_run(
    uri: str,
    experiment_id: str,
    run_id: str | None = None,
    run_name: str | None = None,
    log_system_metrics: bool | None = None,
) -> Iterator[Run]:
    """Start a new run (``run_id`` None) or resume ``run_id``; always end it.

    ``log_system_metrics=True`` samples CPU, memory and disk (psutil) into ``system/*``
    metrics while the run is active (training); None leaves MLflow's default (off).

    The run ends FINISHED when the block completes, KILLED on KeyboardInterrupt or
    Interrupted (SIGINT/SIGTERM), FAILED on any other exception, never RUNNING. While it
    is active it carries this process's host, pid and start time and a heartbeat tag, so a
    run whose process was SIGKILLed can be found and ended later (:mod:`.liveness`).
    """
    mlflow.set_tracking_uri(uri)
    if run_id is not None:
        try:
            found = MlflowClient(uri).get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(
                f"MLflow run {run_id} (from train's run info) not found in {uri}: was train run "
                "with another tracking store (MLFLOW_TRACKING_URI, mlflow.tracking_uri)?"
            ) from exc
        experiment_id = found.info.experiment_id
    with signals_deferred():
        active = mlflow.start_run(
            run_id=run_id,
            experiment_id=experiment_id,
            run_name=run_name,
            log_system_metrics=log_system_metrics,
        )
    status = "FAILED"
    interval = liveness.heartbeat_interval()
    heartbeat = liveness.Heartbeat(uri, active.info.run_id, interval)
    try:
        with signals_deferred():
            mlflow.set_tags(liveness.owner_tags(interval))
        heartbeat.start()
        yield Run(active.info.run_id, experiment_id, uri)
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    finally:
        heartbeat.stop()
        with signals_deferred():
            mlflow.end_run(status)
        log.info("MLflow run %s ended %s", active.info.run_id, status)


def run_status(uri: str, run_id: str) -> str:
    """The status of a run ('FINISHED', 'FAILED', 'KILLED', 'RUNNING', ...)."""
    return MlflowClient(uri).get_run(run_id).info.status
