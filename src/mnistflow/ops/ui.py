"""The MLflow UI on the project's store, bound to 127.0.0.1.

MLflow 3.17 opens an experiment on a GenAI "Overview" page; the table of training runs is at
``http://HOST:PORT/#/experiments/<id>/runs``, so that is the URL we announce once the server
answers (its first answer takes ~20-40 s on these machines). That table shows only run names
and attributes by default (metrics and params are behind "Columns"), so we also save a
*shared view* on the experiment, as the UI's own "Share" button does (an experiment tag
``mlflow.sharedViewState.<key>`` holding the view as JSON): the runs sorted by the headline
accuracy with the columns that matter, opened by ``.../runs?viewStateShareKey=<key>``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from mnistflow.tracking.links import runs_url, ui_args
from mnistflow.tracking.store import BACKEND_STORE_ENV, redact
from mnistflow.util.errors import UserError
from mnistflow.util.processes import base_url, check_port_free, run_until_stopped

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0  # ~20 s measured; generous because the machine is shared
STOP_TIMEOUT_S = 15.0
VIEW_KEY = "mnistflow-leaderboard"  # the shared view's key (experiment tag suffix)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # where MLflow's UI looks for shared views
VIEW_METRICS = ("test_accuracy", "delta_to_baseline", "fit_time_s")
VIEW_TAGS = ("is_baseline", "dvc_exp_name")


class UiError(UserError):
    """The UI could not be started."""


def ui_command(host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line, run with this environment's MLflow; the store goes by
    environment (:func:`start`): a database URI may hold a password, and ``ps`` shows
    every command line."""
    return [sys.executable, "-m", "mlflow", *ui_args(None, host, port)]


def leaderboard_view(param_keys: Sequence[str]) -> dict[str, object]:
    """The UI state of the leaderboard view: key columns shown, best accuracy first (pure).

    Column ids are the UI's canonical keys, e.g. ``metrics.`test_accuracy```.
    """
    columns = ["attributes.`Run Name`"]
    columns += [f"metrics.`{m}`" for m in VIEW_METRICS]
    columns += [f"params.`{p}`" for p in param_keys]
    columns += [f"tags.`{t}`" for t in VIEW_TAGS]
    return {
        "selectedColumns": columns,
        "orderByKey": f"metrics.`{VIEW_METRICS[0]}`",
        "orderByAsc": False,
    }


def save_leaderboard_view(tracking_uri: str, experiment_id: str) -> None:
    """Store the leaderboard view on the experiment (idempotent)."""
    from mlflow.tracking import MlflowClient

    from mnistflow.reporting.leaderboard import KEY_PARAMS

    client = MlflowClient(tracking_uri)
    value = json.dumps(leaderboard_view(KEY_PARAMS))
    tags = client.get_experiment(experiment_id).tags
    if tags.get(VIEW_TAG_PREFIX + VIEW_KEY) != value:
        client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, value)


def start(tracking_uri: str, host: str, port: int) -> subprocess.Popen:
    """Start ``mlflow ui`` in its own process group (so stopping it stops its workers)."""
    check_port_free(host, port, UiError)
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machines; nobody's business
    # The GenAI job runner (LLM judges) is not used here; with it the server also takes
    # 15 s to exit after SIGTERM.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env[BACKEND_STORE_ENV] = tracking_uri
    log.info("starting the MLflow UI on %s for %s", base_url(host, port), redact(tracking_uri))
    process = subprocess.Popen(ui_command(host, port), env=env, start_new_session=True)
    log.info("mlflow ui running as process group %d", process.pid)
    return process


def experiment_id(tracking_uri: str, experiment_name: str) -> str | None:
    """The experiment's id in the store, or None if it does not exist yet."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment_name)
    return None if found is None else found.experiment_id


def serve(tracking_uri: str, experiment_name: str, host: str, port: int) -> int:
    """Run the UI until Ctrl-C or SIGTERM; log the runs-table URL once it answers.

    Returns:
        0 after a stop by the user, else the server's exit code.
    """
    check_port_free(host, port, UiError)  # before the slow store queries: fail fast
    exp_id = experiment_id(tracking_uri, experiment_name)
    if exp_id is None:
        log.warning(
            "no experiment %r in %s yet: run the pipeline first",
            experiment_name,
            redact(tracking_uri),
        )
    else:
        save_leaderboard_view(tracking_uri, exp_id)

    def announce(waited: float) -> None:
        log.info(
            "MLflow UI ready after %.1f s. Runs table: %s", waited, runs_url(host, port, exp_id)
        )
        if exp_id is not None:
            log.info(
                "Leaderboard view (best %s first, key params as columns): %s",
                VIEW_METRICS[0],
                runs_url(host, port, exp_id, VIEW_KEY),
            )
        log.info(
            "(the UI's landing page is a GenAI overview: use these URLs, or the sidebar's "
            "'Model training' switch). Ctrl-C stops the UI."
        )

    return run_until_stopped(
        start(tracking_uri, host, port),
        base_url(host, port),
        "mlflow ui",
        announce,
        READY_TIMEOUT_S,
        STOP_TIMEOUT_S,
    )
