"""Serve the champion with MLflow's scoring server (``mlflow models serve``) on 127.0.0.1.

The server loads ``models:/<dataset's model name>@<registry.alias>`` from the project's store
(MLFLOW_TRACKING_URI set for the child) in this environment (``--env-manager local``), and
answers POST /invocations: images (n, 28, 28), rows (n, 784) or pixel columns in, digit and
probabilities out (:mod:`mnistflow.serving.inputs`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from mnistflow.tracking.store import redact
from mnistflow.util.errors import UserError
from mnistflow.util.processes import LOOPBACK, base_url, check_port_free, run_until_stopped

log = logging.getLogger(__name__)

HOST = LOOPBACK  # no authentication: never 0.0.0.0
DEFAULT_PORT = 5001  # beside the UI's 5000
STOP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 180.0  # ~15 s measured; the machine is shared


class ServeError(UserError):
    """The model server could not be started (no champion, port taken, server died)."""


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    """``mlflow models serve`` in this environment's Python."""
    return [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", model_uri,
        "--env-manager", "local",
        "-h", host,
        "-p", str(port),
    ]  # fmt: skip


def serve_env(tracking_uri: str, base: dict[str, str]) -> dict[str, str]:
    """The child's environment: the store, and this venv's bin first (MLflow execs
    ``uvicorn`` by name)."""
    env = dict(base)
    env["MLFLOW_TRACKING_URI"] = env["MLFLOW_REGISTRY_URI"] = tracking_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def serve(tracking_uri: str, model_uri: str, host: str, port: int) -> int:
    """Run the scoring server for ``model_uri`` until Ctrl-C or SIGTERM.

    Returns:
        0 after a stop by the user, else the server's exit code.
    """
    check_port_free(host, port, ServeError)

    log.info("serving %s from %s on %s", model_uri, redact(tracking_uri), base_url(host, port))
    process = subprocess.Popen(
        serve_command(model_uri, host, port),
        env=serve_env(tracking_uri, dict(os.environ)),
        start_new_session=True,  # stopping its group stops uvicorn too
    )

    def announce(waited: float) -> None:
        log.info(
            "ready after %.1f s: POST %s/invocations (docs/experiments.md, Serving the "
            "champion). Ctrl-C stops it.",
            waited,
            base_url(host, port),
        )

    return run_until_stopped(
        process,
        base_url(host, port),
        "mlflow models serve",
        announce,
        READY_TIMEOUT_S,
        STOP_TIMEOUT_S,
        path="/ping",
    )
