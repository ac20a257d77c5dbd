"""Where to look at a run: the MLflow UI's command line and URLs (strings only, no I/O).

The report names them; :mod:`mnistflow.ops.ui` starts the UI and announces the same URLs.
"""

from __future__ import annotations

import shlex

from mnistflow.util.processes import LOOPBACK, base_url

HOST = LOOPBACK  # never 0.0.0.0: the UI has no authentication
DEFAULT_PORT = 5000  # mlflow ui's own default


def ui_args(tracking_uri: str | None, host: str, port: int) -> list[str]:
    """``mlflow``'s arguments for the UI on a store (None: the store is given by
    ``MLFLOW_BACKEND_STORE_URI`` in the environment instead).

    One worker process: the UI serves one person, and the default (4) costs ~4x the memory
    and start-up time on a 2-core machine.
    """
    store = [] if tracking_uri is None else ["--backend-store-uri", tracking_uri]
    return ["ui", *store, "--host", host, "--port", str(port), "--workers", "1"]


def runs_url(host: str, port: int, experiment_id: str | None, view: str | None = None) -> str:
    """The runs table of an experiment, optionally in a shared view (the UI's root when the
    experiment is unknown)."""
    if experiment_id is None:
        return f"{base_url(host, port)}/"
    url = f"{base_url(host, port)}/#/experiments/{experiment_id}/runs"
    return f"{url}?viewStateShareKey={view}" if view else url


def run_url(experiment_id: str, run_id: str, host: str = HOST, port: int = DEFAULT_PORT) -> str:
    """One run's page in the UI (not the GenAI landing page)."""
    return f"{base_url(host, port)}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_shell_command(tracking_uri: str, host: str = HOST, port: int = DEFAULT_PORT) -> str:
    """The ``mlflow ui`` command line (:func:`mnistflow.ops.ui.ui_command`) as one line to
    paste into a shell (for reports)."""
    return shlex.join(["mlflow", *ui_args(tracking_uri, host, port)])
