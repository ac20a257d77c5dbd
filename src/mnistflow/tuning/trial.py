"""The Optuna side of a tuning trial inside the train stage.

A ``mnistflow tune`` worker asks Optuna for a trial and runs it as ``dvc exp run --temp``; it
names the trial in the environment variable :data:`TRIAL_ENV` (JSON: storage URL, study,
trial id and number, the study's parent MLflow run, the worker's pid), which DVC passes on to
the stage commands. The train stage then reports each epoch's validation accuracy to that
trial (rebuilt from the RDB storage: ``optuna.trial.Trial(study, trial_id)``) and stops the
fit when Optuna prunes it. Outside a worker (``dvc repro``, ``mnistflow reproduce``) the
variable is unset and nothing here runs: the same params give the same fit and metrics.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mnistflow.config import TuneConfig
from mnistflow.tuning import storage

log = logging.getLogger(__name__)

TRIAL_ENV = "MNISTFLOW_TUNE_TRIAL"
TAG_STUDY = "mnistflow.study"
TAG_TRIAL = "mnistflow.trial"
TAG_WORKER = "mnistflow.worker_host"
TAG_STATE = "mnistflow.trial_state"
TAG_EXP = "mnistflow.dvc_exp"
PARENT_TAG = "mlflow.parentRunId"
ATTR_RUN = "mlflow_run_id"  # trial user attr, set by the stage when its run starts


class TrialAbandoned(storage.StudyError):
    """The worker that started this trial is gone: stop instead of finishing a lost trial."""


@dataclass(frozen=True)
class TrialLink:
    """Which Optuna trial a pipeline run is, as the worker passes it to the stage."""

    storage: str  # the RDB URL (may hold a password: environment only, never a file)
    study: str
    trial_id: int
    number: int
    parent_run: str
    worker_pid: int

    def to_env(self) -> str:
        """The value of :data:`TRIAL_ENV`."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrialLink | None:
        """The trial named by :data:`TRIAL_ENV`, or None outside a tuning worker."""
        raw = (os.environ if environ is None else environ).get(TRIAL_ENV, "")
        return cls(**json.loads(raw)) if raw else None


class StageTrial:
    """The train stage's handle on its Optuna trial."""

    def __init__(self, link: TrialLink, trial: Any) -> None:
        self.link, self.trial = link, trial
        self.pruned_at: int | None = None

    @classmethod
    def open(cls, link: TrialLink, cfg: TuneConfig) -> StageTrial:
        """Rebuild the worker's trial from the storage (the study's pruner from ``cfg``)."""
        import optuna

        study = optuna.load_study(
            study_name=link.study,
            storage=storage.open_storage(link.storage, cfg),
            pruner=storage.pruner(cfg),
        )
        return cls(link, optuna.trial.Trial(study, link.trial_id))

    def tags(self, exp_name: str) -> dict[str, str]:
        """The MLflow tags that put the run under the study's parent run."""
        return {
            PARENT_TAG: self.link.parent_run,
            TAG_STUDY: self.link.study,
            TAG_TRIAL: str(self.link.number),
            TAG_WORKER: socket.gethostname(),
            TAG_EXP: exp_name,
        }

    def attach(self, run_id: str) -> None:
        """Record the MLflow run in the trial (the worker reads the result from it)."""
        self.trial.set_user_attr(ATTR_RUN, run_id)

    def check_worker(self) -> None:
        """Raise TrialAbandoned when the worker process is gone (its trial is lost: Optuna
        fails it after the grace period and another worker retries it)."""
        try:
            os.kill(self.link.worker_pid, 0)
        except ProcessLookupError:
            raise TrialAbandoned(
                f"trial #{self.link.number}: worker pid {self.link.worker_pid} is gone; "
                "stopping (another worker retries the trial)"
            ) from None
        except PermissionError:  # exists, another user's process
            pass

    def on_score(self, epoch: int, accuracy: float) -> bool:
        """Report one epoch's validation accuracy; True when Optuna prunes the trial."""
        self.check_worker()
        self.trial.report(accuracy, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            log.info("trial #%d pruned at epoch %d", self.link.number, epoch)
            return True
        return False

    @property
    def state(self) -> str:
        """``PRUNED`` or ``COMPLETE`` (the tag :data:`TAG_STATE`)."""
        return "PRUNED" if self.pruned_at is not None else "COMPLETE"
