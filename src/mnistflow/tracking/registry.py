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
from mnistflow.tracking.query import RANKING, experiment_id
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

    The store filters and orders (:data:`~mnistflow.tracking.query.RANKING`) and returns one
    run, so the cost does not grow with the number of runs.

    Raises:
        RegistryError: no FINISHED run has a headline accuracy.
    """
    quoted = dataset.replace("'", "")  # dataset names are keys of params.yaml's datasets:
    found = client.search_runs(
        [experiment],
        filter_string=f"attributes.status = 'FINISHED' AND tags.{DATASET_TAG} = '{quoted}'",
        order_by=RANKING,
        max_results=1,
    )
    accuracy = found[0].data.metrics.get(HEADLINE) if found else None
    # missing and NaN accuracies sort last: if the first has none, no run has one
    if accuracy is None or accuracy != accuracy:
        raise RegistryError(
            f"no FINISHED run of dataset {dataset} with a {HEADLINE} metric to register: run "
            "the pipeline (dvc repro) on it first"
        )
    return found[0]


def register_best(
    tracking_uri: str, experiment_name: str, cfg: RegistryConfig, dataset: str
) -> Registered:
    """Register the best finished run of ``dataset`` as ``cfg.model_for(dataset)`` and point
    ``cfg.alias`` at it.

    Args:
        tracking_uri: the MLflow store (its registry is the same store).
        experiment_name: the experiment whose runs compete.
        cfg: registered model name and alias.
        dataset: the dataset whose runs compete (``data.dataset``).

    Returns:
        What was registered.

    Raises:
        RegistryError: no candidate run, or the best run has no logged model.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = experiment_id(client, tracking_uri, experiment_name)
    best = best_finished(client, experiment, dataset)
    run_id, run_name = best.info.run_id, best.info.run_name or ""
    name = cfg.model_for(dataset)
    models = client.search_logged_models(
        experiment_ids=[experiment],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_ARTIFACT}'",
    )
    if not models:
        raise RegistryError(
            f"best run {run_name} ({run_id}) has no logged model '{MODEL_ARTIFACT}'"
        )
    model_id = models[0].model_id
    # The artifact location, not a models:/ URI: MLflow 3.17 resolves models:/<id> through the
    # *global* tracking URI, not this client's, and fails on any other store.
    source = models[0].artifact_location

    try:
        client.create_registered_model(name)
        log.info("created registered model %r", name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = client.search_model_versions(
        filter_string=f"name = '{name}' AND run_id = '{run_id}'"
    )
    if existing:
        version = max(int(v.version) for v in existing)
        created = False
    else:
        version = int(
            client.create_model_version(
                name, source=source, run_id=run_id, model_id=model_id
            ).version
        )
        created = True
    client.set_registered_model_alias(name, cfg.alias, str(version))
    result = Registered(
        model_name=name,
        version=version,
        alias=cfg.alias,
        run_id=run_id,
        run_name=run_name,
        accuracy=float(best.data.metrics[HEADLINE]),
        created=created,
    )
    log.info(
        "%s version %s of %s@%s: run %s (%s), %s=%.4f",
        "registered" if created else "kept",
        version,
        name,
        cfg.alias,
        result.run_name,
        run_id,
        HEADLINE,
        result.accuracy,
    )
    return result
