"""One worker's share of a study: trials until the study has ``tune.n_trials`` finished ones.

Every trial is one MLflow run in the experiment ``tune.mlflow_experiment``, nested under the
study's parent run (tag ``mlflow.parentRunId``) and tagged with the study, the trial number,
the worker's host and the ``dvc exp run -S`` flags that reproduce it. Runs get the project's
liveness tags and heartbeat (:mod:`mnistflow.tracking.runs`); a worker sweeps dead runs
(:func:`liveness.sweep`) when it starts and when it stops.
"""

from __future__ import annotations

import logging
import os
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistflow.config import Dimension, Params
from mnistflow.tracking import liveness, store
from mnistflow.tracking.runs import flatten, mlflow_run
from mnistflow.tuning import objective, space

log = logging.getLogger(__name__)

TAG_STUDY = "mnistflow.study"
TAG_TRIAL = "mnistflow.trial"
TAG_WORKER = "mnistflow.worker_host"
TAG_FLAGS = "mnistflow.dvc_overrides"
TAG_STATE = "mnistflow.trial_state"
TAG_PARENT_OF = "mnistflow.study_parent"
PARENT_TAG = "mlflow.parentRunId"
ATTR_OVERRIDES = "overrides"  # trial user attr: the params overrides (JSON-able)
ATTR_RUN = "mlflow_run_id"
ATTR_WORKER = "worker"  # "host:pid"
FINISHED_STATES = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class Tracking:
    """Where trial runs go: the store, the experiment and the study's parent run."""

    uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str


def worker_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_seed(seed: int) -> int:
    """The sampler seed of this worker: ``tune.seed`` mixed with host and pid, so two workers
    do not propose the same parameters."""
    return (seed * 1_000_003 + zlib.crc32(worker_id().encode())) % 2**32


def parent_run(uri: str, experiment_id: str, study: str) -> str:
    """The study's parent run: found by its tag, else created (ended at once: it only groups
    the trials and holds the report). Two workers creating it at once keep the older one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    query = f"tags.`{TAG_PARENT_OF}` = '{study}'"

    def found() -> list:
        return client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])

    existing = found()
    if existing:
        return existing[0].info.run_id
    created = client.create_run(
        experiment_id, run_name=study, tags={TAG_PARENT_OF: study, TAG_STUDY: study}
    )
    client.set_terminated(created.info.run_id, "FINISHED")
    first = found()[0].info.run_id
    if first != created.info.run_id:
        client.delete_run(created.info.run_id)
    return first


def tracking_for(params: Params, root: Path, study: str) -> Tracking:
    """The MLflow store (as the pipeline resolves it), the tune experiment and parent run."""
    uri = store.resolve_tracking_uri(params.mlflow, root)
    store.check_store(uri)
    name = params.tune.mlflow_experiment
    experiment_id = store.ensure_experiment(uri, name, root)
    return Tracking(uri, experiment_id, name, parent_run(uri, experiment_id, study))


def finished_trials(study: Any) -> int:
    """Complete and pruned trials of the study (what ``tune.n_trials`` counts)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


class Objective:
    """The Optuna objective of one worker: a trial's values -> fit -> validation accuracy."""

    def __init__(
        self,
        params: Params,
        dims: Mapping[str, Dimension],
        images: objective.TrainingImages,
        tracking: Tracking,
        study: str,
    ) -> None:
        self.params, self.dims, self.images = params, dims, images
        self.tracking, self.study = tracking, study

    def __call__(self, trial: Any) -> float:
        import optuna

        overrides = space.suggest(trial, self.dims)
        flags = space.set_flags(overrides)
        trial.set_user_attr(ATTR_OVERRIDES, overrides)
        trial.set_user_attr(ATTR_WORKER, worker_id())
        train_cfg, encode_cfg = objective.trial_configs(self.params.raw, overrides)
        n_classes = len(self.params.dataset.classes)
        split = objective.split_and_encode(
            self.images, self.params.tune.validation_size, encode_cfg, n_classes
        )
        log.info("trial %d: %s", trial.number, " ".join(flags[1::2]))
        pruned: optuna.TrialPruned | None = None
        t = self.tracking
        with mlflow_run(t.uri, t.experiment_id, run_name=f"{self.study}-{trial.number}") as run:
            trial.set_user_attr(ATTR_RUN, run.run_id)
            run.set_tags(
                {
                    PARENT_TAG: t.parent_run_id,
                    TAG_STUDY: self.study,
                    TAG_TRIAL: str(trial.number),
                    TAG_WORKER: socket.gethostname(),
                    TAG_FLAGS: " ".join(flags),
                }
            )
            run.log_params(
                flatten({"train": train_cfg.as_dict(), "encode": encode_cfg.as_dict()})
                | {"tune.study": self.study, "tune.validation_size": split.labels_val.size}
            )

            def on_epoch(epoch: int, loss: float, val_accuracy: float) -> None:
                run.log_metric("train_loss", loss, step=epoch)
                run.log_metric("val_accuracy", val_accuracy, step=epoch)
                trial.report(val_accuracy, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: val_accuracy {val_accuracy:.4f}")

            try:
                value = objective.fit_and_score(train_cfg, split, on_epoch)
            except optuna.TrialPruned as exc:
                pruned = exc
                run.set_tags({TAG_STATE: "PRUNED"})
            else:
                run.log_metrics({"val_accuracy": value})
                run.set_tags({TAG_STATE: "COMPLETE"})
        if pruned is not None:
            log.info("trial %d pruned (%s)", trial.number, pruned)
            raise pruned
        log.info("trial %d: val_accuracy %.4f", trial.number, value)
        return value


def run_worker(
    params: Params, root: Path, study_name: str, url: str, max_trials: int | None = None
) -> int:
    """Join the study and run trials until it has ``tune.n_trials`` finished trials (or this
    worker ran ``max_trials``); return how many this worker ran."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from mnistflow.config import tune_space
    from mnistflow.tuning import storage

    cfg = params.tune
    dims = tune_space(params.raw)
    images = objective.load_training_images(params.paths.arrays)
    objective.validation_cut(len(images.y), cfg.validation_size)  # before joining anything
    study = storage.join_study(cfg, study_name, url, worker_seed(cfg.seed))
    tracking = tracking_for(params, root, study_name)
    liveness.sweep(tracking.uri, tracking.experiment_name)
    done = finished_trials(study)
    if done >= cfg.n_trials:
        log.info("study %r already has %d finished trials (tune.n_trials)", study_name, done)
        return 0
    log.info(
        "worker %s joins study %r in %s: %d of %d trials finished",
        worker_id(),
        study_name,
        store.redact(url),
        done,
        cfg.n_trials,
    )
    try:
        study.optimize(
            Objective(params, dims, images, tracking, study_name),
            n_trials=max_trials,
            callbacks=[
                MaxTrialsCallback(cfg.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
            ],
            gc_after_trial=False,
        )
    finally:
        liveness.sweep(tracking.uri, tracking.experiment_name)
    mine = [
        t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_WORKER) == worker_id()
    ]
    log.info(
        "worker %s ran %d trial(s); study has %d finished",
        worker_id(),
        len(mine),
        finished_trials(study),
    )
    return len(mine)
