"""``mnistflow register``: the command line of :mod:`mnistflow.tracking.registry`."""

from __future__ import annotations

import argparse
import logging
import sys

from mnistflow.config import RegistryConfig, config, load_params
from mnistflow.modeling.metrics import HEADLINE
from mnistflow.tracking.registry import register_best
from mnistflow.tracking.store import check_server, store_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow register`` (none: names come from params.yaml ``registry:``)."""
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow register``: register the best run of params.yaml's dataset as
    ``<model name of the dataset>@<alias>``."""
    params = load_params(args.params)
    cfg = config(params, "registry", RegistryConfig)
    store = store_settings(params)
    check_server(store.tracking_uri)
    result = register_best(store.tracking_uri, store.experiment_name, cfg, store.dataset)
    # The result on stdout, for scripts: models:/<name>@<alias> and what it points at.
    sys.stdout.write(
        f"models:/{result.model_name}@{result.alias}\tversion {result.version}\t"
        f"run {result.run_id}\t{HEADLINE} {result.accuracy:.4f}\n"
    )
    return 0
