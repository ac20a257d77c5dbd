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

from mnistflow.modeling.metrics import DVC_METRICS
from mnistflow.util.fileio import read_json
from tests.helpers import (
    BASELINE_TRAIN,
    REPO_ROOT,
    copy_repo,
    run,
    use_tiny_dataset,
    workspace_env,
)


def outputs_state(ws: Path) -> dict[str, bytes]:
    """The bytes of every file the pipeline writes into git (outputs/, reports/latest/)."""
    files = [*(ws / "outputs").rglob("*"), *(ws / "reports/latest").rglob("*")]
    return {f.relative_to(ws).as_posix(): f.read_bytes() for f in files if f.is_file()}


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
    assert r.data.params["train.hidden_layer_sizes"] == str(BASELINE_TRAIN["hidden_layer_sizes"])
    assert r.data.params["train.max_iter"] == "2"
    assert r.data.params["encode.scaling"] == "divide255"
    assert r.data.params["data.dataset"] == "tiny"
    assert r.data.params["evaluate.headline"] == "argmax"
    # metrics: stepped loss, test accuracies, per-class F1
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    metrics = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    for name in ("test_accuracy", "test_accuracy_argmax", "delta_to_baseline", "rows_no_class"):
        assert r.data.metrics[name] == pytest.approx(metrics[name], abs=1e-6)  # one name each
    for k in range(10):
        assert f"f1_class_{k}" in r.data.metrics
    assert r.data.metrics["n_iter"] == 2
    assert r.data.metrics["fit_time_s"] > 0  # timings: MLflow only    # tags
    tags = r.data.tags
    assert tags["dataset"] == "tiny"
    assert len(tags["dataset_sha256"]) == 64
    assert tags["is_baseline"] == "true"  # params-only change committed in the workspace
    assert tags["git_dirty"] == "false"
    assert len(tags["git_commit"]) == 40
    assert r.info.run_name == f"baseline@{tags['git_commit'][:7]}"  # named after what made it
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
        "evaluate/per_class.csv",
    }
    assert [a.path for a in client.list_artifacts(run_id, "encode")] == ["encode/stats.npz"]
    logged_report = Path(client.download_artifacts(run_id, "report/report.md")).read_text()
    assert run_id in logged_report  # the run's copy names the run and its fit time
    assert "Fit time:" in logged_report
    assert (ws / "mlartifacts").is_dir()
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    models = mlflow.search_logged_models(
        output_format="list", experiment_ids=[r.info.experiment_id]
    )
    assert [m.source_run_id for m in models] == [run_id]

    # DVC outputs: the headline figures in their order (test_metrics pins the names), headline
    # first; per-class scores in their own plot
    assert list(metrics) == list(DVC_METRICS)
    assert metrics["n_test"] == 100
    per_class = (ws / "outputs/evaluate/per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1,support"
    assert [line.split(",")[0] for line in per_class[1:]] == [str(k) for k in range(10)]
    assert sum(int(line.split(",")[4]) for line in per_class[1:]) == 100
    f1_0 = float(per_class[1].split(",")[3])
    assert r.data.metrics["f1_class_0"] == pytest.approx(f1_0, abs=1e-6)
    assert metrics["delta_to_baseline"] == pytest.approx(metrics["test_accuracy"] - 0.97, abs=1e-6)
    assert set(read_json(ws / "outputs/train/metrics.json")) == {"n_iter", "final_loss"}
    assert "tracking_uri" not in read_json(ws / "outputs/train/run.json")
    confusion = (ws / "outputs/evaluate/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) == 1 + 100
    assert (ws / "outputs/train/loss.csv").read_text().splitlines()[0] == "epoch,loss"
    report = (ws / "reports/latest/report.md").read_text()
    assert "argmax" in report
    assert "- Model: MLP 100-50-25 (relu, adam); training: 2 epochs" in report
    for per_run in (run_id, str(ws), "sqlite", "Fit time"):
        assert per_run not in report  # the committed report is the same on every machine
    with (ws / "models/model.pkl").open("rb") as fh:
        assert type(pickle.load(fh)) is MLPClassifier
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], ws, env).stdout)
    assert "outputs/evaluate/metrics.json" in json.dumps(shown)
    plots = run(["dvc", "plots", "show", "--json"], ws, env).stdout
    assert "outputs/train/loss.csv" in plots
    assert "outputs/evaluate/confusion.csv" in plots
    assert "outputs/evaluate/per_class.csv" in plots
    # everything is up to date: a second repro reruns nothing and logs no run
    assert json.loads(run(["dvc", "status", "--json"], ws, env).stdout) == {}
    run(["dvc", "repro"], ws, env)
    _, again = only_run(ws)
    assert again.info.run_id == run_id

    # determinism: training again on the same params and data gives the same bytes
    before = outputs_state(ws)
    model_bytes = (ws / "models/model.pkl").read_bytes()
    loss = (ws / "outputs/train/loss.csv").read_text()
    stage_env = {**env, "PYTHONPATH": "src"}
    run([sys.executable, "stages/train.py"], ws, stage_env)
    assert (ws / "models/model.pkl").read_bytes() == model_bytes
    assert (ws / "outputs/train/loss.csv").read_text() == loss
    assert read_json(ws / "outputs/train/run.json")["run_id"] != run_id  # a new run
    # ... and evaluating it again: every committed output but run.json is byte-identical
    run([sys.executable, "stages/evaluate.py"], ws, stage_env)
    after = outputs_state(ws)
    assert {k for k in before if before[k] != after.get(k)} == {"outputs/train/run.json"}


@pytest.mark.slow
def test_default_params_on_real_mnist_reach_the_baseline(
    tmp_path: Path, shared_mnist: Path
) -> None:
    ws = copy_repo(tmp_path / "ws")
    env = workspace_env(shared_mnist)
    run(["dvc", "repro"], ws, env, timeout=1800)
    metrics = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.97, metrics
    assert metrics["delta_to_baseline"] >= 0
    _, r = only_run(ws)
    assert r.info.status == "FINISHED"
    assert r.data.metrics["test_accuracy"] >= 0.97
    assert r.data.tags["dataset"] == "mnist"
    assert r.data.tags["is_baseline"] == "true"
    assert (ws / "models/model.pkl").stat().st_size > 0
    # The committed outputs are the pinned numbers: any x86-64-v3 machine makes them byte
    # for byte (docs/pipeline.md, "The same numbers on every machine").
    if r.data.tags["numerics.pinned"] != "true":
        pytest.skip(f"this CPU is below x86-64-v3: {r.data.tags['numerics.note']}")
    for committed in (
        "outputs/train/metrics.json",
        "outputs/train/loss.csv",
        "outputs/evaluate/metrics.json",
        "outputs/evaluate/confusion.csv",
        "reports/latest/report.md",
    ):
        assert (ws / committed).read_bytes() == (REPO_ROOT / committed).read_bytes(), committed
