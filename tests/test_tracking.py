"""Tests for mnistflow.tracking.runs against real sqlite MLflow stores in temporary folders."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mnistflow.config import MlflowConfig, TrainConfig, config, load_params
from mnistflow.data.encode import Encoding
from mnistflow.modeling.model import build_classifier, fit_with_progress
from mnistflow.serving import logged_model
from mnistflow.serving.digit_model import load_estimator
from mnistflow.serving.inputs import pixel_frame
from mnistflow.tracking import provenance, runs
from mnistflow.tracking import store as store_mod
from mnistflow.util.signals import Interrupted, raise_on_signals
from tests.helpers import (
    BASELINE_TRAIN,
    REPO_ROOT,
    copy_repo,
    run,
    stage_env,
    synthetic_digits,
    write_encoded,
)

EXPERIMENT = "test-exp"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """A new sqlite store with one experiment: (uri, experiment id, root)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, store_mod.ensure_experiment(uri, EXPERIMENT, root), root


# --- store location -----------------------------------------------------------------------


@pytest.mark.unit
def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    sub = tmp_path / "repo" / "a" / "b"
    sub.mkdir(parents=True)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    empty = MlflowConfig(experiment_name="x", tracking_uri="")
    assert store_mod.resolve_tracking_uri(empty, sub) == (
        f"sqlite:///{(tmp_path / 'repo').resolve()}/mlflow.db"
    )
    # DVC_ROOT (set by DVC in queued temp workspaces) wins over the cwd's repo
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    assert store_mod.resolve_tracking_uri(empty, sub).endswith("/main/mlflow.db")
    explicit = MlflowConfig(experiment_name="x", tracking_uri="sqlite:////elsewhere/x.db")
    assert store_mod.resolve_tracking_uri(explicit, sub) == "sqlite:////elsewhere/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert store_mod.resolve_tracking_uri(explicit, sub) == "http://127.0.0.1:1"


@pytest.mark.unit
def test_no_dvc_repo_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(store_mod.TrackingError, match=r"\.dvc"):
        store_mod.store_root(tmp_path)


@pytest.mark.unit
def test_experiment_artifacts_beside_the_store(store: tuple[str, str, Path]) -> None:
    uri, exp_id, root = store
    exp = MlflowClient(uri).get_experiment(exp_id)
    assert exp.artifact_location == (root / "mlartifacts").resolve().as_uri()
    assert store_mod.ensure_experiment(uri, EXPERIMENT, root) == exp_id  # idempotent


@pytest.mark.e2e
def test_concurrent_creation_of_a_new_store_does_not_crash(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = (
        "import sys, time, pathlib\n"
        "from mnistflow.tracking import store as store_mod\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "(d / f'ready{sys.argv[2]}').touch()\n"
        "while not (d / 'go').exists(): time.sleep(0.01)\n"
        f"print(store_mod.ensure_experiment({uri!r}, 'race', d))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()  # all start creating at once
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(ids) == 1
    assert len(MlflowClient(uri).search_experiments(filter_string="name = 'race'")) == 1


@pytest.mark.unit
def test_sqlite_preflight_passes_a_healthy_store_and_refuses_a_broken_one(
    tmp_path: Path, store: tuple[str, str, Path]
) -> None:
    uri, _, root = store
    store_mod.check_store(uri)  # healthy: untouched
    assert (root / "mlflow.db").exists()
    store_mod.check_store(f"sqlite:///{tmp_path / 'none.db'}")  # MLflow will create it
    (tmp_path / "empty.db").touch()  # an empty file is an empty database
    store_mod.check_store(f"sqlite:///{tmp_path / 'empty.db'}")
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 200)
    with pytest.raises(store_mod.TrackingError, match=r"junk\.db: file is not a database"):
        store_mod.check_store(f"sqlite:///{tmp_path / 'junk.db'}")


@pytest.mark.unit
def test_an_old_schema_holding_runs_is_never_replaced(tmp_path: Path) -> None:
    """Only a half-created store with nothing in it is set aside (tests/test_faults.py); one
    holding runs at another schema revision gets an error saying what to do."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = store_mod.ensure_experiment(uri, EXPERIMENT, tmp_path)
    MlflowClient(uri).create_run(exp)
    with sqlite3.connect(tmp_path / "mlflow.db") as conn:  # as an older MLflow left it
        conn.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    message = (
        f"MLflow store {uri} holds runs or models but has schema revision 0a8213491aaa, this "
        "MLflow needs .*: if an older MLflow made it, back the file up, then run "
        "`mlflow db upgrade {uri}`"
    )
    with pytest.raises(store_mod.TrackingError, match=message.replace("{uri}", re.escape(uri))):
        store_mod.check_store(uri)
    assert [p.name for p in tmp_path.iterdir() if "incomplete" in p.name] == []


@pytest.mark.e2e  # in-process, but MLflow's own 20 s busy timeout must run out: not unit-fast
def test_a_store_locked_after_the_preflight_is_one_line_from_ensure_experiment(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store_mod.ensure_experiment(uri, EXPERIMENT, tmp_path)
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer (sqlite locks are per connection)
    try:
        with pytest.raises(
            store_mod.TrackingError, match=r"cannot be used now: .*database is locked"
        ) as caught:
            store_mod.ensure_experiment(uri, "another", tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "\n" not in str(caught.value)


@pytest.mark.unit
def test_store_wait_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store_mod.STORE_WAIT_ENV, raising=False)
    assert store_mod.store_wait_s() == store_mod.DEFAULT_STORE_WAIT_S
    monkeypatch.setenv(store_mod.STORE_WAIT_ENV, "2.5")
    assert store_mod.store_wait_s() == 2.5
    monkeypatch.setenv(store_mod.STORE_WAIT_ENV, "soon")
    assert store_mod.store_wait_s() == store_mod.DEFAULT_STORE_WAIT_S


# --- run lifecycle ------------------------------------------------------------------------


@pytest.mark.unit
def test_run_logs_params_metrics_artifacts_model_and_tags(
    store: tuple[str, str, Path], tmp_path: Path
) -> None:
    uri, exp_id, _ = store
    images, labels = synthetic_digits(60, seed=4)
    X = images.reshape(60, -1).astype(np.float32) / 255
    cfg = config(load_params(REPO_ROOT / "params.yaml"), "train", TrainConfig)
    model = fit_with_progress(build_classifier(cfg), X, np.eye(10)[labels], lambda *a: None)
    artifact = tmp_path / "loss.csv"
    artifact.write_text("epoch,loss\n1,0.5\n")
    with runs.mlflow_run(uri, exp_id, run_name="full") as run:
        run.log_params(runs.flatten({"train": cfg.as_dict(), "data": {"dataset": "x"}}))
        run.set_tags({"dataset": "x", "is_baseline": "true"})
        for epoch, loss in enumerate([0.9, 0.5, 0.3], start=1):
            run.log_metric("train_loss", loss, step=epoch)
        run.log_metrics({"test_accuracy": 0.5})
        run.log_artifact(artifact, "train")
        logged_model.log_model(model, Encoding("divide255"), images[:3], 10)
        run_id = run.run_id
    client = MlflowClient(uri)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["train.hidden_layer_sizes"] == str(BASELINE_TRAIN["hidden_layer_sizes"])
    assert got.data.params["train.alpha"] == str(BASELINE_TRAIN["alpha"])
    assert got.data.params["data.dataset"] == "x"
    assert got.data.tags["is_baseline"] == "true"
    assert got.data.metrics["test_accuracy"] == 0.5
    history = client.get_metric_history(run_id, "train_loss")
    assert [(h.step, h.value) for h in history] == [(1, 0.9), (2, 0.5), (3, 0.3)]
    assert [a.path for a in client.list_artifacts(run_id, "train")] == ["train/loss.csv"]
    mlflow.set_tracking_uri(uri)
    logged = mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list")
    mine = [lm for lm in logged if lm.source_run_id == run_id]
    assert len(mine) == 1
    assert mine[0].name == "model"
    uri_model = f"models:/{mine[0].model_id}"
    loaded = mlflow.pyfunc.load_model(uri_model)
    answer = loaded.predict(pixel_frame(images))
    assert list(answer["digit"]) == list(model.predict_proba(X).argmax(axis=1))
    # images and rows as arrays answer the same (no input schema between them and the model)
    assert loaded.predict(images).equals(answer)
    assert loaded.predict(images.reshape(len(images), -1)).equals(answer)
    # the plain estimator travels inside, skops format, loaded with our fixed allow-list
    folder = mlflow.artifacts.download_artifacts(
        f"{mine[0].artifact_location}/artifacts/sklearn-model"
    )
    assert np.array_equal(load_estimator(folder).predict(X), model.predict(X))
    info = mlflow.models.get_model_info(uri_model)
    assert info.signature is not None
    assert info.signature.inputs is None
    assert info.signature.outputs.input_names() == ["digit"] + [f"p{i}" for i in range(10)]
    assert info.saved_input_example_info is not None
    # resuming adds to the same run and ends it again; a changed param becomes a tag
    with runs.mlflow_run(uri, exp_id, run_id=run_id) as again:
        again.log_params({"train.alpha": 0.5, "evaluate.headline": "argmax"})
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["train.alpha"] == str(BASELINE_TRAIN["alpha"])
    assert got.data.tags["changed.train.alpha"] == "0.5"
    assert got.data.params["evaluate.headline"] == "argmax"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (RuntimeError("boom"), "FAILED"),
        (Interrupted(signal.SIGTERM), "KILLED"),
        (KeyboardInterrupt(), "KILLED"),
    ],
)
def test_run_ends_failed_or_killed_never_running(
    store: tuple[str, str, Path], exc: BaseException, status: str
) -> None:
    uri, exp_id, _ = store
    seen: list[tuple[str, str]] = []

    def crash() -> None:
        with runs.mlflow_run(uri, exp_id) as run:
            seen.append((run.run_id, runs.run_status(uri, run.run_id)))
            raise exc

    with pytest.raises(type(exc)):
        crash()
    ((run_id, during),) = seen
    assert during == "RUNNING"
    assert runs.run_status(uri, run_id) == status
    assert mlflow.active_run() is None


@pytest.mark.e2e
def test_a_signal_during_a_metric_write_still_ends_the_run_killed(
    store: tuple[str, str, Path],
) -> None:
    # A real SIGINT to this process while the main thread writes metrics in a loop (as the
    # fit's epoch callback does): it nearly always lands inside a sqlite commit. Raised there,
    # it used to leave the store locked and end_run failed with "database is locked" (seen
    # in CI as a flaky test_signal_during_train_stage...).
    uri, exp_id, _ = store
    seen: list[str] = []
    sender = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    deadline = time.monotonic() + 30

    def log_until_interrupted() -> None:
        with raise_on_signals(), runs.mlflow_run(uri, exp_id) as run:
            seen.append(run.run_id)
            sender.start()
            step = 0
            while time.monotonic() < deadline:  # the signal ends it after ~0.5 s
                run.log_metric("train_loss", 1.0 / (step + 1), step=step)
                step += 1

    with pytest.raises(Interrupted):
        log_until_interrupted()
    sender.join()
    assert runs.run_status(uri, seen[0]) == "KILLED"
    assert mlflow.active_run() is None


@pytest.mark.unit
def test_resuming_an_unknown_run_names_the_store(store: tuple[str, str, Path]) -> None:
    uri, exp_id, _ = store
    with (
        pytest.raises(store_mod.TrackingError, match="not found"),
        runs.mlflow_run(uri, exp_id, run_id="0" * 32),
    ):
        pass


# --- tags from git ------------------------------------------------------------------------


@pytest.mark.e2e
def test_git_tags_and_is_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DVC_EXP_BASELINE_REV", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    ws = copy_repo(tmp_path / "ws")
    params = load_params(ws / "params.yaml")
    tags = provenance.git_tags(ws, ["outputs/evaluate/metrics.json", "reports/latest"])
    assert len(tags["git_commit"]) == 40
    assert tags["git_dirty"] == "false"
    assert provenance.is_baseline(params, ws) == "true"
    # pipeline outputs do not make the tree dirty; a source edit does
    (ws / "reports/latest").mkdir(parents=True, exist_ok=True)
    (ws / "reports/latest/report.md").write_text("x")
    assert provenance.git_tags(ws, ["reports/latest"])["git_dirty"] == "false"
    # nor does a params edit (`dvc exp run -S`): the run logs its params
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\n# edited\n")
    assert provenance.git_tags(ws, ["reports/latest"])["git_dirty"] == "false"
    (ws / "src/mnistflow/modeling/metrics.py").write_text("# edited\n")
    assert provenance.git_tags(ws, ["reports/latest"])["git_dirty"] == "true"
    # a changed train param is not the baseline; an equal value written differently is
    changed = yaml.safe_load((ws / "params.yaml").read_text())
    changed["train"]["alpha"] = 0.001
    assert provenance.is_baseline(changed, ws) == "false"
    changed["train"]["hidden_layer_sizes"] = [256, 128]
    assert provenance.baseline_difference(changed, ws) == {
        "train.hidden_layer_sizes": [256, 128],
        "train.alpha": 0.001,
    }
    changed["train"]["hidden_layer_sizes"] = BASELINE_TRAIN["hidden_layer_sizes"]
    changed["train"]["alpha"] = BASELINE_TRAIN["alpha"]
    assert provenance.is_baseline(changed, ws) == "true"
    # against an explicit baseline revision (dvc exp run sets DVC_EXP_BASELINE_REV)
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert provenance.is_baseline(params, ws) == "unknown"
    assert provenance.git_tags(tmp_path, [])["git_commit"] == "unknown"


@pytest.mark.unit
def test_a_run_is_named_after_what_made_it() -> None:
    commit = "0123456789abcdef" * 2 + "01234567"
    assert provenance.run_name("veiny-sima", {"train.alpha": 0.001}, commit) == "veiny-sima"
    assert provenance.run_name(None, {}, commit) == "baseline@0123456"
    assert provenance.run_name(None, None, commit) == "params@0123456"
    assert provenance.run_name(None, {}, "unknown") == "baseline"
    difference = {"train.hidden_layer_sizes": [256, 128], "encode.scaling": "standardize"}
    assert (
        provenance.run_name(None, difference, commit)
        == "train.hidden_layer_sizes=[256,128],encode.scaling=standardize@0123456"
    )
    long = provenance.run_name(None, {f"train.k{i}": 0.5 for i in range(20)}, commit)
    assert len(long) == provenance.MAX_NAME
    assert long.endswith("…@0123456")


# --- the train stage under signals ----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_train_stage_ends_run_killed_and_writes_no_model(
    tmp_path: Path, sig: signal.Signals
) -> None:
    def params_edit(p: dict) -> None:
        p["train"].update(
            max_iter=100000, n_iter_no_change=100000, tol=0.0, hidden_layer_sizes=[32]
        )

    ws = copy_repo(tmp_path / "ws", params_edit)
    write_encoded(ws, n_train=2000, n_test=50)
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "stages/train.py"], cwd=ws, env=stage_env(), stderr=err
        )
        try:
            deadline = time.monotonic() + 120
            # wait until epochs are being reported: the fit is under way
            while "loss=" not in err_file.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, err_file.read_text()[-3000:]
                time.sleep(0.1)
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = err_file.read_text()
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert f"stage train interrupted by {signal.Signals(sig).name}: stopped" in stderr
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("mnist-mlp").experiment_id]
    )
    assert [r.info.status for r in runs] == ["KILLED"]
    assert len(MlflowClient(uri).get_metric_history(runs[0].info.run_id, "train_loss")) >= 1
    assert not (ws / "models").exists() or not any((ws / "models").iterdir())
    assert not (ws / "outputs/train/run.json").exists()


@pytest.mark.e2e
def test_bad_param_fails_before_any_work(tmp_path: Path) -> None:
    ws = copy_repo(tmp_path / "ws", lambda p: p["train"].update(activation="softmax"))
    write_encoded(ws, n_train=50, n_test=20)
    proc = run([sys.executable, "stages/train.py"], ws, stage_env(), check=False)
    assert proc.returncode != 0
    assert "'train.activation'" in proc.stderr
    assert not (ws / "mlflow.db").exists()  # no store, no run
    assert not (ws / "models").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("message", "race"),
    [
        # as MLflow's server answered two tune workers logging one new dataset (PostgreSQL)
        (
            "BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique "
            'constraint "dataset_pk" DETAIL: Key (experiment_id, name, digest)=(1, tiny, 3c19) '
            "already exists. [SQL: INSERT INTO datasets (dataset_uuid, ...",
            True,
        ),
        (
            "(sqlite3.IntegrityError) UNIQUE constraint failed: "
            "datasets.experiment_id, datasets.name",
            True,
        ),
        ('duplicate key value violates unique constraint "runs_pkey"', False),
        ("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found", False),
    ],
)
def test_only_a_lost_dataset_insert_race_is_retried(message: str, race: bool) -> None:
    from mnistflow.tracking.datasets import _lost_insert_race

    assert _lost_insert_race(message) is race
