"""``mnistflow tune``: run (or join) an Optuna study with N worker processes; ``--promote N``
turns trial N into a DVC experiment, ``--best`` the best one (with the study report)
(:mod:`mnistflow.tuning`, docs/tuning.md)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from mnistflow.config import Params, load_config
from mnistflow.util.errors import UserError
from mnistflow.util.workspace import find_root

log = logging.getLogger(__name__)

REPORTS_DIR = Path("reports/tune")
WORKERS_ENV = "MNISTFLOW_TUNE_WORKERS"
# One BLAS thread per worker process (the workers share the cores); train.threads still sets
# the threads of each fit. Not left to numerics.PINNED: it sets OPENBLAS_NUM_THREADS only under
# the pin, not under MNISTFLOW_NUMERICS=native or on a CPU below x86-64-v3 (tested).
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow tune``."""
    parser.add_argument("--study", help="study name (default: tune.study_name)")
    parser.add_argument(
        "--storage",
        help="Optuna storage URL (default: $MNISTFLOW_OPTUNA_STORAGE, tune.storage, "
        "sqlite:///<root>/optuna.db)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"worker processes on this machine (default: ${WORKERS_ENV}, else one per core)",
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="at most this many trials in each worker"
    )
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--best",
        action="store_true",
        help="run the best trial as DVC experiment <study>-best and write reports/tune/<study>/",
    )
    chosen.add_argument(
        "--promote",
        type=int,
        metavar="TRIAL",
        help="run trial number TRIAL as DVC experiment <study>-t<TRIAL>",
    )
    parser.add_argument(
        "--no-exp", action="store_true", help="with --best: write the report only, no experiment"
    )
    parser.set_defaults(handler=command)


def workers_wanted(given: int | None) -> int:
    """``--workers``, else ``$MNISTFLOW_TUNE_WORKERS``, else one per core.

    Raises:
        UserError: not a positive number.
    """
    raw = given if given is not None else os.environ.get(WORKERS_ENV, "").strip() or None
    if raw is None:  # the cores this process may use
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        source = "--workers" if given is not None else f"${WORKERS_ENV}"
        raise UserError(f"{source} must be a positive number of workers, got {raw!r}")
    return n


def command(args: argparse.Namespace) -> int:
    """Run the workers, ``--promote`` or ``--best``."""
    from mnistflow.tuning import storage

    params = load_config(args.params)  # the whole file, search space included, first
    root = find_root()
    study = args.study or params.tune.study_name
    url = storage.storage_url(params.tune, root, args.storage)
    if args.best or args.promote is not None:
        from mnistflow.tuning import best

        if args.promote is not None:
            return best.run_promote(params, root, study, url, args.promote)
        return best.run_best(params, root, study, url, REPORTS_DIR / study, not args.no_exp)
    n = workers_wanted(args.workers)
    if n == 1:
        return start_worker(params, root, study, url, args.trials)
    argv = ["--params", str(Path(args.params).resolve())]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    argv += ["tune", "--workers", "1", "--study", study]
    if args.trials is not None:
        argv += ["--trials", str(args.trials)]
    from mnistflow.tuning.worker import run_pool

    return run_pool(n, argv, url)


def start_worker(params: Params, root: Path, study: str, url: str, trials: int | None) -> int:
    """Where every worker process starts (``--workers 1``, and each process of ``--workers
    N``): the per-process set-up before NumPy loads (one BLAS thread), then its share of the
    study."""
    for var in BLAS_ENV:
        os.environ[var] = "1"
    from mnistflow.tuning.worker import run_worker  # NumPy, scikit-learn, MLflow load here

    run_worker(params, root, study, url, trials)
    return 0
