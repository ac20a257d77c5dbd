"""``mnistflow wait-queue``: the command line of :mod:`mnistflow.experiments.queue`."""

from __future__ import annotations

import argparse
import logging

from mnistflow.experiments.queue import wait_queue
from mnistflow.util.workspace import find_root

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow wait-queue``."""
    parser.add_argument(
        "--poll", type=float, default=5.0, metavar="S", help="seconds between looks (5)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="give up after S seconds"
    )
    parser.add_argument(
        "--no-worker-grace",
        type=float,
        default=60.0,
        metavar="S",
        help="give up when tasks stay queued with no worker for S seconds (60)",
    )
    parser.add_argument(
        "--log-lines", type=int, default=20, metavar="N", help="log lines shown per failure (20)"
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow wait-queue``: exit 0 all succeeded, 1 some failed, 2 cannot finish."""
    return wait_queue(find_root(), args.poll, args.timeout, args.no_worker_grace, args.log_lines)
