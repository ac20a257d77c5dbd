"""Model registry: register the best run of a dataset under its model name with an alias.

The best run is the leaderboard's first FINISHED run of the dataset (highest headline
accuracy; ties go to the shorter fit, then the earlier run), so ``mnistflow register`` always
registers what the leaderboard shows on top. Each dataset has its registered model
(``registry.model_name`` with the dataset's name in it). Registering the same run again
reuses its version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnistflow.config import RegistryConfig
from mnistflow.modeling.metrics import HEADLINE
from mnistflow.tracking.artifacts import DATASET_TAG, MODEL_ARTIFACT
from mnistflow.tracking.query import best_runs, experiment_id
from mnistflow.util.errors import UserError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


class RegistryError(UserError):
    """Nothing can be registered (no finished run with a headline accuracy, no model)."""


@dataclass(frozen=True)
class Registered:
    """The outcome of a registration."""

    model_name: str
    version: int
    alias: str
    run_id: str
    run_name: str
    accuracy: float
    created: bool  # False when the run already had a version


def best_finished(client: MlflowClient, experiment: str, dataset: str) -> Run:
    """The leaderboard's first FINISHED run of ``dataset`` (tag ``dataset``) in experiment id
    ``experiment``.

    The store filters and ranks (:func:`~mnistflow.tracking.query.best_runs`), so the cost
    does not grow with the number of runs.

    Raises:
        RegistryError: no FINISHED run has a headline accuracy.
    """
    quoted = dataset.replace("'", "")  # dataset names are keys of params.yaml's datasets:
    found = best_runs(
        client, experiment, f"attributes.status = 'FINISHED' AND tags.{DATASET_TAG} = '{quoted}'", 1
    )
    accuracy = found[0].data.metrics.get(HEADLINE) if found else None
    # missing and NaN accuracies sort last: if the first has none, no run has one
    if accuracy is None or accuracy != accuracy:
        raise RegistryError(
            f"no FINISHED run of dataset {dataset} with a {HEADLINE} metric to register: run "
            "the pipeline (dvc repro) on it first"
        )
    return found[0]


def chosen_run(client: MlflowClient, experiment: str, run_id: str, dataset: str) -> Run:
    """Run ``run_id``, checked to be a FINISHED run of ``dataset`` in experiment id
    ``experiment`` with a headline accuracy.

    Raises:
        RegistryError: no such run, or it is not one that may be registered.
    """
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"no MLflow run {run_id} in the store") from exc
    trained_on = run.data.tags.get(DATASET_TAG, "an unknown dataset")
    accuracy = run.data.metrics.get(HEADLINE)
    why = None
    if run.info.experiment_id != experiment:
        why = f"is in another MLflow experiment ({run.info.experiment_id})"
    elif run.info.status != "FINISHED":
        why = f"is {run.info.status}, not FINISHED"
    elif trained_on != dataset:
        why = f"was trained on {trained_on}, not on {dataset} (data.dataset)"
    elif accuracy is None or accuracy != accuracy:
        why = f"has no {HEADLINE} metric"
    if why:
        raise RegistryError(f"run {run_id} {why}: it cannot be registered")
    return run


# A version's tag naming the version the alias pointed at before it (``--rollback``)
PREVIOUS_TAG = "mnistflow.previous.{alias}"


def register(
    tracking_uri: str,
    experiment_name: str,
    cfg: RegistryConfig,
    dataset: str,
    run_id: str | None = None,
    alias: str | None = None,
) -> Registered:
    """Register a run's model as ``cfg.model_for(dataset)`` and point an alias at it.

    The version is described (run, dataset, accuracy, commit); when the alias moves, the new
    version remembers the one it pointed at before (:data:`PREVIOUS_TAG`), for
    :func:`rollback`.

    Args:
        tracking_uri: the MLflow store (its registry is the same store).
        experiment_name: the experiment whose runs compete.
        cfg: registered model name and alias.
        dataset: the dataset whose runs compete (``data.dataset``).
        run_id: the run to register; None: the best finished run of ``dataset``.
        alias: the alias to set; None: ``cfg.alias`` (the champion).

    Returns:
        What was registered.

    Raises:
        RegistryError: no candidate run, a run that may not be registered, or no logged model.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = experiment_id(client, tracking_uri, experiment_name)
    if run_id is None:
        run = best_finished(client, experiment, dataset)
    else:
        run = chosen_run(client, experiment, run_id, dataset)
    run_id, run_name = run.info.run_id, run.info.run_name or ""
    name, alias = cfg.model_for(dataset), alias or cfg.alias
    models = client.search_logged_models(
        experiment_ids=[experiment],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_ARTIFACT}'",
    )
    if not models:
        raise RegistryError(f"run {run_name} ({run_id}) has no logged model '{MODEL_ARTIFACT}'")
    accuracy = float(run.data.metrics[HEADLINE])
    _ensure_registered_model(client, name)
    existing = client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    if existing:
        version = max(int(v.version) for v in existing)
    else:
        # The artifact location, not a models:/ URI: MLflow 3.17 resolves models:/<id>
        # through the *global* tracking URI, not this client's, and fails on any other store.
        description = (
            f"run {run_name} ({run_id}), dataset {dataset}, {HEADLINE} {accuracy:.4f}, "
            f"commit {run.data.tags.get('git_commit', 'unknown')}"
        )
        version = int(
            client.create_model_version(
                name,
                source=models[0].artifact_location,
                run_id=run_id,
                model_id=models[0].model_id,
                description=description,
            ).version
        )
    _move_alias(client, name, alias, version)
    result = Registered(name, version, alias, run_id, run_name, accuracy, not existing)
    log.info(
        "%s version %s of %s@%s: run %s (%s), %s=%.4f",
        "registered" if result.created else "kept",
        version,
        name,
        alias,
        run_name,
        run_id,
        HEADLINE,
        accuracy,
    )
    return result


def rollback(
    tracking_uri: str, cfg: RegistryConfig, dataset: str, alias: str | None = None
) -> Registered:
    """Point the alias (default ``cfg.alias``) of ``dataset``'s model back at the version it
    pointed at before its current one.

    Raises:
        RegistryError: the alias is not set, or its version has no earlier one recorded.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias = cfg.model_for(dataset), alias or cfg.alias
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise RegistryError(f"no model {name}@{alias} to roll back") from exc
    previous = current.tags.get(PREVIOUS_TAG.format(alias=alias))
    if previous is None:
        raise RegistryError(
            f"{name}@{alias} is version {current.version}, the first it pointed at: "
            "nothing to roll back to"
        )
    client.set_registered_model_alias(name, alias, str(previous))
    back = client.get_model_version(name, previous)
    run = client.get_run(back.run_id)
    result = Registered(
        name,
        int(previous),
        alias,
        back.run_id,
        run.info.run_name or "",
        float(run.data.metrics.get(HEADLINE, float("nan"))),
        created=False,
    )
    log.info("%s@%s rolled back from version %s to %s", name, alias, current.version, previous)
    return result


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
        log.info("created registered model %r", name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _move_alias(client: MlflowClient, name: str, alias: str, version: int) -> None:
    """Point ``alias`` at ``version``; when it moves, ``version`` remembers where it was."""
    from mlflow.exceptions import MlflowException

    try:
        before = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        before = None  # the alias is new
    if before is not None and int(before) != version:
        tag = PREVIOUS_TAG.format(alias=alias)
        client.set_model_version_tag(name, str(version), tag, str(before))
    client.set_registered_model_alias(name, alias, str(version))
