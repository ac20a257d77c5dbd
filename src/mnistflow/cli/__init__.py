"""The ``mnistflow`` command: one subcommand per module of this package.

Adding a subcommand: write ``cli/<name>.py`` with ``add_arguments(parser)``, which must call
``parser.set_defaults(handler=<function(args) -> int>)``, and add it to ``COMMANDS``. The
handler raises a :class:`~mnistflow.util.errors.UserError` for anything the user can fix
(one line, its exit code). Modules import MLflow inside their functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mnistflow.config import PARAMS_FILE
from mnistflow.util.collector import no_collection_at_exit, paused_gc
from mnistflow.util.entrypoint import run_main

# name -> (module in this package, one-line help); a new subcommand is one more entry.
COMMANDS: dict[str, tuple[str, str]] = {
    "leaderboard": (
        "leaderboard",
        "rank every MLflow run of the experiment into the leaderboard files (markdown + PNG)",
    ),
    "register": (
        "register",
        "register the best (or --run) run's model of the dataset under an alias; --rollback",
    ),
    "predict": (
        "predict",
        "classify image files with the champion model (or --run RUN_ID's model)",
    ),
    "serve": (
        "serve",
        "serve the champion model on 127.0.0.1 (mlflow models serve): images in, digits out",
    ),
    "ui": ("ui", "serve the MLflow UI for the project's store on 127.0.0.1"),
    "wait-queue": (
        "wait_queue",
        "wait for the DVC experiment queue to finish; exit 1 naming any failed experiment",
    ),
    "best": ("best", "run the best configuration (presets/best.yaml) as a DVC experiment"),
    "reproduce": (
        "reproduce",
        "rerun a logged MLflow run in a temporary worktree and compare its metrics",
    ),
    "doctor": (
        "doctor",
        "list RUNNING MLflow runs whose process is gone; --fix marks them FAILED",
    ),
    "server": (
        "server",
        "run the team's MLflow tracking server (PostgreSQL, proxied artifacts, basic auth)",
    ),
    "adduser": ("adduser", "create a user on the team's MLflow server (as its admin)"),
    "sync": ("sync", "copy the runs of the local MLflow store to a tracking server, once each"),
    "tune": ("tune", "run or join an Optuna study of params.yaml's tune.space; --best reports"),
}

# Short commands that read the store once and exit: the cyclic garbage collector is paused
# for them and the interpreter's shutdown does not collect (util/collector.py; ~1.7 CPU s of
# the leaderboard at 1,000 runs). Not the long-lived (serve, ui, server, tune, wait-queue) or
# the ones that copy or run without bound (sync, best, reproduce).
GC_PAUSED = frozenset({"leaderboard", "register"})


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not a global option), if any."""
    words = iter(argv)
    for word in words:
        if word in ("--params", "--log-level"):
            next(words, None)  # the option's value
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand of COMMANDS.

    Args:
        only: set up the options of this subcommand only (``""``: of none); the others are
            listed with their help but their modules are not imported, since importing all
            of them (pandas, sklearn, mlflow...) costs every command seconds of start-up.
    """
    parser = argparse.ArgumentParser(
        prog="mnistflow",
        description="Compare, register and use the runs of the pipeline (see README).",
    )
    parser.add_argument(
        "--params",
        default=PARAMS_FILE,
        help="the params file (default: params.yaml in the current directory)",
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO (default; env MNISTFLOW_LOG), WARNING..."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            importlib.import_module(f"{__name__}.{module_name}").add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mnistflow``; returns the exit code (also used by ``sys.exit``)."""
    words = sys.argv[1:] if argv is None else list(argv)
    chosen = chosen_command(words)
    if chosen in GC_PAUSED:
        no_collection_at_exit()  # registered first, so it runs after every other atexit handler
    # paused before the subcommand's imports too: they are a third of the objects walked
    with paused_gc(chosen in GC_PAUSED):
        args = build_parser(chosen or "").parse_args(words)
        return run_main(lambda: args.handler(args), f"mnistflow {args.command}", args.log_level)


if __name__ == "__main__":
    sys.exit(main())
