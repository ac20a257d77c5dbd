"""One worker's share of a study: trials until the study has ``tune.n_trials`` finished ones.

A worker process (started by ``cli.tune.start_worker``) loads the training rows once
(:mod:`mnistflow.tuning.objective`), joins the study and runs trial after trial in-process:
encode with the trial's settings (cached per distinct ``encode:`` section), fit, score the
held-out rows after every epoch, report each score to Optuna (which may prune the trial).
Every trial is one MLflow run in ``tune.mlflow_experiment``, nested under the study's parent
run, with the params the pipeline logs, the ``-S`` overrides that reproduce it, the dataset
digest and stepped ``holdout_accuracy``. :func:`run_pool` starts N such processes on this machine;
other machines join the same study through its storage URL. A worker sweeps dead runs
(:func:`liveness.sweep`) when it starts and when it stops.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mnistflow import numerics
from mnistflow.config import Dimension, Params
from mnistflow.modeling.metrics import HOLDOUT_ACCURACY
from mnistflow.tracking import datasets, liveness, provenance, record, store
from mnistflow.tracking.runs import mlflow_run
from mnistflow.tuning import objective, space, storage

log = logging.getLogger(__name__)

TAG_STUDY = "mnistflow.study"
TAG_TRIAL = "mnistflow.trial"
TAG_WORKER = "mnistflow.worker_host"
TAG_STATE = "mnistflow.trial_state"  # the trial's end in the storage: COMPLETE | PRUNED | FAIL
TAG_FLAGS = "mnistflow.dvc_overrides"  # the `dvc exp run -S` flags that reproduce the trial
TAG_PARENT_OF = "mnistflow.study_parent"
PARENT_TAG = "mlflow.parentRunId"
ATTR_OVERRIDES = "overrides"  # trial user attr: the params overrides (JSON-able)
ATTR_RUN = "mlflow_run_id"  # trial user attr: its MLflow run
ATTR_WORKER = "worker"  # trial user attr: "host:pid"
ATTR_NUMERICS = "numerics_fingerprint"  # trial user attr: its floating-point environment
PARAM_OVERRIDES = "tune.overrides"  # the run's param holding the -S flags


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


def run_provenance(params: Params, root: Path) -> dict[str, str]:
    """The tags every trial run of this worker carries: dataset identity, the code's git
    commit (the worker runs the code it started with) and its floating-point environment."""
    from mnistflow.data.encode import dataset_sha256

    return {
        "dataset": params.dataset_name,
        "dataset_sha256": dataset_sha256(params.dataset),
        **provenance.git_tags(root, list(params.paths.as_dict().values())),
        **numerics.tags(numerics.observe()),
    }


def trial_run_params(chosen: Params, experiment: str, flags: str, study: str) -> dict[str, Any]:
    """A trial run's params: every param a pipeline run with the trial's values logs (its
    ``mlflow.experiment_name`` the tune experiment the run is in) and the trial's set-up."""
    return {
        **record.train_params(chosen),
        "mlflow.experiment_name": experiment,
        PARAM_OVERRIDES: flags,
        "tune.study": study,
        "tune.holdout_size": chosen.tune.holdout_size,
    }


class Objective:
    """The Optuna objective of one worker: a trial's values -> in-process fit -> the last
    epoch's hold-out accuracy, recorded as one MLflow run nested under the study's."""

    def __init__(
        self,
        params: Params,
        dims: Mapping[str, Dimension],
        splits: objective.EncodedSplits,
        tracking: Tracking,
        study: str,
        tags: Mapping[str, str],
    ) -> None:
        self.params, self.dims, self.splits = params, dims, splits
        self.tracking, self.study, self.tags = tracking, study, dict(tags)
        self.current: int | None = None  # the trial being run
        self.heartbeat_lost: BaseException | None = None  # set by the heartbeat thread's error

    def __call__(self, trial: Any) -> float:
        import optuna

        self.current, self.heartbeat_lost = trial.number, None
        overrides = space.suggest(trial, self.dims)
        flags = " ".join(space.set_flags(overrides))
        trial.set_user_attr(ATTR_OVERRIDES, overrides)
        trial.set_user_attr(ATTR_WORKER, worker_id())
        trial.set_user_attr(ATTR_NUMERICS, self.tags.get(numerics.FINGERPRINT_TAG, "none"))
        chosen = objective.trial_params(self.params, overrides)
        log.info("trial %d: %s", trial.number, flags)
        t = self.tracking
        pruned_at: list[int] = []
        with mlflow_run(t.uri, t.experiment_id, run_name=f"{self.study}-t{trial.number}") as run:
            trial.set_user_attr(ATTR_RUN, run.run_id)
            run.set_tags(self.run_tags(trial.number, flags))
            run.log_params(trial_run_params(chosen, t.experiment_name, flags, self.study))
            encoded = self.splits.get(chosen.encode)
            datasets.log_dataset(chosen.dataset_name, self.tags["dataset_sha256"],
                                 self.splits.source, encoded.X_train.shape)  # fmt: skip

            def on_score(epoch: int, accuracy: float) -> bool:
                if self.heartbeat_lost is not None:
                    raise storage.StorageLostError("the trial's heartbeat failed") from (
                        self.heartbeat_lost
                    )
                run.log_metric(HOLDOUT_ACCURACY, accuracy, step=epoch)
                trial.report(accuracy, epoch)
                if trial.should_prune():
                    pruned_at.append(epoch)
                    return True
                return False

            result = objective.fit_trial(chosen, self.splits, partial(record.log_epoch, run),
                                         on_score)  # fmt: skip
            record.log_fit(run, result)
        assert result.holdout_accuracy
        value = result.holdout_accuracy[-1]
        if pruned_at:
            log.info("trial %d pruned at epoch %d (holdout_accuracy %.4f)", trial.number,
                     pruned_at[0], value)  # fmt: skip
            raise optuna.TrialPruned(f"epoch {pruned_at[0]}: holdout_accuracy {value:.4f}")
        log.info("trial %d: holdout_accuracy %.4f", trial.number, value)
        return value

    def run_tags(self, number: int, flags: str) -> dict[str, str]:
        """A trial run's tags: provenance, the parent run, study, trial, host, overrides."""
        return {
            **self.tags,
            "mnistflow.stage": "tune",
            PARENT_TAG: self.tracking.parent_run_id,
            TAG_STUDY: self.study,
            TAG_TRIAL: str(number),
            TAG_WORKER: socket.gethostname(),
            TAG_FLAGS: flags,
        }


def thread_errors(run_objective: Objective) -> Any:
    """A ``threading.excepthook`` for a worker: a lost storage connection in Optuna's
    heartbeat thread is one WARNING line and stops the current trial at its next epoch (a
    trial without heartbeats would be failed under it by another worker); anything else is
    Python's default report."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and storage.connection_lost(args.exc_value) is not None:
            log.warning("trial %s: its heartbeat could not reach the Optuna storage (%s)",
                        run_objective.current, type(args.exc_value).__name__)  # fmt: skip
            run_objective.heartbeat_lost = args.exc_value
            return
        threading.__excepthook__(args)

    return hook


def record_state(uri: str) -> storage.TrialCallback:
    """A callback ``(study, trial)`` that tags the trial's MLflow run (in ``uri``) with the
    state Optuna holds: ``mnistflow.trial_state`` is written only once the storage has the
    trial's end (after ``tell``, or when a stale trial is failed), so the run never claims
    an outcome the study does not have."""
    from mlflow.tracking import MlflowClient

    def callback(study: Any, trial: Any) -> None:
        if ATTR_RUN in trial.user_attrs:
            MlflowClient(uri).set_tag(trial.user_attrs[ATTR_RUN], TAG_STATE, trial.state.name)

    return callback


def retry_interrupted(study: Any, cfg: Any, number: int | None, uri: str) -> None:
    """After a storage outage: this worker's trial ``number`` (the one it was running) ends
    FAIL if it is still RUNNING, and a FAIL one is enqueued again as a dead worker's would be
    (``tune.max_retry``), its MLflow run (in ``uri``) tagged ``mnistflow.trial_state=FAIL``
    (a fit that finished before the outage cut its result off leaves a FINISHED run); a trial
    the outage did not stop (COMPLETE, PRUNED) is left alone."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if number is None:
        return
    (trial,) = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if trial.user_attrs.get(ATTR_WORKER) != worker_id():
        return
    # the storage's state, not the cache's: Optuna's own tell may have got through before
    try:
        trial = study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    except UpdateFinishedTrialError:
        # finished in the storage meanwhile: another worker failed it as stale (no heartbeat
        # during the outage) and its retry callback enqueued the copy
        log.info("trial %d: already ended by another worker after the outage", number)
        return
    if trial.state == TrialState.FAIL:
        log.warning("trial %d: interrupted by the storage outage; FAIL, retried", number)
        storage.retry_callback(cfg, record_state(uri))(study, trial)


def fail_running(study: Any) -> None:
    """Tell FAIL for this worker's trials still RUNNING (an interruption: Optuna only fails a
    trial on an Exception or KeyboardInterrupt, not on SIGTERM's ``Interrupted``)."""
    from optuna.trial import TrialState

    me = worker_id()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(ATTR_WORKER) == me:
            log.info("trial %d: stopped; FAIL (not retried)", trial.number)
            study.tell(trial.number, state=TrialState.FAIL)


def run_worker(
    params: Params, root: Path, study_name: str, url: str, max_trials: int | None = None
) -> int:
    """Join the study and run trials until it has ``tune.n_trials`` finished trials (or this
    worker ran ``max_trials``); return how many this worker ran."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from mnistflow.config import tune_space

    cfg = params.tune
    dims = tune_space(params.raw)
    rows = objective.load_training_rows(params.paths.arrays)
    # checks tune.holdout_size against the rows before joining anything
    splits = objective.EncodedSplits(rows, cfg.holdout_size, len(params.dataset.classes))
    tracking = tracking_for(params, root, study_name)
    on_end = record_state(tracking.uri)  # a trial's end, told here or failed as stale
    study = storage.join_study(cfg, study_name, url, worker_seed(cfg.seed), on_stale=on_end)
    liveness.sweep(tracking.uri, tracking.experiment_name)
    done = finished_trials(study)
    if done >= cfg.n_trials:
        log.info("study %r already has %d finished trials (tune.n_trials)", study_name, done)
        return 0
    log.info("worker %s joins study %r in %s: %d of %d trials finished", worker_id(),
             study_name, store.redact(url), done, cfg.n_trials)  # fmt: skip
    run_objective = Objective(params, dims, splits, tracking, study_name,
                              run_provenance(params, root))  # fmt: skip
    threading.excepthook = thread_errors(run_objective)
    try:
        while True:  # once, or again after each storage outage survived
            try:
                retry_interrupted(study, cfg, run_objective.current, tracking.uri)
                run_objective.current = None  # dealt with: a later outage must not retry it
                mine = [t for t in study.get_trials(deepcopy=False)
                        if t.user_attrs.get(ATTR_WORKER) == worker_id()]  # fmt: skip
                study.optimize(
                    run_objective,
                    n_trials=None if max_trials is None else max(0, max_trials - len(mine)),
                    callbacks=[on_end,
                               MaxTrialsCallback(cfg.n_trials,
                                                 states=(TrialState.COMPLETE, TrialState.PRUNED))],
                    gc_after_trial=False,
                )  # fmt: skip
                break
            except Exception as exc:
                if storage.connection_lost(exc) is None:
                    raise
                storage.wait_for_storage(study, url, exc)  # StudyError (exit 4) if it does not
    except BaseException as exc:
        if storage.connection_lost(exc) is None:
            fail_running(study)
        raise
    finally:
        threading.excepthook = threading.__excepthook__
        liveness.sweep(tracking.uri, tracking.experiment_name)
    mine = [
        t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_WORKER) == worker_id()
    ]
    log.info("worker %s ran %d trial(s); study has %d finished", worker_id(), len(mine),
             finished_trials(study))  # fmt: skip
    return len(mine)


def run_pool(n: int, argv: Sequence[str], url: str) -> int:
    """Start ``n`` worker processes (``python -m mnistflow.cli <argv>``; the storage URL goes
    in the environment, never on a command line) and wait for all of them; return the first
    non-zero exit code, else 0. An interruption of this process stops them (SIGTERM)."""
    from mnistflow.tuning.storage import STORAGE_ENV

    env = {**os.environ, STORAGE_ENV: url}
    command = [sys.executable, "-m", "mnistflow.cli", *argv]
    procs = [subprocess.Popen(command, env=env) for _ in range(n)]
    log.info("started %d workers (pids %s)", n, ", ".join(str(p.pid) for p in procs))
    codes: list[int] = []
    try:
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
    # a worker killed by a signal: the shell's 128 + signal number
    failed = [(p.pid, c if c > 0 else 128 - c) for p, c in zip(procs, codes, strict=True) if c]
    for pid, code in failed:
        log.error("worker pid %d exited %d", pid, code)
    return failed[0][1] if failed else 0
