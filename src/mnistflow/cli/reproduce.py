"""``mnistflow reproduce``: the command line of :mod:`mnistflow.experiments.reproduce`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mnistflow.config import MlflowConfig, config, load_params
from mnistflow.experiments.reproduce import reproduce
from mnistflow.tracking.store import resolve_tracking_uri

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow reproduce``."""
    parser.add_argument("run_id", help="the MLflow run to reproduce")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary workspace (a git worktree)"
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow reproduce <run-id>``: exit 0 identical, 1 different, 2 on errors."""
    cwd = Path.cwd()
    mlflow_cfg = config(load_params(args.params), "mlflow", MlflowConfig)
    uri = resolve_tracking_uri(mlflow_cfg, cwd)
    return reproduce(args.run_id, cwd, uri, args.keep)
