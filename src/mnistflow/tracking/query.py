"""Reading runs back from the MLflow store (through MLflow's client, never the store's files)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import pandas as pd

from mnistflow.modeling.metrics import HEADLINE
from mnistflow.tracking.artifacts import DATASET_TAG
from mnistflow.tracking.provenance import EXP_NAME_TAG
from mnistflow.util.errors import UserError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # runs per search request

# The leaderboard's order (reporting.leaderboard.shape_table) as the store's order_by. MLflow
# puts missing and NaN metrics last in either direction, as the leaderboard does.
RANKING = [f"metrics.{HEADLINE} DESC", "metrics.fit_time_s ASC", "attributes.start_time ASC"]


class LeaderboardError(UserError):
    """The store holds nothing to rank (no such experiment)."""


class ExperimentRunError(UserError):
    """No finished MLflow run belongs to the named DVC experiment."""


def experiment_id(client: MlflowClient, tracking_uri: str, experiment_name: str) -> str:
    """The id of experiment ``experiment_name``.

    Raises:
        LeaderboardError: the experiment does not exist in the store.
    """
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise LeaderboardError(
            f"no MLflow experiment {experiment_name!r} (mlflow.experiment_name) in "
            f"{tracking_uri}: run the pipeline first (dvc repro or dvc exp run)"
        )
    return experiment.experiment_id


def fetch_runs(tracking_uri: str, experiment_name: str) -> pd.DataFrame:
    """Every active run of an experiment, one row each, through MLflow's client API.

    Args:
        tracking_uri: the MLflow store.
        experiment_name: the experiment (params ``mlflow.experiment_name``).

    Returns:
        A DataFrame shaped like ``mlflow.search_runs``: run_id, run_name, status, start_time
        (UTC), and ``metrics.<key>``, ``params.<key>``, ``tags.<key>`` columns.

    Raises:
        LeaderboardError: the experiment does not exist in the store.
    """
    # Imported here: mlflow takes seconds to import, and `mnistflow --help` should not wait.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = experiment_id(client, tracking_uri, experiment_name)
    rows = _search(client, experiment, "", None, None)
    log.info("%d runs in experiment %r", len(rows), experiment_name)
    return pd.DataFrame(rows)


def fetch_top_runs(tracking_uri: str, experiment_name: str, dataset: str, top: int) -> pd.DataFrame:
    """The runs a leaderboard of ``dataset`` (tag ``dataset``) shows: its best ``top`` in
    :data:`RANKING` order (:func:`best_runs`) and its newest ``top`` that did not finish,
    shaped as :func:`fetch_runs`. The cost does not grow with the number of runs.

    Raises:
        LeaderboardError: the experiment does not exist in the store.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = experiment_id(client, tracking_uri, experiment_name)
    quoted = dataset.replace("'", "")  # dataset names are keys of params.yaml's datasets:
    of_dataset = f"tags.{DATASET_TAG} = '{quoted}'"
    found = best_runs(client, experiment, of_dataset, top)
    found += client.search_runs(
        [experiment],
        filter_string=f"{of_dataset} AND attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=top,
    )
    log.info("%d runs of dataset %s read from experiment %r", len(found), dataset, experiment_name)
    return pd.DataFrame([_row(run) for run in found])


SAMPLE = 100  # newest runs whose accuracies choose the threshold of best_runs


def best_runs(client: MlflowClient, experiment: str, where: str, top: int) -> list[Run]:
    """The best ``top`` runs matching ``where`` in :data:`RANKING` order (fewer if fewer
    match), at a cost that does not grow with the number of runs.

    The store's ranked search joins every matching run to the metric it orders by, and
    sqlite runs that join as a nested scan: 9 CPU s per search at 10,000 runs. So only
    runs above a threshold are ranked: the newest ``SAMPLE`` (at least ``top``) runs are read
    in start order (an index), their k-th best accuracy is the threshold (k = 1, 2, 4, ...),
    and the store ranks the runs with ``metrics.<HEADLINE> >= threshold``. When ``top``
    come back they are the best of all: every other run has a lower accuracy or ranks after
    them. When the sample is every run, it is ranked here.
    """
    size = max(top, SAMPLE)
    newest = client.search_runs(
        [experiment], filter_string=where, order_by=["attributes.start_time DESC"],
        max_results=size + 1,
    )  # fmt: skip
    if len(newest) <= size:  # every run
        return sorted(newest, key=_ranking_key)[:top]
    scores = sorted((a for r in newest if (a := _accuracy(r)) is not None), reverse=True)
    ranks = [2**i for i in range(len(scores).bit_length()) if 2**i < len(scores)]
    for k in [*ranks, len(scores)] if scores else []:  # k = 1, 2, 4, ..., every score
        found = client.search_runs(
            [experiment],
            filter_string=f"{where} AND metrics.{HEADLINE} >= {scores[k - 1]!r}",
            order_by=RANKING,
            max_results=top,
        )
        if len(found) >= top:
            return list(found)
    # fewer than `top` runs with an accuracy: the store ranks every run of `where`
    return list(client.search_runs([experiment], where, order_by=RANKING, max_results=top))


def _accuracy(run: Run) -> float | None:
    value = run.data.metrics.get(HEADLINE)
    return None if value is None or math.isnan(value) else float(value)


def _ranking_key(run: Run) -> tuple:
    """:data:`RANKING` as a sort key: accuracy descending, fit time, start; missing last."""
    accuracy = _accuracy(run)
    fit = run.data.metrics.get("fit_time_s")
    fit = None if fit is None or math.isnan(fit) else fit
    return (accuracy is None, -(accuracy or 0.0), fit is None, fit or 0.0, run.info.start_time)


def _row(found: Run) -> dict[str, object]:
    """One run as a row of :func:`fetch_runs`."""
    row: dict[str, object] = {
        "run_id": found.info.run_id,
        "run_name": found.info.run_name,
        "status": found.info.status,
        "start_time": pd.Timestamp(found.info.start_time, unit="ms", tz="UTC"),
    }
    row.update({f"metrics.{k}": v for k, v in found.data.metrics.items()})
    row.update({f"params.{k}": v for k, v in found.data.params.items()})
    row.update({f"tags.{k}": v for k, v in found.data.tags.items()})
    return row


def _search(
    client: MlflowClient,
    experiment: str,
    filter_string: str,
    order_by: list[str] | None,
    limit: int | None,
) -> list[dict[str, object]]:
    """Rows of the runs ``search_runs`` finds (all pages, or the first ``limit`` runs)."""
    rows: list[dict[str, object]] = []
    token = None
    while limit is None or len(rows) < limit:
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(rows))
        page = client.search_runs(
            [experiment],
            filter_string=filter_string,
            order_by=order_by,
            max_results=size,
            page_token=token,
        )
        rows.extend(_row(found) for found in page)
        token = page.token
        if not token:
            break
    return rows


def experiment_run(tracking_uri: str, experiment_name: str, exp_name: str) -> str:
    """The id of the MLflow run of DVC experiment ``exp_name`` (e.g. from ``dvc exp show``).

    Train tags its run ``dvc_exp_name=<DVC_EXP_NAME>``; a name can have several runs (an
    experiment rerun with ``dvc exp run -f``): the newest FINISHED one is returned.

    Raises:
        ExperimentRunError: no such experiment, or none of its runs finished.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    quoted = exp_name.replace("'", "")  # git refs (DVC names) cannot hold quotes anyway
    found = (
        []
        if experiment is None
        else client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.{EXP_NAME_TAG} = '{quoted}'",
            order_by=["attributes.start_time DESC"],
        )
    )
    finished = [r for r in found if r.info.status == "FINISHED"]
    if not finished:
        statuses = ", ".join(f"{r.info.run_id} {r.info.status}" for r in found) or "no run"
        raise ExperimentRunError(
            f"no FINISHED MLflow run of DVC experiment {exp_name!r} in experiment "
            f"{experiment_name!r} at {tracking_uri} ({statuses})"
        )
    if len(finished) > 1:
        log.info("%d finished runs of %s; taking the newest", len(finished), exp_name)
    return finished[0].info.run_id
