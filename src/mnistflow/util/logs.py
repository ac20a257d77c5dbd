"""Logging set-up for the command-line entry points (never at import time)."""

from __future__ import annotations

import logging
import os

# Libraries whose INFO lines say nothing a user acts on (MLflow: "Creating initial MLflow
# database tables", "Started monitoring system metrics", "Detected uv project", ...; alembic:
# its migration steps); their warnings and errors still show. MLflow's records reach the
# one handler below because `import mnistflow` sets MLFLOW_CONFIGURE_LOGGING=false.
QUIET_LIBRARIES = ("mlflow", "alembic")


def configure(level: str | None = None) -> None:
    """Send log records to stderr in one format; level from the argument, ``MNISTFLOW_LOG``
    or INFO. MLflow draws no artifact progress bars and prints no run links on stdout
    (unless the environment asks for them)."""
    logging.basicConfig(
        level=(level or os.environ.get("MNISTFLOW_LOG", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Downloading artifacts: 100%|...| 13751.82it/s" for files on this disk: no news
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # "🏃 View run <name> at: http://..." on stdout whenever a run on a tracking server ends
    # (stdout, outside the log format); the stages log their run and `mnistflow ui` the URLs
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
