"""``mnistflow register``: the command line of :mod:`mnistflow.serving.registry`."""

from __future__ import annotations

import argparse
import logging
import sys

from mnistflow.config import RegistryConfig, config, load_params
from mnistflow.modeling.metrics import HEADLINE
from mnistflow.serving.registry import register, rollback
from mnistflow.tracking.store import check_server, store_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow register`` (model name and default alias: params.yaml
    ``registry:``)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--run", metavar="RUN_ID", help="register this run (default: the best finished run)"
    )
    which.add_argument(
        "--rollback",
        action="store_true",
        help="point the alias back at the version it pointed at before",
    )
    parser.add_argument(
        "--alias", help="the alias to set, e.g. challenger (default: registry.alias, champion)"
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow register``: register the best (or a chosen) run of params.yaml's dataset
    as ``<model name of the dataset>@<alias>``, or roll the alias back."""
    params = load_params(args.params)
    cfg = config(params, "registry", RegistryConfig)
    store = store_settings(params)
    check_server(store.tracking_uri)
    if args.rollback:
        result = rollback(store.tracking_uri, cfg, store.dataset, args.alias)
    else:
        uri, experiment = store.tracking_uri, store.experiment_name
        result = register(uri, experiment, cfg, store.dataset, args.run, args.alias)
    # The result on stdout, for scripts: models:/<name>@<alias> and what it points at.
    sys.stdout.write(
        f"models:/{result.model_name}@{result.alias}\tversion {result.version}\t"
        f"run {result.run_id}\t{HEADLINE} {result.accuracy:.4f}\n"
    )
    return 0
