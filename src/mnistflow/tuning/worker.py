"""One worker's share of a study: trials until the study has ``tune.n_trials`` finished ones.

Every trial is a DVC experiment and an MLflow run: the worker asks Optuna for a trial and
runs ``dvc exp run --temp -n <study>-t<number> -S <trial values> -S
encode.validation_rows=<tune.validation_size> -S mlflow.experiment_name=<tune.mlflow_experiment>``
(through :mod:`mnistflow.util.dvc`), naming the trial in the environment
(:mod:`mnistflow.tuning.trial`). The pipeline then holds out the validation rows, never encodes
the test set, and the train stage reports each epoch's validation accuracy to the trial (which
may prune it) and logs the run nested under the study's parent run, tagged with the study,
trial number, host and experiment name. The worker reads the trial's result from that run.
A worker sweeps dead runs (:func:`liveness.sweep`) when it starts and when it stops.
"""

from __future__ import annotations

import logging
import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from mnistflow.config import TRIAL_KEY, Dimension, Params, ParamsError
from mnistflow.modeling.metrics import VAL_ACCURACY
from mnistflow.tracking import liveness, store
from mnistflow.tuning import space
from mnistflow.tuning.trial import (
    ATTR_RUN,
    PARENT_TAG,
    TAG_EXP,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    TAG_WORKER,
    TRIAL_ENV,
    TrialLink,
)
from mnistflow.util import fileio
from mnistflow.util.dvc import dvc

log = logging.getLogger(__name__)

__all__ = ["ATTR_RUN", "PARENT_TAG", "TAG_EXP", "TAG_STATE", "TAG_STUDY", "TAG_TRIAL", "TAG_WORKER"]
TAG_FLAGS = "mnistflow.dvc_overrides"
TAG_PARENT_OF = "mnistflow.study_parent"
ATTR_OVERRIDES = "overrides"  # trial user attr: the params overrides (JSON-able)
ATTR_WORKER = "worker"  # "host:pid"
ATTR_EXP = "dvc_exp"  # the trial's DVC experiment name
FINISHED_STATES = ("COMPLETE", "PRUNED")
EXP_LOCK = ".dvc/tmp/mnistflow-tune-exp.lock"  # serialises trial experiments in one clone


class TrialRunError(RuntimeError):
    """The trial's experiment ran but left no MLflow run with its result (a bug)."""


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


def exp_name(study: str, number: int) -> str:
    """The DVC experiment of trial ``number``: ``<study>-t<number>``."""
    return f"{study}-t{number}"


def trial_flags(params: Params, overrides: dict[str, Any]) -> list[str]:
    """Every ``-S`` flag of a trial's experiment: its values, the validation split (which also
    keeps the test set out of it) and the tune experiment for its MLflow run."""
    cfg = params.tune
    fixed = {TRIAL_KEY: cfg.validation_size, "mlflow.experiment_name": cfg.mlflow_experiment}
    return space.set_flags({**overrides, **fixed})


class Objective:
    """The Optuna objective of one worker: a trial's values -> ``dvc exp run --temp`` ->
    the validation accuracy its MLflow run recorded."""

    def __init__(
        self,
        params: Params,
        dims: dict[str, Dimension],
        tracking: Tracking,
        study: str,
        url: str,
        root: Path,
    ) -> None:
        self.params, self.dims, self.tracking = params, dims, tracking
        self.study, self.url, self.root = study, url, root

    def __call__(self, trial: Any) -> float:
        import optuna

        overrides = space.suggest(trial, self.dims)
        name = exp_name(self.study, trial.number)
        trial.set_user_attr(ATTR_OVERRIDES, overrides)
        trial.set_user_attr(ATTR_WORKER, worker_id())
        trial.set_user_attr(ATTR_EXP, name)
        link = TrialLink(  # _trial_id: the storage's key, which Trial(study, id) needs
            self.url, self.study, trial._trial_id, trial.number,
            self.tracking.parent_run_id, os.getpid(),
        )  # fmt: skip
        env = {**os.environ, TRIAL_ENV: link.to_env(), "MLFLOW_TRACKING_URI": self.tracking.uri}
        log.info("trial %d: %s", trial.number, " ".join(space.set_flags(overrides)[1::2]))
        # One trial experiment at a time per clone: two overlapping `dvc exp run --temp` in
        # one workspace lost an experiment here (the run returned 0, its ref was missing);
        # workers in other clones or machines still run in parallel. --wait-for-lock: DVC
        # commands of other origin may hold the workspace lock for a moment.
        with FileLock(str(self.root / EXP_LOCK)):
            dvc(["--wait-for-lock", "exp", "run", "--temp", "-n", name,
                 *trial_flags(self.params, overrides)], self.root, env)  # fmt: skip
        run = self.result_run(trial.number, space.set_flags(overrides))
        trial.set_user_attr(ATTR_RUN, run.info.run_id)
        value = float(run.data.metrics[VAL_ACCURACY])
        if run.data.tags.get(TAG_STATE) == "PRUNED":
            log.info("trial %d pruned (val_accuracy %.4f)", trial.number, value)
            raise optuna.TrialPruned(f"{name}: val_accuracy {value:.4f}")
        log.info("trial %d: val_accuracy %.4f (experiment %s)", trial.number, value, name)
        return value

    def result_run(self, number: int, flags: list[str]) -> Any:
        """The FINISHED MLflow run the trial's train stage logged, tagged with its flags."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking.uri)
        query = (
            f"tags.`{TAG_STUDY}` = '{self.study}' and tags.`{TAG_TRIAL}` = '{number}' "
            "and attributes.status = 'FINISHED'"
        )
        runs = client.search_runs([self.tracking.experiment_id], query)
        if len(runs) != 1:
            raise TrialRunError(f"trial {number}: {len(runs)} finished MLflow runs, expected 1")
        client.set_tag(runs[0].info.run_id, TAG_FLAGS, " ".join(flags))
        return client.get_run(runs[0].info.run_id)


def check_validation_size(params: Params) -> None:
    """Refuse a ``tune.validation_size`` over half the training rows before any trial (when
    the unpacked arrays are here; the encode stage checks it again in every trial).

    Raises:
        ParamsError: naming the key.
    """
    path = Path(params.paths.arrays)
    if not path.exists():
        return
    n = len(fileio.load_npz(path, ["y_train"])["y_train"])
    if params.tune.validation_size > n // 2:
        raise ParamsError(
            f"params.yaml: 'tune.validation_size' is {params.tune.validation_size} but the "
            f"training set has {n} rows; hold out at most half of them"
        )


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
    check_validation_size(params)  # before joining anything
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
            Objective(params, dims, tracking, study_name, url, root),
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
