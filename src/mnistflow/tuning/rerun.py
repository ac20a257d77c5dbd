"""``mnistflow reproduce <trial run>``: a tuning trial rerun in-process and compared.

A trial was fitted by a worker, not by the pipeline, so it is rerun the way a worker ran it:
today's params.yaml with the trial's overrides (the run's ``-S`` flags), which must give every
param the run logged; the same code (the run's commit must be checked out); the training rows
of ``paths.arrays``, the same held-out rows; the fit stopped after the epochs the trial ran
(a pruned trial stops where the pruner stopped it). Compared: every logged metric (timings
aside) and ``holdout_accuracy`` of every epoch. Nothing is written to MLflow or Optuna.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from mnistflow import numerics
from mnistflow.config import load_config
from mnistflow.data.encode import dataset_sha256
from mnistflow.experiments.reproduce import (
    LoggedRun,
    MetricRow,
    ReproduceError,
    compare_metrics,
    print_result,
)
from mnistflow.modeling.metrics import HOLDOUT_ACCURACY
from mnistflow.tracking.record import TRAIN_LOSS
from mnistflow.tuning import objective, worker
from mnistflow.util.git import git_or_none

log = logging.getLogger(__name__)


def overrides_from_flags(flags: str) -> dict[str, Any]:
    """The overrides of the flags text ``-S key=value -S …`` (the tag ``TAG_FLAGS``)."""
    out: dict[str, Any] = {}
    for part in flags.removeprefix("-S ").split(" -S "):
        key, _, text = part.partition("=")
        out[key] = yaml.safe_load(text)
    return out


def check_setup(run: LoggedRun, root: Path) -> tuple[Any, str]:
    """The trial's params (today's params.yaml + its overrides) and its flags.

    Raises:
        ReproduceError: the run did not finish, another commit is checked out, or the
            params or the data differ from the run's.
    """
    if run.status != "FINISHED":
        raise ReproduceError(f"run {run.run_id} is {run.status}; only FINISHED runs have metrics")
    commit, head = run.tags.get("git_commit"), git_or_none(["rev-parse", "HEAD"], root)
    if commit != head:
        raise ReproduceError(
            f"run {run.run_id} is a tuning trial made at commit {commit}; a trial reruns "
            f"in-process with the checked-out code ({head}): `git checkout {commit}` first"
        )
    flags = run.tags[worker.TAG_FLAGS]
    chosen = objective.trial_params(load_config(root / "params.yaml"), overrides_from_flags(flags))
    expected = worker.trial_run_params(
        chosen, run.params["mlflow.experiment_name"], flags, run.params["tune.study"]
    )
    differ = sorted(k for k, v in expected.items() if run.params.get(k) != str(v))
    if differ:
        raise ReproduceError(
            f"run {run.run_id}: params.yaml with the trial's overrides gives other values for "
            f"{', '.join(differ)}: restore the params.yaml its study ran with"
        )
    if dataset_sha256(chosen.dataset) != run.tags.get("dataset_sha256"):
        raise ReproduceError(f"run {run.run_id}: the dataset differs (dataset_sha256)")
    return chosen, flags


def reproduce_trial(run: LoggedRun, root: Path, uri: str) -> int:
    """Rerun the trial of ``run`` (in the store ``uri``) in this process and print the
    comparison; 0 identical, 1 different under the same numerics fingerprint, 7 under
    another (as :func:`mnistflow.experiments.reproduce.judge`)."""
    from mlflow.tracking import MlflowClient

    chosen, flags = check_setup(run, root)
    logged = MlflowClient(uri).get_metric_history(run.run_id, HOLDOUT_ACCURACY)
    history = [m.value for m in sorted(logged, key=lambda m: m.step)]
    rows = objective.load_training_rows(root / chosen.paths.arrays)
    splits = objective.EncodedSplits(rows, chosen.tune.holdout_size, len(chosen.dataset.classes))
    epochs = int(run.metrics["n_iter"])
    log.info("trial #%s: %s, %d epochs", run.tags[worker.TAG_TRIAL], flags, epochs)
    result = objective.fit_trial(chosen, splits, on_score=lambda epoch, _: epoch >= epochs)
    assert result.holdout_accuracy
    rerun = {
        HOLDOUT_ACCURACY: result.holdout_accuracy[-1],
        TRAIN_LOSS: result.losses[-1],
        "n_iter": float(result.n_iter),
    }
    table = compare_metrics(run.metrics, rerun)
    same = history == result.holdout_accuracy
    table.append(
        MetricRow(f"{HOLDOUT_ACCURACY} of each of {len(history)} epochs", None, None, same)
    )
    here = numerics.tags(numerics.observe())
    header = (
        f"run {run.run_id} (trial #{run.tags[worker.TAG_TRIAL]} of study "
        f"{run.tags[worker.TAG_STUDY]!r}) rerun in-process"
    )
    return print_result(header, table, [], run.tags, here)
