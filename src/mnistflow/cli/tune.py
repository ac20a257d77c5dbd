"""``mnistflow tune``: run (or join) an Optuna study; ``--best`` turns its winner into a DVC
experiment and writes the study report (:mod:`mnistflow.tuning`, docs/tuning.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mnistflow.config import load_config
from mnistflow.util.workspace import find_root

log = logging.getLogger(__name__)

REPORTS_DIR = Path("reports/tune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow tune``."""
    parser.add_argument("--study", help="study name (default: tune.study_name)")
    parser.add_argument(
        "--storage",
        help="Optuna storage URL (default: $MNISTFLOW_OPTUNA_STORAGE, tune.storage, "
        "sqlite:///<root>/optuna.db)",
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="at most this many trials in this worker"
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="run the best trial as DVC experiment <study>-best and write reports/tune/<study>/",
    )
    parser.add_argument(
        "--no-exp", action="store_true", help="with --best: write the report only, no experiment"
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Run a worker, or ``--best``."""
    from mnistflow.tuning import storage

    params = load_config(args.params)  # the whole file, search space included, first
    root = find_root()
    study = args.study or params.tune.study_name
    url = storage.storage_url(params.tune, root, args.storage)
    if args.best:
        from mnistflow.tuning.best import run_best

        return run_best(params, root, study, url, REPORTS_DIR / study, not args.no_exp)
    from mnistflow.tuning.worker import run_worker

    run_worker(params, root, study, url, args.trials)
    return 0
