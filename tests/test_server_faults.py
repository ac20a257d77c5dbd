"""The tracking server goes away, or fails, while a train stage is logging to it.

A real ``mnistflow server --pg-dir`` (PostgreSQL + ``mlflow server --app-name basic-auth``) on
127.0.0.1; its ``mlflow server`` process group is SIGKILLed right after the train stage logged
its first epoch (the stage is held with SIGSTOP around the kill, so the next epoch's metric is
the first request to find the server gone), and the server is started again on the same
cluster and port. Short outage: MLflow's client retries through it. Outage longer than its
retries: one line, exit 4, no model, the run found and ended by ``mnistflow doctor --fix``.
And the server's artifact store full during ``log_model``: one line, exit 4, run and logged
model FAILED, nothing registered.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from mnistflow.ops import postgres, tracking_server
from mnistflow.tracking import runs
from mnistflow.util.fileio import read_json
from tests.helpers import copy_repo, fill, run, stage_env, write_encoded
from tests.services import (
    ADMIN_PW,
    USER,
    USER_PW,
    require_postgres,
    server_base,
    start_team_server,
    stop_team_server,
)

EPOCHS = 8
RESTART_AFTER_S = 15


@dataclass
class Restartable:
    """A ``mnistflow server`` that can lose its ``mlflow server`` and be started again."""

    pg_dir: Path
    port: int
    log: Path
    process: subprocess.Popen

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal_mlflow(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the ``mlflow server`` process group (its own session: the server
        and its uvicorn workers)."""
        (mlflow,) = [
            p
            for p in psutil.Process(self.process.pid).children()
            if "mlflow" in " ".join(p.cmdline())
        ]
        os.killpg(mlflow.pid, sig)

    def kill_mlflow(self) -> None:
        """SIGKILL ``mlflow server``; ``mnistflow server`` then stops PostgreSQL and exits."""
        self.signal_mlflow(signal.SIGKILL)
        self.process.wait(timeout=90)

    def start(self) -> None:
        self.process = start_team_server(self.pg_dir, self.port, self.log)


@pytest.fixture(scope="module")
def restartable() -> Iterator[Restartable]:
    require_postgres()
    base = server_base("mnistflow-restart-")
    pg_dir, log, port = base / "pg", base / "server.log", postgres.free_port()
    srv = Restartable(pg_dir, port, log, start_team_server(pg_dir, port, log))
    try:
        tracking_server.create_user(srv.uri, tracking_server.DEFAULT_ADMIN, ADMIN_PW, USER, USER_PW)
        yield srv
    finally:
        still_running = stop_team_server(srv.process, pg_dir)
        print(log.read_text()[-30000:])  # shown when a test failed: the servers' side
        shutil.rmtree(base, ignore_errors=True)
        assert not still_running, "mnistflow server left PostgreSQL running after SIGTERM"


def workspace(
    tmp_path: Path, srv: Restartable, n_train: int = 4000, hidden: int = 128
) -> tuple[Path, dict[str, str]]:
    """A repo copy with encoded synthetic data: EPOCHS epochs exactly, logging to ``srv``."""

    def edit(p: dict) -> None:
        p["train"].update(
            max_iter=EPOCHS, n_iter_no_change=100000, tol=0.0, hidden_layer_sizes=[hidden]
        )

    ws = copy_repo(tmp_path / "ws", edit)
    write_encoded(ws, n_train=n_train, n_test=50)
    env = {
        **stage_env(),
        "MLFLOW_TRACKING_URI": srv.uri,
        "MLFLOW_TRACKING_USERNAME": USER,
        "MLFLOW_TRACKING_PASSWORD": USER_PW,
    }
    return ws, env


def short_retries(retries: int, timeout: int) -> dict[str, str]:
    """MLflow's client settings for a short test: ``retries``, back-off factor 1, no jitter,
    ``timeout`` s per attempt."""
    return {
        runs.RETRIES_ENV: str(retries),
        runs.BACKOFF_ENV: "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        runs.TIMEOUT_ENV: str(timeout),
    }


def train_losing_the_server(
    ws: Path,
    env: dict[str, str],
    srv: Restartable,
    stderr: Path,
    restart_after: float | None,
    hang: bool = False,
) -> int:
    """Run the train stage; kill the server right after the first epoch was logged; start it
    again ``restart_after`` seconds later (None: after the stage exited). ``hang``: SIGSTOP
    it instead (it accepts connections and never answers), SIGCONT after the stage exited.
    The exit code."""
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "stages/train.py"], cwd=ws, env=env, stderr=err)
    try:
        deadline = time.monotonic() + 180
        while "loss=" not in stderr.read_text():  # the progress bar after the first epoch
            assert proc.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch reported"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)  # hold the fit while the server goes
        try:
            if hang:
                srv.signal_mlflow(signal.SIGSTOP)
            else:
                srv.kill_mlflow()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        killed = time.monotonic()
        if restart_after is not None:
            time.sleep(restart_after)
            srv.start()
            print(f"server answering again {time.monotonic() - killed:.1f} s after the kill")
        code = proc.wait(timeout=600)
        print(f"train exited {code} {time.monotonic() - killed:.1f} s after the kill")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if hang:
            srv.signal_mlflow(signal.SIGCONT)
        if srv.process.poll() is not None:
            srv.start()
    return code


def client(srv: Restartable, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USER_PW)
    return MlflowClient(srv.uri)


@pytest.mark.unit
def test_retry_window_follows_urllib3s_backoff() -> None:
    # sleeps after failures 2..n: factor * 2**(n-1), capped at 120 s; none after the first
    assert runs.retry_window_s(7, 2) == 4 + 8 + 16 + 32 + 64 + 120  # MLflow's defaults: 244
    assert runs.retry_window_s(2, 1) == 2
    assert runs.retry_window_s(10, 2) == 4 + 8 + 16 + 32 + 64 + 4 * 120
    assert runs.retry_window_s(1, 2) == 0
    assert runs.retry_window_s(0, 2) == 0


@pytest.mark.unit
def test_the_lost_and_failed_lines_name_the_settings_and_what_became_of_the_run() -> None:
    line = runs.lost_message("http://u:pw@h:5000", "r1", {})
    assert line.startswith("lost the MLflow tracking server at http://h:5000: no answer after ")
    assert "MLflow's 7 retries (~244 s of back-off;" in line
    assert line.endswith(
        "run r1 is left RUNNING there: `mnistflow doctor --fix` (or the next train) marks it "
        "FAILED once the server is back"
    )
    assert "pw" not in line
    assert "3 retries (~12 s" in runs.lost_message("http://h:5000", "r1", {runs.RETRIES_ENV: "3"})
    assert runs.lost_message("http://h:5000", "r1", {}, started=False).endswith(
        "run r1 was not reopened: run the stage again once the server is back"
    )
    failed = runs.failed_message("http://u:pw@h:5000", "r1", "PUT /x: boom", {})
    assert failed.startswith(
        "the MLflow tracking server at http://h:5000 failed a request: PUT /x: boom (after "
        "MLflow's 7 retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES)"
    )
    assert failed.endswith("run r1 is marked FAILED")
    assert "pw" not in failed


class _Answers(BaseHTTPRequestHandler):
    """Answers every GET with the status in the server's ``status`` attribute."""

    def do_GET(self) -> None:
        body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"})
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.mark.unit
def test_server_unreachable_is_no_answer_not_an_answer_that_says_no(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(runs.RETRIES_ENV, "0")
    with pytest.raises(MlflowException) as refused:
        MlflowClient(f"http://127.0.0.1:{postgres.free_port()}").get_run("r1")
    assert runs.server_unreachable(refused.value)

    assert not runs.server_error_answers(refused.value)
    assert runs.failed_request(refused.value).startswith("GET /api/2.0/mlflow/runs/get: ")
    assert "Connection refused" in runs.failed_request(refused.value)

    answering = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=answering.serve_forever, daemon=True)
    thread.start()
    answering.status = 404  # type: ignore[attr-defined]
    uri = f"http://127.0.0.1:{answering.server_address[1]}"
    try:
        with pytest.raises(MlflowException) as said_no:
            MlflowClient(uri).get_run("r1")
        answering.status = 500  # type: ignore[attr-defined]
        with pytest.raises(MlflowException) as failing:
            MlflowClient(uri).get_run("r1")
    finally:
        answering.shutdown()
        answering.server_close()
    assert "RESOURCE_DOES_NOT_EXIST" in str(said_no.value)
    assert not runs.server_unreachable(said_no.value)
    assert not runs.server_error_answers(said_no.value)
    # a 500 is retried by MLflow like a refused connection, but it is an answer
    assert not runs.server_unreachable(failing.value)
    assert runs.server_error_answers(failing.value)
    what = runs.failed_request(failing.value)
    assert what == "GET /api/2.0/mlflow/runs/get: too many 500 error responses"


@pytest.mark.unit
def test_port_check_still_refuses_a_port_someone_listens_on() -> None:
    import socket

    from mnistflow.util.processes import ServiceError, check_port_free

    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        with pytest.raises(ServiceError, match=f"port {port} on 127.0.0.1 is in use"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # closed: free again


@pytest.mark.e2e
def test_server_restarted_mid_fit_the_run_still_finishes_with_every_epoch(
    restartable: Restartable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, env = workspace(tmp_path, restartable)
    stderr_file = tmp_path / "stderr.txt"
    code = train_losing_the_server(ws, env, restartable, stderr_file, RESTART_AFTER_S)
    stderr = stderr_file.read_text()
    assert code == 0, stderr[-4000:]
    # the outage was met during the fit: MLflow's client retried an epoch's metric
    assert "Retrying" in stderr
    assert stderr.index("Retrying") < stderr.index("fitted in")
    run_id = read_json(ws / "outputs/train/run.json")["run_id"]
    mlflow = client(restartable, monkeypatch)
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    history = mlflow.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert (ws / "models/model.pkl").exists()


@pytest.mark.e2e
def test_outage_longer_than_the_retries_is_one_line_exit_4_and_doctor_ends_the_run(
    restartable: Restartable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, env = workspace(tmp_path, restartable)
    env.update(short_retries(2, timeout=5))  # sleeps 0 + 2 s
    stderr_file = tmp_path / "stderr.txt"
    code = train_losing_the_server(ws, env, restartable, stderr_file, restart_after=None)
    stderr = stderr_file.read_text()
    assert code == 4, stderr[-4000:]
    assert "Traceback" not in stderr
    assert "fitted in" not in stderr  # it stopped during the fit
    assert not (ws / "models/model.pkl").exists()
    assert not (ws / "outputs/train/run.json").exists()

    # the server is back (the helper started it again): the run is there, RUNNING, and
    # carries its owner, so doctor finds it dead and ends it
    mlflow = client(restartable, monkeypatch)
    experiment = mlflow.get_experiment_by_name("mnist-mlp")
    (left,) = mlflow.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    run_id = left.info.run_id
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr[-4000:]
    assert errors[0].endswith(
        f"stage train: lost the MLflow tracking server at {restartable.uri}: no answer after "
        "MLflow's 2 retries (~2 s of back-off; MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_TIMEOUT); "
        f"run {run_id} is left RUNNING there: "
        "`mnistflow doctor --fix` (or the next train) marks it FAILED once the server is back"
    )
    doctor = [str(Path(sys.executable).parent / "mnistflow"), "doctor"]
    found = run(doctor, ws, env, check=False)
    assert found.returncode == 1, found.stdout + found.stderr
    assert run_id in found.stdout
    run([*doctor, "--fix"], ws, env)
    ended = mlflow.get_run(run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags["mnistflow.ended_by"].startswith("liveness: process")


@pytest.mark.e2e
def test_a_hung_server_costs_the_request_timeout_per_attempt_then_one_line(
    restartable: Restartable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, env = workspace(tmp_path, restartable)
    env.update(short_retries(1, timeout=3))  # no back-off sleep: none after the first failure
    stderr_file = tmp_path / "stderr.txt"
    code = train_losing_the_server(ws, env, restartable, stderr_file, None, hang=True)
    stderr = stderr_file.read_text()
    assert code == 4, stderr[-4000:]
    assert "Read timed out. (read timeout=3)" in stderr  # urllib3's retry warning
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr[-4000:]
    assert (
        f"stage train: lost the MLflow tracking server at {restartable.uri}: no answer after "
        "MLflow's 1 retries (~0 s of back-off;"
    ) in errors[0]
    assert "Traceback" not in stderr
    assert not (ws / "models/model.pkl").exists()
    # resumed, the server answers what queued up meanwhile; doctor ends the run if need be
    mlflow = client(restartable, monkeypatch)
    experiment = mlflow.get_experiment_by_name("mnist-mlp")
    run_id = errors[0].split("; run ")[1].split()[0]
    run([str(Path(sys.executable).parent / "mnistflow"), "doctor", "--fix"], ws, env)
    assert mlflow.get_run(run_id).info.status == "FAILED"
    assert (
        mlflow.search_runs(
            [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
        )
        == []
    )


@pytest.mark.e2e
def test_evaluate_with_the_server_gone_is_one_line_and_runs_again_once_it_is_back(
    restartable: Restartable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, env = workspace(tmp_path, restartable, n_train=300, hidden=16)
    run([sys.executable, "stages/train.py"], ws, env)
    run_id = read_json(ws / "outputs/train/run.json")["run_id"]
    env.update(short_retries(2, timeout=5))
    restartable.kill_mlflow()
    try:
        proc = run([sys.executable, "stages/evaluate.py"], ws, env, check=False)
    finally:
        restartable.start()
    assert proc.returncode == 4, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr[-4000:]
    assert errors[0].endswith(
        f"stage evaluate: lost the MLflow tracking server at {restartable.uri}: no answer after "
        "MLflow's 2 retries (~2 s of back-off; MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_TIMEOUT); "
        f"run {run_id} was not reopened: run the stage again once the server is back"
    )
    assert "Traceback" not in proc.stderr
    mlflow = client(restartable, monkeypatch)
    assert mlflow.get_run(run_id).info.status == "FINISHED"  # train's, untouched
    assert "test_accuracy" not in mlflow.get_run(run_id).data.metrics
    run([sys.executable, "stages/evaluate.py"], ws, env)  # the server is back
    evaluated = mlflow.get_run(run_id)
    assert evaluated.info.status == "FINISHED"
    assert "test_accuracy" in evaluated.data.metrics


@pytest.mark.e2e
def test_full_artifact_store_during_log_model_is_one_line_and_the_run_and_model_failed(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's artifact store (a 64 MB tmpfs) has 1 MB left: the loss curve and the
    encoding fit, the model's weights (784 x 512 float64, 3.2 MB) do not."""
    require_postgres()
    base = server_base("mnistflow-full-")
    pg_dir, log, port = base / "pg", base / "server.log", postgres.free_port()
    artifacts = ["--artifacts-destination", str(small_disk / "artifacts")]
    srv = Restartable(pg_dir, port, log, start_team_server(pg_dir, port, log, artifacts))
    try:
        tracking_server.create_user(srv.uri, tracking_server.DEFAULT_ADMIN, ADMIN_PW, USER, USER_PW)
        ws, env = workspace(tmp_path, srv, n_train=300, hidden=512)
        env.update(short_retries(1, timeout=120))
        fill(small_disk, leave_bytes=1 << 20)
        proc = run([sys.executable, "stages/train.py"], ws, env, check=False)
        assert proc.returncode == 4, proc.stderr[-4000:]
        errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1, proc.stderr[-4000:]
        print(errors[0])
        # the server cut the upload off (a reset) or answered 500s, whichever came first
        assert (
            f"stage train: the MLflow tracking server at {srv.uri} failed a request: PUT "
            "/api/2.0/mlflow-artifacts/artifacts/"
        ) in errors[0]
        assert "the server's log says why (e.g. its artifact store is full" in errors[0]
        assert "Traceback" not in proc.stderr
        assert "fitted in" in proc.stderr  # the fit was done: logging the model failed
        assert "No space left on device" in log.read_text()  # the server's side of it
        assert not (ws / "models/model.pkl").exists()
        assert not (ws / "outputs/train/run.json").exists()

        mlflow = client(srv, monkeypatch)
        experiment = mlflow.get_experiment_by_name("mnist-mlp")
        (failed,) = mlflow.search_runs([experiment.experiment_id])
        assert failed.info.status == "FAILED"
        assert f"run {failed.info.run_id} is marked FAILED" in errors[0]
        assert {a.path for a in mlflow.list_artifacts(failed.info.run_id)} >= {"train"}
        logged = mlflow.search_logged_models([experiment.experiment_id])
        assert [m.source_run_id for m in logged] == [failed.info.run_id]
        assert [str(m.status) for m in logged] == ["FAILED"]  # MLflow marks it, not READY
        assert mlflow.search_registered_models() == []
    finally:
        still_running = stop_team_server(srv.process, pg_dir)
        shutil.rmtree(base, ignore_errors=True)
        assert not still_running
