"""Where a study lives and how a worker joins it: Optuna's RDB storage with heartbeats.

Locally an sqlite file ``<root>/optuna.db``; for a team a PostgreSQL database (``postgresql://``
URLs get SQLAlchemy's psycopg 3 driver). Both are Optuna's RDBStorage, the storage that
implements heartbeats: a RUNNING trial whose worker stopped beating for ``grace_period``
seconds is failed by the next worker that starts a trial, and ``RetryHeartbeatStaleTrialCallback``
enqueues a copy of it (system attr ``failed_trial`` = the original number). Optuna's journal
file storage is multi-process safe too but has no heartbeat, so a killed worker's trial would
stay RUNNING for ever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from mnistflow.config import TuneConfig
from mnistflow.tracking.store import env_seconds, redact
from mnistflow.util.errors import UserError

TrialCallback = Callable[[Any, Any], None]  # (study, FrozenTrial), as Optuna calls it
log = logging.getLogger(__name__)

STORAGE_ENV = "MNISTFLOW_OPTUNA_STORAGE"
STORAGE_FILE = "optuna.db"
SQLITE_BUSY_TIMEOUT_S = 60  # wait for another worker's write instead of "database is locked"
CONNECT_ATTEMPTS = 5  # first workers on a fresh database race to create the tables
OUTAGE_ENV = "MNISTFLOW_OPTUNA_OUTAGE_S"
OUTAGE_WAIT_S = 300  # how long a worker waits for a lost storage (a database restart) to answer


class StudyError(UserError):
    """The study's storage cannot be used, or the study has nothing to report yet."""

    exit_code = 4


class StorageLostError(Exception):
    """The storage's connection failed in another thread (Optuna's heartbeat): the trial it
    belongs to stops at its next epoch."""


def connection_lost(exc: BaseException) -> BaseException | None:
    """The lost database connection ``exc`` is, or was raised from or while handling
    (SQLAlchemy's ``OperationalError``, which Optuna wraps in ``StorageInternalError``, or
    one seen by the heartbeat thread); None for anything else (a bug, bad data)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    seen: BaseException | None = exc
    for _ in range(20):  # the chain of causes; a cycle stops here
        if seen is None:
            return None
        if isinstance(seen, (OperationalError, StorageLostError)) or (
            isinstance(seen, DBAPIError) and seen.connection_invalidated
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def outage_wait_s() -> float:
    """``$MNISTFLOW_OPTUNA_OUTAGE_S``, else :data:`OUTAGE_WAIT_S`.

    Raises:
        UserError: not a number >= 0.
    """
    wait = env_seconds(OUTAGE_ENV, OUTAGE_WAIT_S)
    if wait is None:
        raw = os.environ.get(OUTAGE_ENV, "")
        raise UserError(f"${OUTAGE_ENV} must be a number of seconds >= 0, got {raw!r}")
    return wait


def wait_for_storage(study: Any, url: str, lost: BaseException) -> None:
    """After ``lost`` (see :func:`connection_lost`): read the study until the storage answers
    again, for at most :func:`outage_wait_s` seconds.

    Raises:
        StudyError: no answer in that time (one line naming the storage, passwords hidden).
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    limit = outage_wait_s()
    cause = _first_line(connection_lost(lost) or lost)
    log.warning("lost the Optuna storage %s (%s); waiting up to %.0f s (%s) for it",
                redact(url), cause, limit, OUTAGE_ENV)  # fmt: skip
    start = time.monotonic()
    while True:
        try:
            study.get_trials(deepcopy=False)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if connection_lost(exc) is None:
                raise
            if time.monotonic() - start >= limit:
                raise StudyError(
                    f"lost the Optuna storage {redact(url)}: no answer for {limit:.0f} s "
                    f"(${OUTAGE_ENV}; {_first_line(exc)}); run `mnistflow tune` again once it is "
                    "back: the study resumes"
                ) from exc
            time.sleep(1)
            continue
        log.warning("the Optuna storage answers again after %.1f s", time.monotonic() - start)
        return


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause of ``exc`` (the driver's own words)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def retry_callback(cfg: TuneConfig, on_fail: TrialCallback | None = None) -> TrialCallback:
    """What enqueues a copy of a failed trial (at most ``tune.max_retry`` times), after
    ``on_fail(study, trial)`` has seen the trial FAIL."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with quiet_experimental():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry)
    if on_fail is None:
        return retry

    def callback(study: Any, trial: Any) -> None:
        on_fail(study, trial)
        retry(study, trial)

    return callback


def storage_url(cfg: TuneConfig, root: Path, given: str | None = None) -> str:
    """``--storage``, else ``$MNISTFLOW_OPTUNA_STORAGE``, else ``tune.storage``, else the
    sqlite file ``<root>/optuna.db``; ``postgresql://`` becomes ``postgresql+psycopg://``."""
    url = (given or os.environ.get(STORAGE_ENV, "") or cfg.storage).strip()
    if not url:
        url = f"sqlite:///{root / STORAGE_FILE}"
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def open_storage(url: str, cfg: TuneConfig, on_stale: TrialCallback | None = None) -> Any:
    """Optuna's RDBStorage at ``url`` with heartbeats and retry of dead workers' trials
    (``on_stale(study, trial)`` is called for each such trial failed, before its retry).

    Raises:
        StudyError: the database cannot be reached or set up (the message hides passwords).
    """
    import optuna
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import SQLAlchemyError

    lock = None
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(db) + ".lock")  # one process creates the tables
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            if lock is not None:
                with lock:
                    return _rdb(url, cfg, RDBStorage, on_stale)
            return _rdb(url, cfg, RDBStorage, on_stale)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise StudyError(f"Optuna storage {redact(url)}: {exc}".splitlines()[0]) from exc
            log.info("storage %s not ready (%s); retrying", redact(url), type(exc).__name__)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _rdb(url: str, cfg: TuneConfig, rdb: Any, on_stale: TrialCallback | None) -> Any:
    with quiet_experimental():
        return rdb(
            url,
            engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=cfg.grace_period,
            heartbeat_stale_trial_callback=retry_callback(cfg, on_stale),
        )


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Without Optuna's "experimental feature" notes: heartbeats and their retry callback are
    Optuna's documented way to survive dead workers, and the note would repeat in every
    worker's log. Deprecations still show."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def sampler(cfg: TuneConfig, worker_seed: int) -> Any:
    """The configured sampler seeded with ``worker_seed``."""
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=worker_seed)
    return optuna.samplers.TPESampler(seed=worker_seed)


def pruner(cfg: TuneConfig) -> Any:
    """The configured pruner (``median`` waits ``pruner_warmup_epochs`` epochs)."""
    import optuna

    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_warmup_steps=cfg.pruner_warmup_epochs)


def join_study(
    cfg: TuneConfig,
    name: str,
    url: str,
    worker_seed: int,
    storage: Any | None = None,
    on_stale: TrialCallback | None = None,
) -> Any:
    """Create the study ``name`` or join it (``load_if_exists``): every worker calls this
    (``on_stale``: see `open_storage`)."""
    import optuna

    storage = storage if storage is not None else open_storage(url, cfg, on_stale)
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler(cfg, worker_seed),
                pruner=pruner(cfg),
                direction="maximize",
                load_if_exists=True,
            )
        except optuna.exceptions.DuplicatedStudyError:  # created by another worker meanwhile
            if attempt == CONNECT_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def load_study(cfg: TuneConfig, name: str, url: str) -> Any:
    """An existing study (for ``--best``).

    Raises:
        StudyError: no study of that name in the storage.
    """
    import optuna

    storage = open_storage(url, cfg)
    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner(cfg))
    except KeyError as exc:
        raise StudyError(f"no study {name!r} in {redact(url)}") from exc
