"""``mnistflow reproduce``: the command line of :mod:`mnistflow.experiments.reproduce`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mnistflow.config import MlflowConfig, config, load_params
from mnistflow.experiments.reproduce import reproduce
from mnistflow.tracking.query import experiment_run
from mnistflow.tracking.store import check_server, resolve_tracking_uri

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow reproduce``."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("run_id", nargs="?", help="the MLflow run to reproduce")
    which.add_argument(
        "--exp", metavar="NAME", help="reproduce the run of DVC experiment NAME (dvc exp show)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary workspace (a git worktree)"
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow reproduce <run-id> | --exp NAME``: exit 0 identical, 1 different, 2 on errors."""
    cwd = Path.cwd()
    mlflow_cfg = config(load_params(args.params), "mlflow", MlflowConfig)
    uri = resolve_tracking_uri(mlflow_cfg, cwd)
    check_server(uri)  # before the lookup: a refused password is not "no such run"
    run_id = args.run_id
    if args.exp:
        run_id = experiment_run(uri, mlflow_cfg.experiment_name, args.exp)
        log.info("DVC experiment %s is MLflow run %s", args.exp, run_id)
    return reproduce(run_id, cwd, uri, args.keep)
