"""Registry: the best finished run becomes mnist-mlp@champion in a real sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnistflow.reporting.leaderboard import shape_table
from mnistflow.tracking.models import load_model
from mnistflow.tracking.query import fetch_runs
from mnistflow.tracking.registry import RegistryConfig, RegistryError, best_finished, register_best
from mnistflow.tracking.store import ensure_experiment
from tests.mlflow_fixtures import EXPERIMENT, Store, copy_store, log_run, shared_store

pytestmark = pytest.mark.unit

CFG = RegistryConfig(model_name="mnist-mlp", alias="champion")


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Store:
    """A writable copy of the shared store (registering writes to it)."""
    return copy_store(shared_store(tmp_path_factory), tmp_path / "store")


def _load_champion(uri: str) -> object:
    """The champion's estimator, through the logged model predict and serve load."""
    model = load_model(uri, f"models:/{CFG.model_name}@{CFG.alias}")
    return model.unwrap_python_model().estimator


def test_best_finished_is_the_leaderboards_first_finished_run(store: Store) -> None:
    client = MlflowClient(store.uri)

    def run(name: str, status: str, accuracy: float, fit_time: float | None = None) -> str:
        run_id = client.create_run(store.experiment_id, run_name=name).info.run_id
        client.log_metric(run_id, "test_accuracy", accuracy)
        if fit_time is not None:
            client.log_metric(run_id, "fit_time_s", fit_time)
        client.set_terminated(run_id, status)
        return run_id

    # wide-alpha (0.9811, 41 s) leads the store; higher but unfinished runs do not count
    run("failed-but-high", "FAILED", 0.999)
    run("killed-but-high", "KILLED", 0.998)
    run("nan", "FINISHED", float("nan"))
    assert best_finished(client, store.experiment_id).info.run_id == store.runs["wide-alpha"].run_id
    # a tie on accuracy goes to the shorter fit, as on the leaderboard
    faster = run("as-good-faster", "FINISHED", 0.9811, 10.0)
    assert best_finished(client, store.experiment_id).info.run_id == faster
    board = shape_table(fetch_runs(store.uri, EXPERIMENT), 0.97)
    assert board.ranked[board.ranked["status"] == "FINISHED"].iloc[0]["run_id"] == faster

    empty = client.create_experiment("nothing-finished")
    run_id = client.create_run(empty, run_name="running").info.run_id
    client.log_metric(run_id, "test_accuracy", 0.99)
    with pytest.raises(RegistryError, match="no FINISHED run"):
        best_finished(client, empty)


def test_register_best_sets_champion_to_the_best_runs_model(store: Store) -> None:
    best = store.runs["wide-alpha"]
    result = register_best(store.uri, EXPERIMENT, CFG)
    assert (result.version, result.run_id, result.created) == (1, best.run_id, True)
    assert result.accuracy == pytest.approx(0.9811)

    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    version = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert version.run_id == best.run_id
    assert int(version.version) == 1
    model = _load_champion(store.uri)
    assert model.hidden_layer_sizes == best.hidden  # the best run's model, not another's

    # Registering again keeps the version; a better run moves the alias to a new version.
    again = register_best(store.uri, EXPERIMENT, CFG)
    assert (again.version, again.created) == (1, False)
    better = log_run(store.uri, store.experiment_id, "better", (10,), 0.0, 0.99, 30.0, "false",
                     None)  # fmt: skip
    moved = register_best(store.uri, EXPERIMENT, CFG)
    assert (moved.version, moved.run_id, moved.created) == (2, better.run_id, True)
    assert client.get_model_version_by_alias("mnist-mlp", "champion").run_id == better.run_id
    assert _load_champion(store.uri).hidden_layer_sizes == (10,)


def test_register_without_finished_runs_is_a_clear_error(store: Store) -> None:
    experiment_id = ensure_experiment(store.uri, "only-failures", store.root)
    log_run(store.uri, experiment_id, "crashed", (4,), 0.1, None, None, "false", None)
    with pytest.raises(RegistryError, match="no FINISHED run with a test_accuracy"):
        register_best(store.uri, "only-failures", CFG)
