"""Where a study lives and how a worker joins it: Optuna's RDB storage with heartbeats.

Locally an sqlite file ``<root>/optuna.db``; for a team a PostgreSQL database (``postgresql://``
URLs get SQLAlchemy's psycopg 3 driver). Both are Optuna's RDBStorage, the storage that
implements heartbeats: a RUNNING trial whose worker stopped beating for ``grace_period``
seconds is failed by the next worker that starts a trial, and ``RetryFailedTrialCallback``
enqueues a copy of it (system attr ``failed_trial`` = the original number). Optuna's journal
file storage is multi-process safe too but has no heartbeat, so a killed worker's trial would
stay RUNNING for ever.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from mnistflow.config import TuneConfig
from mnistflow.tracking.store import redact
from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)

STORAGE_ENV = "MNISTFLOW_OPTUNA_STORAGE"
STORAGE_FILE = "optuna.db"
SQLITE_BUSY_TIMEOUT_S = 60  # wait for another worker's write instead of "database is locked"
CONNECT_ATTEMPTS = 5  # first workers on a fresh database race to create the tables


class StudyError(UserError):
    """The study's storage cannot be used, or the study has nothing to report yet."""

    exit_code = 4


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


def open_storage(url: str, cfg: TuneConfig) -> Any:
    """Optuna's RDBStorage at ``url`` with heartbeats and retry of dead workers' trials.

    Raises:
        StudyError: the database cannot be reached or set up (the message hides passwords).
    """
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback
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
                    return _rdb(url, cfg, RDBStorage, RetryFailedTrialCallback)
            return _rdb(url, cfg, RDBStorage, RetryFailedTrialCallback)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise StudyError(f"Optuna storage {redact(url)}: {exc}".splitlines()[0]) from exc
            log.info("storage %s not ready (%s); retrying", redact(url), type(exc).__name__)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _rdb(url: str, cfg: TuneConfig, rdb: Any, retry: Any) -> Any:
    return rdb(
        url,
        engine_kwargs=_engine_kwargs(url),
        heartbeat_interval=cfg.heartbeat_interval,
        grace_period=cfg.grace_period,
        failed_trial_callback=retry(max_retry=cfg.max_retry),
    )


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
    cfg: TuneConfig, name: str, url: str, worker_seed: int, storage: Any | None = None
) -> Any:
    """Create the study ``name`` or join it (``load_if_exists``): every worker calls this."""
    import optuna

    storage = storage if storage is not None else open_storage(url, cfg)
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
