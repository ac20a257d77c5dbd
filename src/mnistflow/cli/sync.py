"""``mnistflow sync``: the command line of :mod:`mnistflow.ops.sync`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistflow.config import MlflowConfig, config, load_params
from mnistflow.ops.sync import sync
from mnistflow.tracking.store import TrackingError, check_store, resolve_tracking_uri, store_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow sync``."""
    parser.add_argument(
        "--to",
        required=True,
        help="the destination server, e.g. http://mlflow.lan:5000 (credentials from "
        "MLFLOW_TRACKING_USERNAME/PASSWORD)",
    )
    parser.add_argument(
        "--from",
        dest="source",
        help="the source store (default: the project's sqlite store <root>/mlflow.db, "
        "even when MLFLOW_TRACKING_URI points at the server)",
    )
    parser.add_argument("--experiment", help="default: mlflow.experiment_name of params.yaml")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Copy the runs not yet on the server; print what was done."""
    if args.source and args.experiment:  # everything given: params.yaml is not needed
        source, experiment = args.source, args.experiment
    else:
        cfg = config(load_params(args.params), "mlflow", MlflowConfig)
        experiment = args.experiment or cfg.experiment_name
        if args.source:
            source = args.source
        elif cfg.tracking_uri.strip():
            source = resolve_tracking_uri(cfg, Path.cwd())
        else:
            source = f"sqlite:///{store_root(Path.cwd()) / 'mlflow.db'}"
    if source.rstrip("/") == args.to.rstrip("/"):
        raise TrackingError(f"--to {args.to} is the source store itself")
    check_store(args.to)
    sync(source, args.to, experiment)
    return 0
