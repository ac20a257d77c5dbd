"""Where runs go: the MLflow tracking URI and the experiment, created once under a lock.

Store: ``MLFLOW_TRACKING_URI`` wins, else params ``mlflow.tracking_uri``, else an sqlite file
``<root>/mlflow.db`` where ``<root>`` is ``$DVC_ROOT`` (set by DVC, also inside queued
experiments' temporary workspaces) or the nearest ancestor of the working directory holding
``.dvc/``. So every run lands in the main workspace's store, never in a throw-away copy.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import psutil
from filelock import FileLock, Timeout

from mnistflow.config import MlflowConfig, baseline_accuracy, config, dataset_spec
from mnistflow.internals import mlflow_schema_head
from mnistflow.util.errors import UserError
from mnistflow.util.workspace import find_root

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300  # a store creation takes seconds; minutes means a stuck process
PREFLIGHT_TIMEOUT_S = 10.0  # per request; a healthy server answers in milliseconds
STORE_WAIT_ENV = "MNISTFLOW_STORE_WAIT_S"
# sqlite: how long the preflight waits for another process's write lock on the store. A
# writer holds it for milliseconds (four queue workers included); half a minute means stuck.
DEFAULT_STORE_WAIT_S = 30.0
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


class TrackingError(UserError):
    """The MLflow store or run cannot be used as configured."""

    exit_code = 4


# Read by `mlflow server` and `mlflow ui` for --backend-store-uri: a store URI (which may hold
# a password) passed in the environment, never on a command line others see in `ps`.
BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"


def store_root(cwd: Path) -> Path:
    """The project root that holds the store (``workspace.find_root``), as a TrackingError."""
    try:
        return find_root(cwd)
    except FileNotFoundError as exc:
        raise TrackingError(f"{exc}; run from the repository root") from exc


def resolve_tracking_uri(cfg: MlflowConfig, cwd: Path) -> str:
    """The tracking URI by the precedence in the module docstring."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if cfg.tracking_uri.strip():
        return cfg.tracking_uri.strip()
    return f"sqlite:///{store_root(cwd) / STORE_FILE}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI, else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:////abs/path -> path "//abs/path"; sqlite:///rel -> "/rel"
    path = unquote(parsed.path)
    return Path(path[1:]) if path.startswith("/") else Path(path)


def _sqlite_db(uri: str) -> Path | None:
    """The absolute database file of an sqlite URI, else None."""
    db = sqlite_file(uri)
    return None if db is None else (db if db.is_absolute() else Path.cwd() / db)


def store_lock(db: Path) -> Path:
    """The file lock every mnistflow process takes to create or repair the store ``db``."""
    return db.with_name(db.name + ".lock")


def ensure_experiment(uri: str, name: str, root: Path) -> str:
    """Create the store and the experiment once (under a file lock); return its id.

    Concurrent first runs (queued experiments) would otherwise race to create the sqlite
    tables and crash with "table experiments already exists". New experiments store their
    artifacts in ``<store folder>/mlartifacts`` (for an sqlite store: beside the database,
    i.e. ``<root>/mlartifacts`` by default), never in a temporary workspace.
    """
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import OperationalError

    db = _sqlite_db(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_file = store_lock(db)
        artifacts: str | None = (db.parent / ARTIFACTS_DIR).resolve().as_uri()
    else:
        lock_file = root / f"{STORE_FILE}.lock"
        # a tracking server decides where artifacts go; a local folder store gets ours
        remote = urlparse(uri).scheme in ("http", "https", "databricks")
        artifacts = None if remote else (root / ARTIFACTS_DIR).resolve().as_uri()
    try:
        with FileLock(str(lock_file), timeout=LOCK_TIMEOUT_S):
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                log.info("creating MLflow experiment %r in %s", name, redact(uri))
                try:
                    return client.create_experiment(name, artifact_location=artifacts)
                except MlflowException as exc:
                    # the lock is per machine: on a shared server another machine may win
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp = client.get_experiment_by_name(name)
    except Timeout as exc:
        raise TrackingError(f"{lock_file}: still locked after {LOCK_TIMEOUT_S} s") from exc
    except (MlflowException, OperationalError) as exc:
        # e.g. sqlite locked by another process since the preflight: still before any work
        if isinstance(exc, MlflowException) and exc.error_code != "TEMPORARILY_UNAVAILABLE":
            raise
        first = str(getattr(exc, "message", exc)).strip().splitlines()[0][:300]
        raise TrackingError(f"MLflow store {redact(uri)} cannot be used now: {first}") from exc
    if exp.lifecycle_stage == LifecycleStage.DELETED:
        raise TrackingError(
            f"MLflow experiment {name!r} (mlflow.experiment_name) is deleted in {uri}: restore "
            "it (mlflow experiments restore) or choose another name"
        )
    return exp.experiment_id


def absolute_uri(uri: str, cwd: Path) -> str:
    """A relative ``sqlite:///file`` made absolute, so a process elsewhere uses the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((cwd / uri[len(prefix) :]).resolve())
    return uri


@dataclass(frozen=True)
class StoreSettings:
    """What the read-side commands need from params.yaml: the store, the dataset and its
    baseline."""

    experiment_name: str
    tracking_uri: str
    baseline_accuracy: float
    dataset: str


def store_settings(params: dict) -> StoreSettings:
    """The MLflow store the pipeline logs to and the selected dataset's baseline, from params."""
    mlflow_cfg = config(params, "mlflow", MlflowConfig)
    return StoreSettings(
        experiment_name=mlflow_cfg.experiment_name,
        baseline_accuracy=baseline_accuracy(params),
        dataset=dataset_spec(params)[0],
        # last: the store is only looked for once the params are known to be valid
        tracking_uri=resolve_tracking_uri(mlflow_cfg, Path.cwd()),
    )


def redact(uri: str) -> str:
    """``uri`` without a ``user:password@`` part, for messages."""
    parsed = urlparse(uri)
    if parsed.password is None and parsed.username is None:
        return uri
    return parsed._replace(
        netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")
    ).geturl()


def _http_get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """GET ``url``: (status, body start); HTTP errors are returned, not raised."""
    context = None
    if url.startswith("https://"):
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
        context = ssl.create_default_context(cafile=None if insecure else cafile)
        if insecure:  # as MLflow's client does with this variable
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(
            request, timeout=PREFLIGHT_TIMEOUT_S, context=context
        ) as response:
            return response.status, response.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode(errors="replace")


def _server_message(body: str) -> str:
    """The ``message`` of an MLflow JSON error, else the body's first line."""
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return body.strip().splitlines()[0][:300] if body.strip() else ""


def env_seconds(name: str, default: float) -> float | None:
    """The environment variable ``name`` as seconds >= 0, ``default`` when unset or empty,
    None when it is not such a number."""
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        return None
    return value if value >= 0 else None


def store_wait_s() -> float:
    """Seconds to wait for an sqlite store's write lock: ``MNISTFLOW_STORE_WAIT_S`` or 30."""
    value = env_seconds(STORE_WAIT_ENV, DEFAULT_STORE_WAIT_S)
    if value is None:
        text = os.environ.get(STORE_WAIT_ENV, "")
        log.warning("%s=%r is not a number >= 0; using %g", STORE_WAIT_ENV, text, 30)
        return DEFAULT_STORE_WAIT_S
    return value


def _holders(db: Path) -> list[int]:
    """Pids of other processes on this machine that have ``db`` open (those we may see)."""
    found, target = [], db.resolve()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if any(Path(f.path) == target for f in proc.open_files()):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue  # gone, or another user's: not ours to judge
    return found


def _has_user_data(conn: sqlite3.Connection, tables: set[str]) -> bool:
    """Whether a store holds anything a person made: runs, named experiments, models."""
    queries = {
        "runs": "SELECT count(*) FROM runs",
        "experiments": "SELECT count(*) FROM experiments WHERE name != 'Default'",
        "registered_models": "SELECT count(*) FROM registered_models",
    }
    return any(conn.execute(q).fetchone()[0] for t, q in queries.items() if t in tables)


def _set_aside(db: Path) -> Path:
    """Rename a broken store (and its journal) out of the way; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = db.with_name(f"{db.name}.incomplete-{stamp}")
    for suffix in ("-journal", "-wal", "-shm"):
        extra = db.with_name(db.name + suffix)
        if extra.exists():
            extra.rename(target.with_name(target.name + suffix))
    db.rename(target)
    return target


def _write_lock(conn: sqlite3.Connection, uri: str, wait: float) -> None:
    """Begin a write transaction, waiting at most ``wait`` s for another writer (said once)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        log.info(
            "MLflow store %s is locked by another process: waiting up to %g s", redact(uri), wait
        )
        conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        conn.execute("BEGIN IMMEDIATE")


def check_sqlite_store(uri: str) -> None:
    """Preflight of an sqlite store: writable within :func:`store_wait_s`, and not left
    half-created by a process killed while MLflow created it.

    MLflow creates a store by ~70 schema migrations that sqlite does not run in one
    transaction: a SIGKILL in between leaves tables but an old schema revision, and every
    later open fails (MLflow's own migration trips over the columns already added). Such a
    store is renamed aside (``<db>.incomplete-<time>``) so a new one is created, but only when
    it holds no runs, named experiments or registered models and no other process has it
    open; otherwise the error says what to do. Runs under the store's file lock.

    Raises:
        TrackingError: locked longer than the wait, not a database, or an old/half-migrated
            schema holding data.
    """
    db = _sqlite_db(uri)
    if db is None or not db.is_file() or db.stat().st_size == 0:
        return  # MLflow creates it (an empty file is an empty database)
    wait = store_wait_s()
    lock_file = store_lock(db)
    try:
        with FileLock(str(lock_file), timeout=LOCK_TIMEOUT_S):
            conn = sqlite3.connect(db, timeout=0, isolation_level=None)
            try:
                _write_lock(conn, uri, wait)
                tables = {
                    name
                    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                version = None
                if "alembic_version" in tables:
                    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                    version = row[0] if row else None
                data = _has_user_data(conn, tables)
                conn.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise TrackingError(f"MLflow store {uri}: {exc}") from exc
                raise TrackingError(
                    f"MLflow store {uri} is locked by another process (waited {wait:g} s, "
                    f"{STORE_WAIT_ENV}): find it with `fuser {db}`, let it finish or stop it"
                ) from exc
            except sqlite3.DatabaseError as exc:
                raise TrackingError(f"MLflow store {uri}: {exc}") from exc
            finally:
                conn.close()
            head = mlflow_schema_head()
            if not tables or version == head:
                return
            found = f"schema revision {version or 'none'}, this MLflow needs {head}"
            if data:
                raise TrackingError(
                    f"MLflow store {uri} holds runs or models but has {found}: if an older "
                    f"MLflow made it, back the file up, then run `mlflow db upgrade {uri}`"
                )
            holders = _holders(db)
            if holders:
                raise TrackingError(
                    f"MLflow store {uri} is incomplete ({found}) and open in process "
                    f"{', '.join(map(str, holders))}, which may be creating it: let it finish"
                )
            moved = _set_aside(db)
            log.warning(
                "MLflow store %s was left half-created (%s; no runs in it), likely by a process "
                "killed while creating it: moved to %s, a new store is created",
                uri,
                found,
                moved,
            )
    except Timeout as exc:
        raise TrackingError(f"{lock_file}: still locked after {LOCK_TIMEOUT_S} s") from exc


def check_store(uri: str) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    For ``sqlite:///`` URIs: :func:`check_sqlite_store` (locked, half-created). For
    ``http(s)://`` URIs: ``GET /health`` (the server and its database are up), then an
    authenticated ``experiments/search`` (max_results=1) with MLFLOW_TRACKING_USERNAME/PASSWORD
    (or MLFLOW_TRACKING_TOKEN). Other URIs (folders) are checked when opened. Messages
    name the URI, never a password.

    Raises:
        TrackingError: no server, an unhealthy server, refused credentials, a locked or
            broken sqlite store.
    """
    if urlparse(uri).scheme == "sqlite":
        check_sqlite_store(uri)
        return
    check_server(uri)


def check_server(uri: str) -> None:
    """The ``http(s)://`` half of :func:`check_store`; nothing for other URIs.

    The read-side commands (leaderboard, register, predict, reproduce) call this one: a local
    sqlite store needs no write lock to be read.

    Raises:
        TrackingError: no server, an unhealthy server, or refused credentials.
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return
    shown = redact(uri)
    base = uri.rstrip("/")
    headers: dict[str, str] = {}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    if user or password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {pair}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        status, body = _http_get(f"{base}/health", {})
        if status != 200:
            raise TrackingError(
                f"tracking server at {shown} is not healthy (GET /health: HTTP {status} "
                f"{_server_message(body)}): is its backend database up and created?"
            )
        status, body = _http_get(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"no tracking server at {shown} ({reason})") from exc
    if status in (401, 403):
        given = "" if "Authorization" in headers else ": none are set"
        raise TrackingError(
            f"credentials refused by {shown} (MLFLOW_TRACKING_USERNAME/PASSWORD{given}; "
            f"HTTP {status})"
        )
    if status >= 500:
        raise TrackingError(
            f"tracking server at {shown} failed (HTTP {status}: {_server_message(body)}); "
            "its backend database may be missing or down"
        )
    if status != 200:
        raise TrackingError(f"tracking server at {shown} answered HTTP {status}: is it MLflow?")
    log.info("tracking server %s: healthy, credentials accepted", shown)
