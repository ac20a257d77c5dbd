"""Online augmentation: each epoch's features are fresh distortions of the base training rows,
prepared one epoch ahead on a second process.

:func:`epoch_features` is pure: the features of epoch ``e`` depend on the base rows, the
encoding, ``encode.augment`` and ``e`` only (:func:`mnistflow.data.augment.epoch_seeds`), so
a run is reproducible bit for bit wherever they are computed. :class:`EpochFeed` computes
epoch ``e + 1`` in a forked child, into the second of two shared buffers, while the caller
trains on epoch ``e``: nothing beyond these two epochs is ever materialised. When the caller
asks for epoch ``e + 1`` before the child has finished it, the caller distorts the chunks the
child has not yet taken (a shared chunk counter), so both cores work while distortion is the
slower half. Which process computes a chunk does not change its values.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import multiprocessing
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType

import numpy as np

from mnistflow.config import AugmentConfig
from mnistflow.data import augment
from mnistflow.data.encode import Encoding, flatten
from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2): a signal the child gets when its parent dies
POLL_S = 0.5  # how often the waiting parent checks that the child is still alive
STOP_TIMEOUT_S = 5.0


class AugmentWorkerError(UserError):
    """The process preparing the next epoch failed or died (e.g. killed for lack of memory)."""


@dataclass(frozen=True)
class OnlineData:
    """What online augmentation needs besides the features: how to turn rows back into
    images and the distortions to draw (``encode.augment``)."""

    encoding: Encoding
    image_shape: tuple[int, int]
    augment: AugmentConfig
    background: bool = True  # prepare the next epoch on a second process


def epoch_features(
    X: np.ndarray,
    data: OnlineData,
    epoch: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The features of online epoch ``epoch`` (1-based): every base row unscaled to its
    image, distorted by :func:`augment.epoch_batch`'s streams, and scaled back.

    Chunk by chunk (``augment.CHUNK`` rows), so no full-size temporary is made; the result
    equals ``scale(flatten(epoch_batch(unscale(X) as images)))`` bit for bit.

    Args:
        X: base feature rows (n, h*w), float32, as the encode stage wrote them.
        data: encoding, image shape and distortion settings.
        epoch: the 1-based epoch.
        out: where to write (float32, X's shape); a new array when None.

    Returns:
        ``out``: float32 (n, h*w).
    """
    h, w = data.image_shape
    if X.ndim != 2 or X.shape[1] != h * w:
        raise ValueError(f"epoch_features: rows {X.shape} are not images of {h}x{w}")
    if out is None:
        out = np.empty(X.shape, dtype=np.float32)
    if out.shape != X.shape or out.dtype != np.float32:
        raise ValueError(f"epoch_features: out is {out.dtype} {out.shape}; expected {X.shape}")
    seeds = augment.epoch_seeds(data.augment.seed, epoch, len(X))
    for j in range(len(seeds)):
        _write_chunk(X, data, seeds, j, out)
    return out


def _write_chunk(
    X: np.ndarray, data: OnlineData, seeds: list[np.random.SeedSequence], j: int, out: np.ndarray
) -> None:
    """Chunk ``j`` of an epoch (``seeds``: its streams) into ``out``: unscale, distort, scale."""
    h, w = data.image_shape
    start = j * augment.CHUNK
    rows = X[start : start + augment.CHUNK]
    images = data.encoding.unscale(rows).reshape(len(rows), h, w)
    distorted = augment.distort(images, data.augment, seeds[j])
    out[start : start + len(rows)] = data.encoding.scale(flatten(distorted))


class _Chunks:
    """The chunk counter both processes take an epoch's chunks from (shared memory, made
    before the fork): each chunk is computed exactly once, by whichever process takes it."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self._next = context.Value(ctypes.c_int, 0)

    def reset(self) -> None:
        """Start a new epoch (only while no process is taking chunks)."""
        with self._next.get_lock():
            self._next.value = 0

    def take(self, total: int) -> int | None:
        """The next chunk index, or None when all ``total`` have been taken."""
        with self._next.get_lock():
            j = self._next.value
            if j >= total:
                return None
            self._next.value = j + 1
            return j

    def fill(self, X: np.ndarray, data: OnlineData, epoch: int, out: np.ndarray) -> int:
        """Compute chunks of ``epoch`` into ``out`` until none is left; how many it did."""
        seeds = augment.epoch_seeds(data.augment.seed, epoch, len(X))
        done = 0
        while (j := self.take(len(seeds))) is not None:
            _write_chunk(X, data, seeds, j, out)
            done += 1
        return done


def _slot(epoch: int) -> int:
    """Which of the two shared buffers holds ``epoch`` (1-based): they alternate."""
    return (epoch - 1) % 2


def _die_with_parent(parent: int) -> None:
    """Have Linux SIGKILL this child when its parent dies (even by SIGKILL): no orphan.

    Strictly, when the parent *thread* that forked it ends: :class:`EpochFeed` is entered
    from the main thread (the train stage, a tuning trial), which lives as long as the process.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _serve(
    conn: Connection,
    parent: int,
    X: np.ndarray,
    data: OnlineData,
    slots: list[np.ndarray],
    chunks: _Chunks,
) -> None:
    """The child: for each ``(epoch, slot)`` received, take the epoch's chunks into the slot
    until none is left and answer ``("done", epoch)``; stop when the parent hangs up (or
    stops it)."""
    # The parent decides about interruptions: Ctrl-C reaches the whole process group, and
    # the parent then stops this child with SIGTERM (the default action: exit at once).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        epoch, slot = request
        try:
            chunks.fill(X, data, epoch, slots[slot])
        except Exception:  # sent to the parent, which raises it: nothing is swallowed
            conn.send(("error", traceback.format_exc()))
            return
        conn.send(("done", epoch))


class EpochFeed:
    """The features of epochs 1..``epochs`` in order, each prepared while the previous one
    trains (``data.background``) or on demand in this process.

    Use as a context manager: leaving it, normally or by an exception (``Interrupted`` on
    SIGTERM included), stops the child and waits for it, so no process outlives the block.
    The array :meth:`get` returns is valid until the next call.
    """

    def __init__(self, X: np.ndarray, data: OnlineData, epochs: int) -> None:
        self._X, self._data, self._epochs = X, data, epochs
        self._slots: list[np.ndarray] = []
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._requested = 0  # the last epoch asked of the child
        self._received = 0  # the last epoch it delivered
        self._chunks: _Chunks | None = None
        self.helped = 0  # chunks this process computed because the child was behind

    def __enter__(self) -> EpochFeed:
        if not self._data.background:
            return self
        # Anonymous shared memory, mapped before the fork: both processes see the same
        # pages and nothing named is left behind in /dev/shm if either is killed.
        nbytes = self._X.shape[0] * self._X.shape[1] * 4
        self._slots = [
            np.frombuffer(
                mmap.mmap(-1, max(nbytes, 1)), dtype=np.float32, count=self._X.size
            ).reshape(self._X.shape)
            for _ in range(2)
        ]
        # fork: the child shares the base rows copy-on-write instead of receiving a pickle.
        context = multiprocessing.get_context("fork")
        self._chunks = _Chunks(context)
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child_conn, os.getpid(), self._X, self._data, self._slots, self._chunks),
            name="mnistflow-augment",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        log.info("online augmentation: epochs prepared on process %d", self._process.pid)
        self._request(1)
        return self

    def _request(self, epoch: int) -> None:
        assert self._conn is not None
        assert self._chunks is not None
        self._chunks.reset()  # the child is idle: it answered for the previous epoch
        self._conn.send((epoch, _slot(epoch)))
        self._requested = epoch

    def _wait(self, epoch: int) -> None:
        process = self._process
        assert self._conn is not None
        assert process is not None

        def died() -> AugmentWorkerError:
            return AugmentWorkerError(
                f"the online augmentation process died preparing epoch {epoch} (exit code "
                f"{process.exitcode}; out of memory?)"
            )

        while not self._conn.poll(POLL_S):
            if not process.is_alive():
                raise died()
        try:
            kind, value = self._conn.recv()
        except (EOFError, ConnectionResetError) as exc:  # its end closed: exiting or gone
            process.join(STOP_TIMEOUT_S)
            raise died() from exc
        if kind == "error":
            raise AugmentWorkerError(f"online augmentation failed for epoch {epoch}:\n{value}")
        if value != epoch:
            raise RuntimeError(f"online augmentation: got epoch {value}, expected {epoch}")

    def get(self, epoch: int) -> np.ndarray:
        """The features of ``epoch``; epochs must be asked for in order, 1, 2, ..."""
        if self._process is None:
            return epoch_features(self._X, self._data, epoch)
        if epoch != self._received + 1 or epoch != self._requested:
            raise ValueError(f"EpochFeed.get({epoch}): expected epoch {self._received + 1}")
        assert self._chunks is not None
        features = self._slots[_slot(epoch)]
        # The chunks the child has not taken yet: this core is idle until they are done.
        self.helped += self._chunks.fill(self._X, self._data, epoch, features)
        self._wait(epoch)
        self._received = epoch
        if epoch < self._epochs:
            # The other slot held epoch - 1, which the caller has finished training on.
            self._request(epoch + 1)
        return features

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child (politely when idle, SIGTERM when busy) and wait for it."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self._chunks = None
        self._slots = []  # the shared buffers go once the caller drops the last array
        if process is None or conn is None:
            return
        try:
            if process.is_alive():
                process.terminate()  # mid-epoch work is useless now; SIGTERM ends it at once
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        finally:
            conn.close()
