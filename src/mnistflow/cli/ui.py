"""``mnistflow ui``: the command line of :mod:`mnistflow.ops.ui`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mnistflow.config import MlflowConfig, config, load_params
from mnistflow.ops.ui import UiError, serve
from mnistflow.tracking.links import DEFAULT_PORT, HOST
from mnistflow.tracking.store import resolve_tracking_uri

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow ui``."""
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on {HOST} (default {DEFAULT_PORT})",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow ui``: serve the MLflow UI for the project's store until Ctrl-C."""
    if not 0 < args.port < 65536:
        raise UiError(f"--port must be in 1..65535; got {args.port}")
    params = load_params(args.params)
    mlflow_cfg = config(params, "mlflow", MlflowConfig)
    uri = resolve_tracking_uri(mlflow_cfg, Path.cwd())
    return serve(uri, mlflow_cfg.experiment_name, HOST, args.port)
