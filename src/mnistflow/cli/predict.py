"""``mnistflow predict``: the command line of :mod:`mnistflow.serving.predict`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mnistflow.config import MlflowConfig, RegistryConfig, config, dataset_spec, load_params
from mnistflow.data.preprocess import read_grayscale
from mnistflow.serving.predict import load_run_model, predict_files, resolve_model
from mnistflow.tracking.store import check_server, resolve_tracking_uri

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow predict``."""
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument(
        "--run",
        metavar="RUN_ID",
        help="use this MLflow run's model instead of the registered champion",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow predict``: print ``path<TAB>digit<TAB>probability`` per image."""
    params = load_params(args.params)
    mlflow_cfg = config(params, "mlflow", MlflowConfig)
    cfg = config(params, "registry", RegistryConfig)
    # Images first: a typo in a file name should not wait for the model to load.
    for path in args.images:
        read_grayscale(path)
    uri = resolve_tracking_uri(mlflow_cfg, Path.cwd())
    check_server(uri)
    model_uri, _ = resolve_model(uri, cfg, args.run, dataset_spec(params)[0])
    model = load_run_model(uri, model_uri)
    for result in predict_files(model, args.images):
        sys.stdout.write(f"{result.path}\t{result.digit}\t{result.probability:.4f}\n")
    return 0
