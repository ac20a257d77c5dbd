"""The ``mnistflow`` command: one subcommand per module.

Adding a subcommand: write a module with ``add_arguments(parser)`` (which must call
``parser.set_defaults(handler=<function(args) -> int>)``) and, optionally, ``USER_ERRORS``
(exception types that are the user's to fix: reported as one line, exit code 2), then add it
to ``COMMANDS`` below. Modules import MLflow inside their functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mnistflow import logs
from mnistflow.params import PARAMS_FILE, ParamsError

log = logging.getLogger("mnistflow.cli")

# name -> (module, one-line help); a new subcommand is one more entry (see the docstring).
COMMANDS: dict[str, tuple[str, str]] = {
    "leaderboard": (
        "mnistflow.leaderboard",
        "rank every MLflow run of the experiment into the leaderboard files (markdown + PNG)",
    ),
    "register": (
        "mnistflow.registry",
        "register the best finished run's model under registry.model_name@registry.alias",
    ),
    "predict": (
        "mnistflow.predict",
        "classify image files with the champion model (or --run RUN_ID's model)",
    ),
    "ui": ("mnistflow.ui", "serve the MLflow UI for the project's store on 127.0.0.1"),
    "wait-queue": (
        "mnistflow.queue",
        "wait for the DVC experiment queue to finish; exit 1 naming any failed experiment",
    ),
    "best": (
        "mnistflow.presets",
        "run the best configuration (presets/best.yaml) as a DVC experiment",
    ),
    "reproduce": (
        "mnistflow.reproduce",
        "rerun a logged MLflow run in a temporary worktree and compare its metrics",
    ),
}
USER_ERROR_EXIT = 2
# File problems are the user's to fix too (a missing params.yaml, an unreadable image...).
FILE_ERRORS: tuple[type[Exception], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="mnistflow",
        description="Compare, register and use the runs of the MNIST pipeline (see README).",
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
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def user_errors(command: str) -> tuple[type[Exception], ...]:
    """Exception types reported without a traceback for ``command``."""
    errors: list[type[Exception]] = [ParamsError, *FILE_ERRORS]
    module = sys.modules[COMMANDS[command][0]]
    errors.extend(getattr(module, "USER_ERRORS", ()))
    tracking = sys.modules.get("mnistflow.tracking")  # only if a command imported it
    if tracking is not None:
        errors.append(tracking.TrackingError)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mnistflow``; returns the exit code (also used by ``sys.exit``)."""
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        return int(args.handler(args))
    except Exception as exc:
        if isinstance(exc, user_errors(args.command)):
            log.error("%s", exc)
            return USER_ERROR_EXIT
        raise


if __name__ == "__main__":
    sys.exit(main())
