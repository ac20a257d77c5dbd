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
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from filelock import FileLock, Timeout

from mnistflow.config import MlflowConfig, baseline_accuracy, config, dataset_spec
from mnistflow.util.errors import UserError
from mnistflow.util.workspace import find_root

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300  # a store creation takes seconds; minutes means a stuck process
PREFLIGHT_TIMEOUT_S = 10.0  # per request; a healthy server answers in milliseconds
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


class TrackingError(UserError):
    """The MLflow store or run cannot be used as configured."""

    exit_code = 4


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

    db = sqlite_file(uri)
    if db is not None:
        db = db if db.is_absolute() else (Path.cwd() / db)
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_file = db.with_name(db.name + ".lock")
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
                log.info("creating MLflow experiment %r in %s", name, uri)
                try:
                    return client.create_experiment(name, artifact_location=artifacts)
                except MlflowException as exc:
                    # the lock is per machine: on a shared server another machine may win
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp = client.get_experiment_by_name(name)
    except Timeout as exc:
        raise TrackingError(f"{lock_file}: still locked after {LOCK_TIMEOUT_S} s") from exc
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
        context = (
            ssl._create_unverified_context()
            if insecure
            else ssl.create_default_context(cafile=cafile)
        )
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


def check_store(uri: str) -> None:
    """Fail fast, before any training, when a tracking server cannot be used.

    For ``http(s)://`` URIs: ``GET /health`` (the server and its database are up), then an
    authenticated ``experiments/search`` (max_results=1) with MLFLOW_TRACKING_USERNAME/PASSWORD
    (or MLFLOW_TRACKING_TOKEN). Other URIs (sqlite, folders) are checked when opened. Messages
    name the URI, never a password.

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
