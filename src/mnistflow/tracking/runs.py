"""One MLflow run's lifecycle and logging: started once, always ended, never left RUNNING.

A tracking server that goes away during a run is MLflow's client's to ride out: it retries
each request (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` times, sleeping
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` x 2^(n-1) s after the n-th failure from the second on,
at most 120 s; each attempt waits up to ``MLFLOW_HTTP_REQUEST_TIMEOUT`` s for an answer).
When a request still gets no answer, the run's block ends with one line (exit 4): if the
server answers one more, unretried request (ending the run FAILED), it was that request the
server dropped (:class:`ServerFailedError`, e.g. an upload cut off by a full artifact store);
else the server is gone (:class:`ServerLostError`) and the run stays RUNNING, marked with its
owner (:mod:`.liveness`) so that ``mnistflow doctor --fix`` or the next train run ends it once
the server is back. A server that keeps answering a request with an error status (MLflow
retries 5xx and 429 the same way) is a :class:`ServerFailedError` too, the run ended FAILED.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

from mnistflow.tracking import liveness
from mnistflow.tracking.store import TrackingError, redact
from mnistflow.util.signals import Interrupted, signals_deferred

log = logging.getLogger(__name__)

# MLflow's client settings (mlflow.environment_variables) and their defaults in MLflow 3.
RETRIES_ENV, RETRIES_DEFAULT = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7
BACKOFF_ENV, BACKOFF_DEFAULT = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2
TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
BACKOFF_MAX_S = 120.0  # urllib3's Retry.DEFAULT_BACKOFF_MAX: no single sleep is longer
LAST_TRY_TIMEOUT_S = "10"  # the one request that ends a run after the server was lost


class ServerLostError(TrackingError):
    """The tracking server stopped answering during a run, for longer than MLflow retries."""


class ServerFailedError(TrackingError):
    """The tracking server kept answering a request with an error (5xx, 429) during a run."""


def retry_window_s(retries: int, backoff_factor: float) -> float:
    """Seconds MLflow's client sleeps between the attempts of one request before giving up.

    urllib3 (MLflow's ``requests`` session) sleeps ``backoff_factor * 2**(n-1)`` s after the
    n-th consecutive failure, none after the first, at most :data:`BACKOFF_MAX_S` each; there
    are ``retries`` sleeps (the last attempt's failure raises). Jitter (up to
    ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER`` s per sleep, default 1) and the time of the attempts
    themselves come on top.
    """
    return sum(min(BACKOFF_MAX_S, backoff_factor * 2 ** (n - 1)) for n in range(2, retries + 1))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def server_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a failure to get any answer from the
    server (refused, reset, timed out), as opposed to an answer that says no or fails."""
    import requests

    lost = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    return any(isinstance(e, lost) for e in _chain(exc))


def server_error_answers(exc: BaseException) -> bool:
    """Whether ``exc`` comes from MLflow's retries running out on error statuses (urllib3's
    "too many 500 error responses"): the server answered, with errors."""
    import requests

    return any(isinstance(e, requests.exceptions.RetryError) for e in _chain(exc))


def failed_request(exc: BaseException) -> str:
    """The request behind ``exc`` and why it failed, e.g. ``PUT /api/2.0/mlflow-artifacts/...:
    too many 500 error responses`` (the path, never the credentials)."""
    import requests

    for e in _chain(exc):
        if isinstance(e, requests.exceptions.RequestException):
            request = e.request
            where = (
                f"{request.method} {urlparse(request.url).path}"
                if request is not None and request.url
                else "a request"
            )
            reason: object = e.args[0] if e.args else e
            while getattr(reason, "reason", None) is not None:  # urllib3's MaxRetryError
                reason = reason.reason  # type: ignore[attr-defined]
            return f"{where}: {reason}"
    return str(exc)


def lost_message(uri: str, run_id: str, environ: Mapping[str, str], started: bool = True) -> str:
    """The one line of :class:`ServerLostError`: which server, how long MLflow retried, and
    what became of the run (``started``: it was running; else it was not reopened)."""
    retries = int(environ.get(RETRIES_ENV, RETRIES_DEFAULT))
    backoff = float(environ.get(BACKOFF_ENV, BACKOFF_DEFAULT))
    window = retry_window_s(retries, backoff)
    run = (
        f"run {run_id} is left RUNNING there: `mnistflow doctor --fix` (or the next train) "
        "marks it FAILED once the server is back"
        if started
        else f"run {run_id} was not reopened: run the stage again once the server is back"
    )
    return (
        f"lost the MLflow tracking server at {redact(uri)}: no answer after MLflow's "
        f"{retries} retries (~{window:g} s of back-off; {RETRIES_ENV}, {BACKOFF_ENV}, "
        f"{TIMEOUT_ENV}); {run}"
    )


def failed_message(uri: str, run_id: str, what: str, environ: Mapping[str, str]) -> str:
    """The one line of :class:`ServerFailedError` (``what``: :func:`failed_request`)."""
    retries = int(environ.get(RETRIES_ENV, RETRIES_DEFAULT))
    return (
        f"the MLflow tracking server at {redact(uri)} failed a request: {what} (after MLflow's "
        f"{retries} retries, {RETRIES_ENV}); the server's log says why (e.g. its artifact "
        f"store is full or its database is down); run {run_id} is marked FAILED"
    )


def _end_run_once(status: str) -> bool:
    """End the active run with a single short request, without MLflow's retries.

    ``mlflow.end_run`` pops the active run first, so MLflow's exit handler will not try again
    (with the full retries) whatever happens here. Returns whether the server recorded it.
    """
    saved = {var: os.environ.get(var) for var in (RETRIES_ENV, TIMEOUT_ENV)}
    os.environ[RETRIES_ENV], os.environ[TIMEOUT_ENV] = "0", LAST_TRY_TIMEOUT_S
    try:
        with signals_deferred():
            mlflow.end_run(status)
    except Exception as exc:
        if not server_unreachable(exc):
            raise
        return False
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    return True


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

    Raises:
        ServerLostError: the server stopped answering for longer than MLflow's client retries
            (see the module's docstring); the run is ended FAILED if it can still be.
        ServerFailedError: the server kept answering a request with an error status (a
            full artifact store, a database that is down); the run is ended FAILED.
    """
    mlflow.set_tracking_uri(uri)
    if run_id is not None:
        try:
            found = MlflowClient(uri).get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            if server_unreachable(exc):
                raise ServerLostError(lost_message(uri, run_id, os.environ, False)) from exc
            raise TrackingError(
                f"MLflow run {run_id} (from train's run info) not found in {redact(uri)}: was "
                "train run with another tracking store (MLFLOW_TRACKING_URI, "
                "mlflow.tracking_uri)?"
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
    run_id = active.info.run_id
    interval = liveness.heartbeat_interval()
    heartbeat = liveness.Heartbeat(uri, run_id, interval)
    lost: Exception | None = None
    try:
        with signals_deferred():
            mlflow.set_tags(liveness.owner_tags(interval))
        heartbeat.start()
        yield Run(run_id, experiment_id, uri)
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    except Exception as exc:
        if server_unreachable(exc):
            lost = exc
        elif server_error_answers(exc):
            what = failed_request(exc)
            raise ServerFailedError(failed_message(uri, run_id, what, os.environ)) from exc
        else:
            raise
    finally:
        heartbeat.stop(wait=lost is None)
        if lost is None:
            with signals_deferred():
                mlflow.end_run(status)
            log.info("MLflow run %s ended %s", run_id, status)
    if lost is not None:
        if _end_run_once("FAILED"):  # it answers again: it dropped that request (see its log)
            what = failed_request(lost)
            raise ServerFailedError(failed_message(uri, run_id, what, os.environ)) from lost
        raise ServerLostError(lost_message(uri, run_id, os.environ)) from lost


def run_status(uri: str, run_id: str) -> str:
    """The status of a run ('FINISHED', 'FAILED', 'KILLED', 'RUNNING', ...)."""
    return MlflowClient(uri).get_run(run_id).info.status
