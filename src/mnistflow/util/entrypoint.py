"""How every program of the project starts and ends: the DVC stages and ``mnistflow``.

One place for the edge: logging, signals, and turning expected failures into one line and a
documented exit code (:mod:`mnistflow.util.errors`). Set ``MNISTFLOW_TRACEBACK=1`` to see the
traceback of an expected failure too; a bug always shows its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from mnistflow import numerics
from mnistflow.util import logs
from mnistflow.util.errors import UserError
from mnistflow.util.signals import Interrupted, raise_on_signals

log = logging.getLogger(__name__)

TRACEBACK_ENV = "MNISTFLOW_TRACEBACK"
FILE_ERROR_EXIT = 2
DISK_FULL_EXIT = 6
# Writing failed for lack of room: the user's to fix (free space, quota, `ulimit -f`), not a bug.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# A missing or unreadable file named on the command line or in params is the user's to fix.
FILE_ERRORS: tuple[type[Exception], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def run_main(main: Callable[[], int | None], name: str, log_level: str | None = None) -> int:
    """Run ``main`` and return the process exit code.

    Args:
        main: the program; returns an exit code or None (0).
        name: what to call it in the one-line error (e.g. ``stage train``).
        log_level: overrides ``MNISTFLOW_LOG``.
    """
    logs.configure(log_level)
    # MLflow's telemetry opt-out is set by `import mnistflow` (before MLflow can be imported).
    # While logging a model, MLflow patches os.environ to record which variables are read,
    # into a set it then sorts; our heartbeat and system-metrics threads read variables
    # (the server's credentials) meanwhile, and the sort failed with "Set changed size during
    # iteration" (1 of 8 concurrent runs against the server, benchmarks/team.py). The record
    # lists API keys of GenAI models; ours need none.
    os.environ.setdefault("MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING", "false")
    try:
        numerics.check()  # a bad MNISTFLOW_NUMERICS, or a CPU the pin cannot serve: one line
        with raise_on_signals():
            return int(main() or 0)
    except Interrupted as exc:
        log.error("%s %s: stopped; outputs it had not finished were not written", name, exc)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS and not isinstance(exc, FILE_ERRORS):
            raise
        if os.environ.get(TRACEBACK_ENV):
            log.exception("%s failed", name)
        log.error("%s: %s", name, exc)
        return DISK_FULL_EXIT if exc.errno in DISK_FULL_ERRNOS else FILE_ERROR_EXIT
    except UserError as exc:
        if os.environ.get(TRACEBACK_ENV):
            log.exception("%s failed", name)
        log.error("%s: %s", name, exc)
        return exc.exit_code
