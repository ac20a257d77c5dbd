"""SIGINT/SIGTERM handling for long runs that must end cleanly (no run left RUNNING).

sklearn's stochastic solvers catch KeyboardInterrupt inside ``fit`` and return a half-trained
model as if nothing happened, so the signals are turned into :class:`Interrupted`, which
sklearn does not catch; short critical sections (starting or ending an MLflow run) hold the
signals until they are done.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


@contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("raise_on_signals() must be used in the main thread")
    previous = {s: signal.signal(s, handler) for s in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during a short critical call, then deliver them.

    Starting and ending an MLflow run must not be cut in half, else the run could stay RUNNING.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda n, _f: pending.append(n)) for s in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        if pending:
            signal.raise_signal(pending[0])
