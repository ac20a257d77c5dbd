"""Sparing short commands the cyclic garbage collector's walks over MLflow's objects.

A full collection walks every tracked object. Once MLflow has opened a store that is ~270,000
objects, and reading 1,000 runs from the store adds ~50,000 ORM objects, so the collector runs
again and again over the same modules while the command works (~1 of the leaderboard's ~4 CPU
s), and the interpreter's shutdown collects everything once more (~0.7 s): see
docs/benchmarks.md. Reference counting still frees everything that is not in a cycle.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_exit_registered = False


@contextmanager
def paused_gc(pause: bool = True) -> Iterator[None]:
    """Disable the cyclic collector inside the block (if ``pause``); restore it afterwards.

    Cycles made meanwhile (SQLAlchemy's objects and their back-references) wait for the next
    collection after the block, or for the process's exit: fine for a command that reads the
    store once. No collection is forced at the end, so an in-process caller (a test) only
    gets the collector back, to run when its thresholds say so.
    """
    was_enabled = gc.isenabled()
    if pause:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def no_collection_at_exit() -> None:
    """At the interpreter's exit, freeze what is left, so its shutdown does not collect it.

    Registered before the command imports MLflow, the freeze runs after MLflow's own atexit
    handlers (atexit is last in, first out). Objects still alive then are not collected but
    freed with the process, and finalizers of those in cycles do not run: Python never
    promises that they run at exit, the project's files are written and closed by then
    (``util.fileio``), and MLflow's store commits each write before the command returns.
    """
    global _exit_registered
    if not _exit_registered:
        atexit.register(gc.freeze)
        _exit_registered = True
