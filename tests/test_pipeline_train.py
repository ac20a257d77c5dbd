"""End to end: `dvc repro` through train and evaluate in temporary copies of the repository."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sklearn.neural_network import MLPClassifier

from mnistflow.util.fileio import read_json
from tests.helpers import copy_repo, run, use_tiny_dataset, workspace_env


def only_run(ws: Path) -> tuple[MlflowClient, mlflow.entities.Run]:
    """The single MLflow run in the workspace's default store."""
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mnist-mlp")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.e2e
@pytest.mark.smoke
def test_dvc_repro_tiny_logs_one_run_and_writes_dvc_metrics_and_plots(
    tmp_path: Path, tiny_mirror: tuple[Path, dict]
) -> None:

    mirror, files = tiny_mirror
    ws = copy_repo(tmp_path / "ws", use_tiny_dataset(files, train={"max_iter": 2}))
    env = workspace_env(mirror)
    run(["dvc", "repro"], ws, env)

    client, r = only_run(ws)
    run_id = r.info.run_id
    assert r.info.status == "FINISHED"
    assert read_json(ws / "outputs/train/run.json")["run_id"] == run_id
    # params, flattened, from every section the run depends on
    assert r.data.params["train.hidden_layer_sizes"] == "[100, 50, 25]"
    assert r.data.params["train.max_iter"] == "2"
    assert r.data.params["encode.scaling"] == "divide255"
    assert r.data.params["data.dataset"] == "tiny"
    assert r.data.params["evaluate.headline"] == "argmax"
    # metrics: stepped loss, test accuracies, per-class F1
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    metrics = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    assert r.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert r.data.metrics["test_accuracy_argmax"] == pytest.approx(metrics["accuracy_argmax"])
    for k in range(10):
        assert f"f1_class_{k}" in r.data.metrics
    assert r.data.metrics["n_iter"] == 2
    # tags
    tags = r.data.tags
    assert tags["dataset"] == "tiny"
    assert len(tags["dataset_sha256"]) == 64
    assert tags["is_baseline"] == "true"  # params-only change committed in the workspace
    assert tags["git_dirty"] == "false"
    assert len(tags["git_commit"]) == 40
    assert tags["headline_metric"] == "test_accuracy_argmax"
    assert tags["mnistflow.stage"] == "evaluated"
    assert "learning_rate" in tags["ignored_settings"]
    assert "dvc_exp_name" not in tags
    # artifacts in the run, in the repo-root artifact store, and the model
    paths = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.md", "report/confusion.png", "report/misclassified.png"} <= paths
    assert {a.path for a in client.list_artifacts(run_id, "evaluate")} >= {
        "evaluate/misclassified.csv",
        "evaluate/metrics.json",
    }
    assert (ws / "mlartifacts").is_dir()
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    models = mlflow.search_logged_models(
        output_format="list", experiment_ids=[r.info.experiment_id]
    )
    assert [m.source_run_id for m in models] == [run_id]

    # DVC outputs
    assert set(metrics) >= {
        "accuracy",
        "accuracy_argmax",
        "accuracy_exact_match",
        "rows_no_class",
        "rows_multi_class",
        "per_class",
        "fit_time_s",
        "delta_to_baseline",
        "baseline",
    }
    assert metrics["delta_to_baseline"] == pytest.approx(metrics["accuracy"] - 0.97, abs=1e-6)
    confusion = (ws / "outputs/evaluate/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) == 1 + 100
    assert (ws / "outputs/train/loss.csv").read_text().splitlines()[0] == "epoch,loss"
    report = (ws / "reports/latest/report.md").read_text()
    assert run_id in report
    assert "argmax" in report
    with (ws / "models/model.pkl").open("rb") as fh:
        assert type(pickle.load(fh)) is MLPClassifier
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], ws, env).stdout)
    assert "outputs/evaluate/metrics.json" in json.dumps(shown)
    plots = run(["dvc", "plots", "show", "--json"], ws, env).stdout
    assert "outputs/train/loss.csv" in plots
    assert "outputs/evaluate/confusion.csv" in plots
    # everything is up to date: a second repro reruns nothing and logs no run
    assert json.loads(run(["dvc", "status", "--json"], ws, env).stdout) == {}
    run(["dvc", "repro"], ws, env)
    _, again = only_run(ws)
    assert again.info.run_id == run_id

    # determinism: training again on the same params and data gives the same bytes
    model_bytes = (ws / "models/model.pkl").read_bytes()
    loss = (ws / "outputs/train/loss.csv").read_text()
    stage_env = {**env, "PYTHONPATH": "src"}
    run([sys.executable, "stages/train.py"], ws, stage_env)
    assert (ws / "models/model.pkl").read_bytes() == model_bytes
    assert (ws / "outputs/train/loss.csv").read_text() == loss
    assert read_json(ws / "outputs/train/run.json")["run_id"] != run_id  # a new run


@pytest.mark.slow
def test_default_params_on_real_mnist_reach_the_baseline(
    tmp_path: Path, shared_mnist: Path
) -> None:
    ws = copy_repo(tmp_path / "ws")
    env = workspace_env(shared_mnist)
    run(["dvc", "repro"], ws, env, timeout=1800)
    metrics = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    assert metrics["accuracy"] >= 0.97, metrics
    assert metrics["delta_to_baseline"] >= 0
    _, r = only_run(ws)
    assert r.info.status == "FINISHED"
    assert r.data.metrics["test_accuracy"] >= 0.97
    assert r.data.tags["dataset"] == "mnist"
    assert r.data.tags["is_baseline"] == "true"
    assert (ws / "models/model.pkl").stat().st_size > 0
