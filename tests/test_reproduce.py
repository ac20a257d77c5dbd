"""mnistflow reproduce: restoring params, comparing metrics, and real reruns of logged runs."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnistflow.config import load_params
from mnistflow.experiments.reproduce import (
    ReproduceError,
    compare_metrics,
    format_table,
    parse_logged_value,
    restore_params,
    settings,
)
from tests.helpers import (
    REPO_ROOT,
    run,
    tiny_repo_after_repro,
)

MNISTFLOW = str(Path(sys.executable).parent / "mnistflow")


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "current", "expected"),
    [
        ("[100, 50, 25]", [100, 50, 25], [100, 50, 25]),
        ("0.0001", 0.0001, 0.0001),
        ("1e-05", 0.0001, 1e-05),  # YAML 1.1 reads this as a string
        ("1e-05", 1e-05, 1e-05),
        ("42", 0, 42),
        ("True", False, True),
        ("auto", "auto", "auto"),
        ("64", "auto", 64),
        ("relu", "tanh", "relu"),
        ("mnist", "tiny", "mnist"),
        ("a: [", "x", "a: ["),  # not YAML: the raw string
    ],
)
def test_parse_logged_value(raw: str, current: object, expected: object) -> None:
    value = parse_logged_value(raw, current)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.unit
def test_restore_params_sets_every_logged_key() -> None:
    base = load_params(REPO_ROOT / "params.yaml")
    logged = {
        "train.alpha": "1e-05",
        "train.hidden_layer_sizes": "[16, 8]",
        "train.batch_size": "64",
        "encode.augment.copies": "2",
        "evaluate.headline": "exact_match",
        "evaluate.baseline_accuracy.fashion-mnist": "0.9",  # a run logs its dataset's only
        "data.dataset": "fashion-mnist",
        "mlflow.experiment_name": "other",
    }
    restored = restore_params(base, logged)
    assert restored["train"]["alpha"] == 1e-05
    assert restored["train"]["hidden_layer_sizes"] == [16, 8]
    assert restored["train"]["batch_size"] == 64
    assert restored["encode"]["augment"]["copies"] == 2
    assert restored["evaluate"]["headline"] == "exact_match"
    assert restored["evaluate"]["baseline_accuracy"] == {"mnist": 0.97, "fashion-mnist": 0.9}
    assert restored["data"]["dataset"] == "fashion-mnist"
    assert restored["mlflow"]["experiment_name"] == "other"
    assert restored["train"]["max_iter"] == base["train"]["max_iter"]  # untouched
    assert base["train"]["hidden_layer_sizes"] != [16, 8]  # the input is not modified


@pytest.mark.unit
@pytest.mark.parametrize(
    ("logged", "message"),
    [
        ({"train.no_such_key": "1"}, "train.no_such_key"),
        ({"nosection.alpha": "1"}, "nosection"),
        ({"encode.augment": "1"}, "whole section"),
        ({"train.alpha": "-1"}, "train.alpha"),  # rejected by TrainConfig
        ({"data.dataset": "nope"}, "data.dataset"),
    ],
)
def test_restore_params_rejects(logged: dict[str, str], message: str) -> None:
    base = load_params(REPO_ROOT / "params.yaml")
    with pytest.raises(ReproduceError, match=message):
        restore_params(base, logged)


@pytest.mark.unit
def test_settings_leave_out_the_model_config_params_mlflow_logs() -> None:
    logged = {"train.alpha": "0.001", "n_classes": "10", "data.dataset": "mnist"}
    assert settings(logged) == {"train.alpha": "0.001", "data.dataset": "mnist"}
    base = load_params(REPO_ROOT / "params.yaml")
    assert restore_params(base, settings(logged))["train"]["alpha"] == 0.001


@pytest.mark.unit
def test_compare_metrics() -> None:
    logged = {"test_accuracy": 0.9, "n_iter": 5.0, "fit_time_s": 3.0, "train_loss": 0.25}
    logged |= {f"f1_class_{k}": 0.5 for k in range(10)}
    machine = {"system/cpu_utilization_percentage": 40.0, "system/disk_usage_megabytes": 9.5}
    same = compare_metrics({**logged, **machine}, {**logged, "fit_time_s": 9.0})
    assert all(r.identical for r in same)
    assert "fit_time_s" not in {r.name for r in same}  # wall-clock time is not compared
    assert not {r.name for r in same} & set(machine)  # nor the machine's system metrics
    assert "f1_class_* (10)" in {r.name for r in same}  # folded

    rerun = {**logged, "train_loss": math.nextafter(0.25, 1.0), "f1_class_3": 0.4}
    del rerun["n_iter"]
    rows = {r.name: r for r in compare_metrics(logged, rerun)}
    assert not rows["train_loss"].identical  # one ulp is a difference
    assert not rows["n_iter"].identical
    assert rows["n_iter"].rerun is None
    assert not rows["f1_class_3"].identical
    assert rows["f1_class_0"].identical
    assert rows["test_accuracy"].identical
    table = format_table(list(rows.values()))
    assert "DIFFERENT" in table
    assert "train_loss" in table


# --- real reruns --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """A workspace with the tiny dataset after one `dvc repro`: (repo, env, run id)."""
    repo, env = tiny_repo_after_repro(tmp_path_factory.mktemp("reproduce"))
    run_id = json.loads((repo / "outputs/train/run.json").read_text())["run_id"]
    return repo, env, run_id


def client(repo: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def worktrees(repo: Path) -> list[str]:
    out = run(["git", "worktree", "list", "--porcelain"], repo).stdout
    return [line for line in out.splitlines() if line.startswith("worktree ")]


@pytest.mark.e2e
def test_reproduce_identical(logged_run: tuple[Path, dict, str]) -> None:
    repo, env, run_id = logged_run
    before = {r.info.run_id for r in client(repo).search_runs(["1"])}
    status_before = run(["git", "status", "--porcelain"], repo).stdout
    proc = run([MNISTFLOW, "reproduce", run_id], repo, env)
    assert "result: identical" in proc.stdout, proc.stdout + proc.stderr
    assert "test_accuracy" in proc.stdout
    assert "train_loss" in proc.stdout

    new = {r.info.run_id: r for r in client(repo).search_runs(["1"])}
    added = [new[i] for i in set(new) - before]
    assert len(added) == 1, "the rerun is logged as its own run in the same store"
    rerun = added[0]
    assert rerun.info.status == "FINISHED"
    original = client(repo).get_run(run_id)
    assert rerun.data.metrics["test_accuracy"] == original.data.metrics["test_accuracy"]
    assert rerun.data.tags["dataset_sha256"] == original.data.tags["dataset_sha256"]
    assert rerun.data.tags["git_commit"] == original.data.tags["git_commit"]
    assert len(worktrees(repo)) == 1, "the temporary worktree is removed"
    temp = re.search(r"\(in (/\S+mnistflow-reproduce-\w+)\)", proc.stderr)
    assert temp is not None
    assert not Path(temp[1]).exists()
    # the caller's workspace is left as it was (params.yaml, outputs, dvc.lock)
    assert run(["git", "status", "--porcelain"], repo).stdout == status_before
    assert rerun.data.tags.get("reproduces") == run_id  # set by train from MNISTFLOW_REPRODUCES


@pytest.mark.e2e
def test_reproduce_tampered_metric(logged_run: tuple[Path, dict, str]) -> None:
    repo, env, run_id = logged_run
    original = client(repo).get_run(run_id).data.metrics["test_accuracy"]
    # A later value of the same key becomes the run's test_accuracy.
    client(repo).log_metric(run_id, "test_accuracy", original + 0.01, step=1)
    proc = run([MNISTFLOW, "reproduce", run_id], repo, env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT identical" in proc.stdout
    assert "test_accuracy" in proc.stdout
    assert "DIFFERENT" in proc.stdout


@pytest.mark.e2e
def test_reproduce_unknown_run(logged_run: tuple[Path, dict, str]) -> None:
    repo, env, _ = logged_run
    proc = run([MNISTFLOW, "reproduce", "0123456789abcdef0123456789abcdef"], repo, env, check=False)
    assert proc.returncode == 2
    assert "no MLflow run '0123456789abcdef0123456789abcdef'" in proc.stderr
    assert len(worktrees(repo)) == 1


@pytest.mark.e2e
def test_reproduce_unknown_commit(logged_run: tuple[Path, dict, str]) -> None:
    repo, env, run_id = logged_run
    # A run from another clone: same store, a commit this repository has never seen.
    other = client(repo).create_run("1", tags={**client(repo).get_run(run_id).data.tags})
    client(repo).set_tag(other.info.run_id, "git_commit", "f" * 40)
    client(repo).set_terminated(other.info.run_id, "FINISHED")
    proc = run([MNISTFLOW, "reproduce", other.info.run_id], repo, env, check=False)
    assert proc.returncode == 2
    assert f"commit {'f' * 40}" in proc.stderr
    assert "does not have" in proc.stderr
