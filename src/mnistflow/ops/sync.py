"""Copy the runs of one MLflow store (the project's sqlite file) to another (the team server).

Each source run becomes one destination run with the same name, start/end time, status,
params, tags, full metric histories (every step, through ``log_batch``), artifacts and logged
models (re-created as logged models of the new run, so ``mnistflow register`` finds them).
Dataset inputs are not copied. The copy carries ``mnistflow.synced_from=<source run id>``,
set last: a run that has it is complete and is never copied again; a copy interrupted half-way
(``mnistflow.sync_source`` without ``synced_from``) is deleted and redone on the next sync.
RUNNING source runs are skipped.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistflow.tracking.store import TrackingError, redact

log = logging.getLogger(__name__)

SYNCED_FROM = "mnistflow.synced_from"  # set last: the copy is complete
SYNC_SOURCE = "mnistflow.sync_source"  # set first: a copy of this run is under way
BATCH = 1000  # log_batch limit: 1000 metrics (params: 100)
PARAM_BATCH = 100
PAGE = 1000


@dataclass(frozen=True)
class SyncPlan:
    """What one sync does: runs to copy, half copies to delete, runs skipped."""

    copy: list[str]
    delete: list[str]
    skipped_running: list[str]
    already: int


def plan(
    source: Sequence[tuple[str, str]], destination: Sequence[tuple[str, dict[str, str]]]
) -> SyncPlan:
    """Decide the sync (pure).

    Args:
        source: ``(run_id, status)`` of the source runs.
        destination: ``(run_id, tags)`` of the destination experiment's runs.
    """
    complete = {tags[SYNCED_FROM] for _, tags in destination if SYNCED_FROM in tags}
    half = [rid for rid, tags in destination if SYNC_SOURCE in tags and SYNCED_FROM not in tags]
    copy, running = [], []
    for run_id, status in source:
        if run_id in complete:
            continue
        (running if status == "RUNNING" else copy).append(run_id)
    return SyncPlan(copy, half, running, len(complete))


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``items`` in slices of at most ``size`` (pure)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def copied_tags(tags: dict[str, str], source_run_id: str) -> dict[str, str]:
    """The tags of the copy: the source's, plus where it came from (pure)."""
    out = {k: v for k, v in tags.items() if k not in (SYNCED_FROM, SYNC_SOURCE)}
    out[SYNC_SOURCE] = source_run_id
    return out


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _copy_models(src: Any, dst: Any, run: Any, new_id: str, exp_id: str, tmp: Path) -> int:
    """Re-create the run's logged models under the new run; return how many."""
    import mlflow

    models = src.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    for model in models:
        folder = tmp / f"model-{model.model_id}"
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model.artifact_location,
            dst_path=str(folder),
            tracking_uri=src.tracking_uri,
        )
        copy = dst.create_logged_model(
            exp_id,
            name=model.name,
            source_run_id=new_id,
            tags={**model.tags, SYNCED_FROM: model.model_id},
            params=model.params,
            model_type=model.model_type,
        )
        dst.log_model_artifacts(copy.model_id, local)
        dst.finalize_logged_model(copy.model_id, "READY")
    return len(models)


def copy_run(src: Any, dst: Any, run: Any, exp_id: str) -> str:
    """Copy one run; return the new run id."""
    from mlflow.entities import Metric, Param, RunTag

    info, data = run.info, run.data
    tags = copied_tags(data.tags, info.run_id)
    new = dst.create_run(exp_id, start_time=info.start_time, tags=tags, run_name=info.run_name)
    new_id = new.info.run_id
    params = [Param(k, v) for k, v in data.params.items()]
    for part in chunks(params, PARAM_BATCH):
        dst.log_batch(new_id, params=list(part))
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in data.metrics
        for m in src.get_metric_history(info.run_id, key)
    ]
    for part in chunks(metrics, BATCH):
        dst.log_batch(new_id, metrics=list(part))
    with tempfile.TemporaryDirectory(prefix="mnistflow-sync-") as tmp:
        folder = Path(tmp) / "artifacts"
        folder.mkdir()
        if src.list_artifacts(info.run_id):
            src.download_artifacts(info.run_id, "", str(folder))
            dst.log_artifacts(new_id, str(folder))
        n_models = _copy_models(src, dst, run, new_id, exp_id, Path(tmp))
    dst.log_batch(new_id, tags=[RunTag(SYNCED_FROM, info.run_id)])
    dst.set_terminated(new_id, status=info.status, end_time=info.end_time)
    log.info(
        "copied run %s (%s): %d params, %d metric values, %d model(s) -> %s",
        info.run_id,
        info.run_name,
        len(params),
        len(metrics),
        n_models,
        new_id,
    )
    return new_id


def sync(source_uri: str, dest_uri: str, experiment_name: str) -> SyncPlan:
    """Copy the experiment's runs from ``source_uri`` to ``dest_uri`` once each."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    src, dst = MlflowClient(source_uri), MlflowClient(dest_uri)
    src_exp = src.get_experiment_by_name(experiment_name)
    if src_exp is None:
        raise TrackingError(f"no experiment {experiment_name!r} in {redact(source_uri)}")
    try:
        dst_exp = dst.get_experiment_by_name(experiment_name)
        exp_id = dst_exp.experiment_id if dst_exp else dst.create_experiment(experiment_name)
        source_runs = {r.info.run_id: r for r in _all_runs(src, src_exp.experiment_id)}
        todo = plan(
            [(rid, r.info.status) for rid, r in source_runs.items()],
            [(r.info.run_id, r.data.tags) for r in _all_runs(dst, exp_id)],
        )
        for rid in todo.delete:
            log.warning("deleting the half-finished copy %s of an interrupted sync", rid)
            dst.delete_run(rid)
        for rid in todo.skipped_running:
            log.warning("skipping run %s: still RUNNING in %s", rid, redact(source_uri))
        start = time.perf_counter()
        for rid in todo.copy:
            copy_run(src, dst, source_runs[rid], exp_id)
    except MlflowException as exc:
        raise TrackingError(f"sync to {redact(dest_uri)} failed: {exc.message}") from exc
    log.info(
        "synced %d run(s) to %s in %.1f s (%d already there)",
        len(todo.copy),
        redact(dest_uri),
        time.perf_counter() - start,
        todo.already,
    )
    return todo
