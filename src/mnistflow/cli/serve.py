"""``mnistflow serve``: the command line of :mod:`mnistflow.serving.scoring_server`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mnistflow.config import MlflowConfig, RegistryConfig, config, dataset_spec, load_params
from mnistflow.serving.predict import load_run_model, resolve_model
from mnistflow.serving.scoring_server import DEFAULT_PORT, HOST, ServeError, serve
from mnistflow.tracking.store import resolve_tracking_uri

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow serve``."""
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})"
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow serve``: the champion on HOST:PORT until Ctrl-C."""
    if not 0 < args.port < 65536:
        raise ServeError(f"--port must be in 1..65535; got {args.port}")
    params = load_params(args.params)
    uri = resolve_tracking_uri(config(params, "mlflow", MlflowConfig), Path.cwd())
    registry, dataset = config(params, "registry", RegistryConfig), dataset_spec(params)[0]
    model_uri, _ = resolve_model(uri, registry, None, dataset)
    load_run_model(uri, model_uri)  # a missing or old-style champion fails here, in one line
    return serve(uri, model_uri, HOST, args.port)
