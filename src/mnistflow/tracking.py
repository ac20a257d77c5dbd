"""MLflow glue for the pipeline: the store, the run lifecycle and everything train and
evaluate log. (The read side, leaderboard/registry/predict/reproduce, queries the store
through MLflow's client in those modules, importing it lazily to keep the CLI fast.)

Store: ``MLFLOW_TRACKING_URI`` wins, else params ``mlflow.tracking_uri``, else an sqlite file
``<root>/mlflow.db`` where ``<root>`` is ``$DVC_ROOT`` (set by DVC, also inside queued
experiments' temporary workspaces) or the nearest ancestor of the working directory holding
``.dvc/``. So every run lands in the main workspace's store, never in a throw-away copy.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

# MLflow 3 sends usage telemetry unless told not to; these machines are offline and the
# runs are nobody else's business. An explicit setting in the environment still wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import numpy as np
import yaml
from filelock import FileLock, Timeout
from mlflow.entities import LifecycleStage
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from mnistflow.model import INTERRUPT_SIGNALS, FitInterrupted
from mnistflow.params import (
    EncodeConfig,
    MlflowConfig,
    ParamsError,
    TrainConfig,
    config,
    section,
)
from mnistflow.workspace import REPRODUCES_ENV, find_root

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300  # a store creation takes seconds; minutes means a stuck process


class TrackingError(RuntimeError):
    """The MLflow store or run cannot be used as configured."""


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
    return f"sqlite:///{store_root(cwd) / 'mlflow.db'}"


def _sqlite_file(uri: str) -> Path | None:
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
    db = _sqlite_file(uri)
    if db is not None:
        db = db if db.is_absolute() else (Path.cwd() / db)
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_file = db.with_name(db.name + ".lock")
        artifacts: str | None = (db.parent / "mlartifacts").resolve().as_uri()
    else:
        lock_file = root / "mlflow.db.lock"
        # a tracking server decides where artifacts go; a local folder store gets ours
        remote = urlparse(uri).scheme in ("http", "https", "databricks")
        artifacts = None if remote else (root / "mlartifacts").resolve().as_uri()
    try:
        with FileLock(str(lock_file), timeout=LOCK_TIMEOUT_S):
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                log.info("creating MLflow experiment %r in %s", name, uri)
                return client.create_experiment(name, artifact_location=artifacts)
    except Timeout as exc:
        raise TrackingError(f"{lock_file}: still locked after {LOCK_TIMEOUT_S} s") from exc
    if exp.lifecycle_stage == LifecycleStage.DELETED:
        raise TrackingError(
            f"MLflow experiment {name!r} (mlflow.experiment_name) is deleted in {uri}: restore "
            "it (mlflow experiments restore) or choose another name"
        )
    return exp.experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"alpha": 1}}`` -> ``{"train.alpha": 1}``; lists become strings."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    """Output of a git command in ``cwd``, or None when git or the repo is unavailable."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("git %s failed: %s", " ".join(args), exc)
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_tags(cwd: Path, outputs: list[str]) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` of the workspace ('unknown' outside git).

    Pipeline outputs and ``dvc.lock`` are not counted as dirt: DVC updates them during the
    very ``dvc repro`` that is running. Nor is ``params.yaml``: every ``dvc exp run -S``
    edits it, and the run logs the params it used (the data ones via ``dataset_sha256``), so
    commit + logged params still pin the run down.
    """
    commit = _git(["rev-parse", "HEAD"], cwd)
    status = _git(["status", "--porcelain", "--untracked-files=all"], cwd)
    if commit is None or status is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    ignored = ["dvc.lock", "params.yaml", *(o.rstrip("/") for o in outputs)]
    dirty = []
    for line in status.splitlines():
        path = line[3:].split(" -> ")[-1].strip('"')
        if not any(path == o or path.startswith(o + "/") for o in ignored):
            dirty.append(path)
    if dirty:
        log.info("git tree dirty: %s", ", ".join(dirty[:10]))
    return {"git_commit": commit.strip(), "git_dirty": "true" if dirty else "false"}


def _baseline_view(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define the baseline configuration, validated and normalised."""
    return {
        "data.dataset": section(params, "data.dataset"),
        "train": config(params, "train", TrainConfig).as_dict(),
        "encode": config(params, "encode", EncodeConfig).as_dict(),
    }


def is_baseline(params: Mapping[str, Any], cwd: Path) -> str:
    """'true' if dataset, train and encode params equal those of the baseline revision.

    The baseline revision is ``$DVC_EXP_BASELINE_REV`` (set by ``dvc exp run``) else HEAD;
    'unknown' if its params.yaml cannot be read or validated.
    """
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    text = _git(["show", f"{rev}:./params.yaml"], cwd)
    if text is None and os.environ.get("DVC_ROOT"):
        text = _git(["show", f"{rev}:params.yaml"], Path(os.environ["DVC_ROOT"]))
    if text is None:
        return "unknown"
    try:
        base = yaml.safe_load(text)
        same = _baseline_view(base) == _baseline_view(params)
    except (ParamsError, yaml.YAMLError) as exc:
        log.warning("params.yaml at %s not comparable (%s): is_baseline unknown", rev, exc)
        return "unknown"
    return "true" if same else "false"


def train_tags(
    params: Mapping[str, Any],
    encode_info: Mapping[str, Any],
    ignored: list[str],
    cwd: Path,
    outputs: list[str],
) -> dict[str, str]:
    """The tags of a training run: data identity, code identity, DVC experiment, baseline.

    Args:
        params: the whole params mapping (for the baseline comparison).
        encode_info: the encode stage's info (dataset name and content hash).
        ignored: settings sklearn ignores with these params (``model.ignored_settings``).
        cwd: the workspace.
        outputs: pipeline output paths, which do not make the tree dirty.
    """
    tags = {
        "mnistflow.stage": "train",
        "dataset": str(encode_info["dataset"]),
        "dataset_sha256": str(encode_info["dataset_sha256"]),
        "is_baseline": is_baseline(params, cwd),
        "ignored_settings": "; ".join(ignored) if ignored else "none",
        **git_tags(cwd, outputs),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get(REPRODUCES_ENV):
        tags["reproduces"] = os.environ[REPRODUCES_ENV]
    return tags


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during a short critical MLflow call, then deliver them.

    Starting and ending a run must not be cut in half, else the run could stay RUNNING.
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


class Run:
    """Logging into one active MLflow run (use through :func:`mlflow_run`)."""

    def __init__(self, run_id: str, experiment_id: str, uri: str) -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params; values already logged with the same value are skipped.

        MLflow params cannot change; a re-evaluation with a different value is recorded as a
        tag ``changed.<key>`` instead, with a warning.
        """
        existing = MlflowClient(self.uri).get_run(self.run_id).data.params
        new = {}
        for key, value in params.items():
            text = str(value)
            if key not in existing:
                new[key] = text
            elif existing[key] != text:
                log.warning(
                    "MLflow param %s is already %r in run %s; recording %r as tag changed.%s",
                    key,
                    existing[key],
                    self.run_id,
                    text,
                    key,
                )
                mlflow.set_tag(f"changed.{key}", text)
        if new:
            mlflow.log_params(new)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags."""
        mlflow.set_tags(dict(tags))

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Log one metric, optionally at a step (e.g. the epoch)."""
        mlflow.log_metric(key, float(value), step=step)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log several unstepped metrics."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or a folder's files into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_model(self, model: Any, X_example: np.ndarray) -> None:
        """Log an sklearn model ``model`` with a signature and an input example."""
        import mlflow.sklearn

        signature = infer_signature(X_example, model.predict_proba(X_example))
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=X_example,
            # Pinned from this environment: MLflow's own inference loads the model in a
            # subprocess to watch its imports, 5 s per run here for the same answer.
            pip_requirements=[
                f"{dist}=={importlib.metadata.version(dist)}"
                for dist in ("mlflow", "scikit-learn", "numpy", "scipy", "cloudpickle")
            ],
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )


@contextmanager
def mlflow_run(
    uri: str, experiment_id: str, run_id: str | None = None, run_name: str | None = None
) -> Iterator[Run]:
    """Start a new run (``run_id`` None) or resume ``run_id``; always end it.

    The run ends FINISHED when the block completes, KILLED on KeyboardInterrupt or
    FitInterrupted (SIGINT/SIGTERM), FAILED on any other exception, never RUNNING.
    """
    mlflow.set_tracking_uri(uri)
    if run_id is not None:
        try:
            found = MlflowClient(uri).get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(
                f"MLflow run {run_id} (from train's run info) not found in {uri}: was train run "
                "with another tracking store (MLFLOW_TRACKING_URI, mlflow.tracking_uri)?"
            ) from exc
        experiment_id = found.info.experiment_id
    with _signals_deferred():
        active = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name)
    status = "FAILED"
    try:
        yield Run(active.info.run_id, experiment_id, uri)
        status = "FINISHED"
    except (KeyboardInterrupt, FitInterrupted):
        status = "KILLED"
        raise
    finally:
        with _signals_deferred():
            mlflow.end_run(status)
        log.info("MLflow run %s ended %s", active.info.run_id, status)


def run_status(uri: str, run_id: str) -> str:
    """The status of a run ('FINISHED', 'FAILED', 'KILLED', 'RUNNING', ...)."""
    return MlflowClient(uri).get_run(run_id).info.status


UI_PORT = 5000  # mlflow ui's own default


def ui_command(uri: str) -> str:
    """The shell command that serves the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri '{uri}' --host 127.0.0.1 --port {UI_PORT}"


def run_url(experiment_id: str, run_id: str) -> str:
    """The run's page in that UI (not the GenAI landing page)."""
    return f"http://127.0.0.1:{UI_PORT}/#/experiments/{experiment_id}/runs/{run_id}"
