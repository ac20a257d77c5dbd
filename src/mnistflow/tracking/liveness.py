"""Runs that cannot stay RUNNING: who owns a run, a heartbeat, and the sweep of dead runs.

A process killed by SIGKILL, the OOM killer or a dead machine cannot end its MLflow run, which
then stays RUNNING forever. So every run records where it runs (tags ``mnistflow.host``,
``mnistflow.pid``, ``mnistflow.pid_start``) and, while active, a heartbeat: the tag
``mnistflow.heartbeat`` (epoch seconds), refreshed every ``MNISTFLOW_HEARTBEAT_S`` seconds
(default 30) by a daemon thread (:class:`Heartbeat`, started by ``runs.mlflow_run``).

A RUNNING run is dead when, on this host, its process is gone or its pid now belongs to
another process (a different start time), or, from any host, its heartbeat is older than
``stale_after`` (default: 5 heartbeat intervals of that run). :func:`sweep` marks dead runs
FAILED with the tag ``mnistflow.ended_by = liveness: <reason>``; the train stage and
``mnistflow leaderboard`` call it, ``mnistflow doctor`` reports (and with ``--fix`` ends) them.
Runs without these tags (older code, other tools) are never judged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "MNISTFLOW_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 30.0
STALE_INTERVALS = 5  # missed heartbeats before a run on another host is declared dead
TAG_HOST = "mnistflow.host"
TAG_PID = "mnistflow.pid"
TAG_PID_START = "mnistflow.pid_start"
TAG_HEARTBEAT = "mnistflow.heartbeat"
TAG_HEARTBEAT_S = "mnistflow.heartbeat_s"
TAG_ENDED_BY = "mnistflow.ended_by"
PAGE_SIZE = 1000


def heartbeat_interval() -> float:
    """Seconds between heartbeats: ``MNISTFLOW_HEARTBEAT_S`` or 30."""
    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_HEARTBEAT_S
    except ValueError:
        value = 0.0
    if value <= 0:
        log.warning("%s=%r is not a positive number; using %g", HEARTBEAT_ENV, text, 30)
        return DEFAULT_HEARTBEAT_S
    return value


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, 0.01 s resolution), None if it is gone."""
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None  # alive, but unknowable: see started_at


def owner_tags(interval: float) -> dict[str, str]:
    """The tags naming this process as the run's owner, and a first heartbeat."""
    pid = os.getpid()
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(pid),
        TAG_PID_START: f"{process_start_time(pid):.2f}",
        TAG_HEARTBEAT: f"{time.time():.0f}",
        TAG_HEARTBEAT_S: f"{interval:g}",
    }


class Heartbeat:
    """A daemon thread setting the heartbeat tag of one run every ``interval`` seconds.

    :meth:`start` it once the run has started, :meth:`stop` it before the run ends. A failed
    write (e.g. a locked sqlite store) is logged and retried at the next beat, never raised.
    """

    def __init__(self, uri: str, run_id: str, interval: float) -> None:
        self.uri, self.run_id, self.interval = uri, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mlflow-heartbeat", daemon=True)

    def _beat(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        while not self._stop.wait(self.interval):
            try:
                client.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            except Exception as exc:  # a missed beat is not worth stopping the run for
                log.warning("heartbeat of MLflow run %s not recorded: %s", self.run_id, exc)

    def start(self) -> None:
        """Start beating (the first beat is in the owner tags)."""
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop beating; wait for the thread (at most one store write) unless ``wait`` is
        False (a lost server: that write may be retrying for minutes; the thread is a daemon).
        """
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join()


@dataclass(frozen=True)
class DeadRun:
    """A RUNNING run whose process is known to be gone, and why."""

    run_id: str
    run_name: str
    reason: str


def started_at(pid: int, start: str | None) -> bool:
    """Whether the live process ``pid`` is the one that started at ``start`` (the tag).

    An unreadable start time gets the benefit of the doubt (True).
    """
    now_start = process_start_time(pid)
    if now_start is None or start is None:
        return True
    try:
        return abs(now_start - float(start)) < 1.0
    except ValueError:
        return True


def why_dead(run: Run, now: float, stale_after: float | None, host: str) -> str | None:
    """The reason a RUNNING run is dead, or None if it may be alive (or cannot be judged)."""
    tags = run.data.tags
    run_host, pid_text = tags.get(TAG_HOST), tags.get(TAG_PID, "")
    if run_host == host and pid_text.isdigit():
        pid = int(pid_text)
        if not psutil.pid_exists(pid):
            return f"process {pid} on {host} is gone"
        if not started_at(pid, tags.get(TAG_PID_START)):
            return f"pid {pid} on {host} now belongs to another process"
        return None  # our host's process is alive: a late heartbeat is not death
    beat = tags.get(TAG_HEARTBEAT)
    if beat is None:
        return None
    if stale_after is None:
        try:
            stale_after = STALE_INTERVALS * float(tags.get(TAG_HEARTBEAT_S, DEFAULT_HEARTBEAT_S))
        except ValueError:
            stale_after = STALE_INTERVALS * DEFAULT_HEARTBEAT_S
    try:
        age = now - float(beat)
    except ValueError:
        return None
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s (limit {stale_after:g} s) from {run_host}"
    return None


def running_runs(client: MlflowClient, experiment_ids: list[str]) -> Iterator[Run]:
    """Every RUNNING run of the experiments (filtered by the store, not here)."""
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string="attributes.status = 'RUNNING'",
            max_results=PAGE_SIZE,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def find_dead_runs(
    client: MlflowClient,
    experiment_ids: list[str],
    now: float | None = None,
    stale_after: float | None = None,
) -> list[DeadRun]:
    """The RUNNING runs of ``experiment_ids`` that are dead (see the module docstring).

    Args:
        client: an MlflowClient on the store.
        experiment_ids: the experiments to look in.
        now: the current time (epoch seconds; default: now).
        stale_after: seconds without a heartbeat after which a run of another host is dead
            (default: 5 times the run's own heartbeat interval).
    """
    now = time.time() if now is None else now
    host = socket.gethostname()
    dead = []
    for run in running_runs(client, experiment_ids):
        reason = why_dead(run, now, stale_after, host)
        if reason is not None:
            dead.append(DeadRun(run.info.run_id, run.info.run_name or "", reason))
    return dead


def mark_failed(client: MlflowClient, dead: list[DeadRun]) -> list[DeadRun]:
    """End each dead run FAILED with ``mnistflow.ended_by``; return those actually ended.

    A run that ended meanwhile (no longer RUNNING) is left alone.
    """
    ended = []
    for run in dead:
        if client.get_run(run.run_id).info.status != "RUNNING":
            continue
        client.set_tag(run.run_id, TAG_ENDED_BY, f"liveness: {run.reason}")
        client.set_terminated(run.run_id, status="FAILED")
        log.warning("MLflow run %s (%s) marked FAILED: %s", run.run_id, run.run_name, run.reason)
        ended.append(run)
    return ended


def sweep(uri: str, experiment_name: str) -> list[DeadRun]:
    """Mark the dead runs of an experiment FAILED (nothing when it does not exist yet).

    Called where a new run starts and where runs are read (train stage, leaderboard); a
    store error here is logged, not raised: the caller's own work decides.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            return []
        return mark_failed(client, find_dead_runs(client, [experiment.experiment_id]))
    except MlflowException as exc:
        log.warning("could not check for dead MLflow runs in %s: %s", uri, exc)
        return []
