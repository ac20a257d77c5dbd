"""Registry: the best finished run of a dataset becomes <dataset>-mlp@champion in a real
sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnistflow.reporting.leaderboard import shape_table
from mnistflow.serving.logged_model import load_model
from mnistflow.serving.registry import (
    RegistryConfig,
    RegistryError,
    best_finished,
    register,
    rollback,
)
from mnistflow.tracking.query import fetch_runs
from mnistflow.tracking.store import ensure_experiment
from tests.mlflow_fixtures import EXPERIMENT, Store, copy_store, log_run, shared_store

pytestmark = pytest.mark.unit

CFG = RegistryConfig(model_name="{dataset}-mlp", alias="champion")


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Store:
    """A writable copy of the shared store (registering writes to it)."""
    return copy_store(shared_store(tmp_path_factory), tmp_path / "store")


def _load_champion(uri: str) -> object:
    """The champion's estimator, through the logged model predict and serve load."""
    model = load_model(uri, f"models:/{CFG.model_for('mnist')}@{CFG.alias}")
    return model.unwrap_python_model().estimator


def test_best_finished_is_the_leaderboards_first_finished_run(store: Store) -> None:
    client = MlflowClient(store.uri)

    def run(name: str, status: str, accuracy: float, fit_time: float | None = None) -> str:
        run_id = client.create_run(store.experiment_id, run_name=name).info.run_id
        client.set_tag(run_id, "dataset", "mnist")
        client.log_metric(run_id, "test_accuracy", accuracy)
        if fit_time is not None:
            client.log_metric(run_id, "fit_time_s", fit_time)
        client.set_terminated(run_id, status)
        return run_id

    # wide-alpha (0.9811, 41 s) leads the store; higher but unfinished runs do not count
    run("failed-but-high", "FAILED", 0.999)
    run("killed-but-high", "KILLED", 0.998)
    run("nan", "FINISHED", float("nan"))
    assert (
        best_finished(client, store.experiment_id, "mnist").info.run_id
        == store.runs["wide-alpha"].run_id
    )
    # a tie on accuracy goes to the shorter fit, as on the leaderboard
    faster = run("as-good-faster", "FINISHED", 0.9811, 10.0)
    assert best_finished(client, store.experiment_id, "mnist").info.run_id == faster
    board = shape_table(fetch_runs(store.uri, EXPERIMENT), 0.97)
    assert board.ranked[board.ranked["status"] == "FINISHED"].iloc[0]["run_id"] == faster

    empty = client.create_experiment("nothing-finished")
    run_id = client.create_run(empty, run_name="running").info.run_id
    client.set_tag(run_id, "dataset", "mnist")
    client.log_metric(run_id, "test_accuracy", 0.99)
    with pytest.raises(RegistryError, match="no FINISHED run"):
        best_finished(client, empty, "mnist")


def test_register_best_sets_champion_to_the_best_runs_model(store: Store) -> None:
    best = store.runs["wide-alpha"]
    result = register(store.uri, EXPERIMENT, CFG, "mnist")
    assert (result.version, result.run_id, result.created) == (1, best.run_id, True)
    assert result.accuracy == pytest.approx(0.9811)

    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    version = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert version.run_id == best.run_id
    assert int(version.version) == 1
    model = _load_champion(store.uri)
    assert model.hidden_layer_sizes == best.hidden  # the best run's model, not another's

    # Registering again keeps the version; a better run moves the alias to a new version.
    again = register(store.uri, EXPERIMENT, CFG, "mnist")
    assert (again.version, again.created) == (1, False)
    better = log_run(store.uri, store.experiment_id, "better", (10,), 0.0, 0.99, 30.0, "false",
                     None)  # fmt: skip
    moved = register(store.uri, EXPERIMENT, CFG, "mnist")
    assert (moved.version, moved.run_id, moved.created) == (2, better.run_id, True)
    assert client.get_model_version_by_alias("mnist-mlp", "champion").run_id == better.run_id
    assert _load_champion(store.uri).hidden_layer_sizes == (10,)


def test_register_without_finished_runs_is_a_clear_error(store: Store) -> None:
    experiment_id = ensure_experiment(store.uri, "only-failures", store.root)
    log_run(store.uri, experiment_id, "crashed", (4,), 0.1, None, None, "false", None)
    with pytest.raises(RegistryError, match="no FINISHED run of dataset mnist with a"):
        register(store.uri, "only-failures", CFG, "mnist")


def test_each_dataset_registers_its_own_runs_under_its_own_name(store: Store) -> None:
    """Two datasets in one store: a better Fashion-MNIST run neither becomes the MNIST
    champion nor lets an MNIST run become the Fashion-MNIST one."""
    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    fashion = log_run(store.uri, store.experiment_id, "fashion", (10,), 0.0, 0.995, 30.0,
                      "false", None)  # fmt: skip
    client.set_tag(fashion.run_id, "dataset", "fashion-mnist")  # the fixture logs mnist

    mnist = register(store.uri, EXPERIMENT, CFG, "mnist")
    assert (mnist.model_name, mnist.run_id) == ("mnist-mlp", store.runs["wide-alpha"].run_id)
    other = register(store.uri, EXPERIMENT, CFG, "fashion-mnist")
    assert (other.model_name, other.version) == ("fashion-mnist-mlp", 1)
    assert other.run_id == fashion.run_id
    assert client.get_model_version_by_alias("mnist-mlp", "champion").run_id == mnist.run_id
    with pytest.raises(RegistryError, match="no FINISHED run of dataset kmnist"):
        register(store.uri, EXPERIMENT, CFG, "kmnist")


def test_people_steer_the_registry_run_alias_rollback(store: Store) -> None:
    """--run registers a chosen run, --alias sets another alias, --rollback moves the
    champion back; each version says what it is."""
    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    best, small = store.runs["wide-alpha"], store.runs["small"]
    first = register(store.uri, EXPERIMENT, CFG, "mnist")
    assert (first.version, first.run_id) == (1, best.run_id)
    chosen = register(store.uri, EXPERIMENT, CFG, "mnist", run_id=small.run_id)
    assert (chosen.version, chosen.alias, chosen.created) == (2, "champion", True)
    assert client.get_model_version_by_alias("mnist-mlp", "champion").run_id == small.run_id
    described = client.get_model_version("mnist-mlp", "2").description
    assert described.startswith(f"run small ({small.run_id}), dataset mnist, test_accuracy 0.9405")
    baseline = store.runs["baseline"]
    challenger = register(
        store.uri, EXPERIMENT, CFG, "mnist", run_id=baseline.run_id, alias="challenger"
    )
    assert (challenger.version, challenger.alias) == (3, "challenger")
    assert int(client.get_model_version_by_alias("mnist-mlp", "champion").version) == 2  # kept

    back = rollback(store.uri, CFG, "mnist")
    assert (back.version, back.run_id) == (1, best.run_id)
    assert client.get_model_version_by_alias("mnist-mlp", "champion").run_id == best.run_id
    with pytest.raises(RegistryError, match="version 1, the first it pointed at"):
        rollback(store.uri, CFG, "mnist")
    with pytest.raises(RegistryError, match=r"no model mnist-mlp@nope to roll back"):
        rollback(store.uri, CFG, "mnist", alias="nope")


def test_a_chosen_run_that_may_not_be_registered_is_one_line(store: Store) -> None:
    crashed = store.runs["crashed"].run_id
    with pytest.raises(RegistryError, match=f"run {crashed} is FAILED, not FINISHED"):
        register(store.uri, EXPERIMENT, CFG, "mnist", run_id=crashed)
    small = store.runs["small"].run_id
    with pytest.raises(RegistryError, match="was trained on mnist, not on fashion-mnist"):
        register(store.uri, EXPERIMENT, CFG, "fashion-mnist", run_id=small)
    with pytest.raises(RegistryError, match="no MLflow run 0123"):
        register(store.uri, EXPERIMENT, CFG, "mnist", run_id="0123")
