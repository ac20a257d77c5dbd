"""Runs that cannot stay RUNNING: owner tags, the heartbeat, dead-run detection and the sweep,
against real sqlite stores and real processes killed with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from mnistflow.tracking import liveness, runs
from mnistflow.tracking import store as store_mod
from tests.helpers import copy_repo, run, stage_env, write_encoded

CLI = str(Path(sys.executable).parent / "mnistflow")
HOST = socket.gethostname()


def unused_pid() -> int:
    """A pid no process has right now."""
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


def make_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    """A RUNNING run with ``tags``, created through the client (no process behind it)."""
    return client.create_run(experiment_id, tags=tags).info.run_id


def owner(host: str, pid: int, start: float | None, beat: float) -> dict[str, str]:
    tags = {
        liveness.TAG_HOST: host,
        liveness.TAG_PID: str(pid),
        liveness.TAG_HEARTBEAT: f"{beat:.0f}",
        liveness.TAG_HEARTBEAT_S: "30",
    }
    if start is not None:
        tags[liveness.TAG_PID_START] = f"{start:.2f}"
    return tags


@pytest.mark.unit
def test_find_dead_runs_and_mark_failed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = store_mod.ensure_experiment(uri, "exp", tmp_path)
    client = MlflowClient(uri)
    now = time.time()
    me, my_start = os.getpid(), liveness.process_start_time(os.getpid())
    assert my_start is not None
    gone = unused_pid()
    ids = {
        "gone": make_run(client, exp, owner(HOST, gone, 1.0, now)),
        # alive on this host: a stale heartbeat does not matter, the process is there
        "alive_here": make_run(client, exp, owner(HOST, me, my_start, now - 10_000)),
        "pid_reused": make_run(client, exp, owner(HOST, me, my_start - 1000, now)),
        "stale_elsewhere": make_run(client, exp, owner("elsewhere", 1, None, now - 1000)),
        "fresh_elsewhere": make_run(client, exp, owner("elsewhere", 1, None, now - 60)),
        "untagged": make_run(client, exp, {}),
    }
    finished = make_run(client, exp, owner(HOST, gone, 1.0, now))
    client.set_terminated(finished, "FINISHED")

    dead = {d.run_id: d.reason for d in liveness.find_dead_runs(client, [exp], now)}
    assert set(dead) == {ids["gone"], ids["pid_reused"], ids["stale_elsewhere"]}
    assert dead[ids["gone"]] == f"process {gone} on {HOST} is gone"
    assert dead[ids["pid_reused"]] == f"pid {me} on {HOST} now belongs to another process"
    assert dead[ids["stale_elsewhere"]].startswith("no heartbeat for 1000 s (limit 150 s)")
    # an explicit stale_after overrides the run's own interval
    tighter = liveness.find_dead_runs(client, [exp], now, stale_after=30)
    assert ids["fresh_elsewhere"] in {d.run_id for d in tighter}

    ended = liveness.mark_failed(client, liveness.find_dead_runs(client, [exp], now))
    assert {d.run_id for d in ended} == set(dead)
    for name, run_id in ids.items():
        got = client.get_run(run_id)
        if run_id in dead:
            assert got.info.status == "FAILED", name
            assert got.data.tags[liveness.TAG_ENDED_BY] == f"liveness: {dead[run_id]}"
        else:
            assert got.info.status == "RUNNING", name
    assert client.get_run(finished).info.status == "FINISHED"
    assert liveness.find_dead_runs(client, [exp], now) == []


@pytest.mark.unit
def test_mlflow_run_records_owner_and_beats_until_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(liveness.HEARTBEAT_ENV, "0.2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = store_mod.ensure_experiment(uri, "exp", tmp_path)
    client = MlflowClient(uri)
    with runs.mlflow_run(uri, exp) as active:
        first = client.get_run(active.run_id).data.tags
        assert first[liveness.TAG_HOST] == HOST
        assert first[liveness.TAG_PID] == str(os.getpid())
        assert float(first[liveness.TAG_PID_START]) == liveness.process_start_time(os.getpid())
        assert first[liveness.TAG_HEARTBEAT_S] == "0.2"
        client.set_tag(active.run_id, liveness.TAG_HEARTBEAT, "0")  # the thread overwrites it
        time.sleep(0.7)
        beat = float(client.get_run(active.run_id).data.tags[liveness.TAG_HEARTBEAT])
        assert time.time() - beat < 5
    assert not [t for t in threading.enumerate() if t.name == "mlflow-heartbeat"]
    ended = client.get_run(active.run_id)
    assert ended.info.status == "FINISHED"
    assert "mnistflow.heartbeat" not in ended.data.metrics  # a tag, not a metric


# --- real processes killed with SIGKILL -----------------------------------------------------


def long_fit(p: dict) -> None:
    p["train"].update(max_iter=100000, n_iter_no_change=100000, tol=0.0, hidden_layer_sizes=[32])


def small_fit(p: dict) -> None:
    p["train"].update(hidden_layer_sizes=[16], max_iter=3)


def start_train(ws: Path, err_file: Path, env: dict[str, str]) -> subprocess.Popen:
    with err_file.open("w") as err:
        return subprocess.Popen([sys.executable, "stages/train.py"], cwd=ws, env=env, stderr=err)


def kill_when(proc: subprocess.Popen, err_file: Path, ready: Callable[[str], bool]) -> None:
    """SIGKILL ``proc`` as soon as ``ready(its stderr so far)`` is true."""
    deadline = time.monotonic() + 120
    try:
        while not ready(err_file.read_text()):
            assert proc.poll() is None, err_file.read_text()[-3000:]
            assert time.monotonic() < deadline, "never ready to be killed"
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def store_runs(ws: Path) -> list:
    """The runs of the workspace's store, oldest first."""
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-mlp").experiment_id
    return client.search_runs([exp], order_by=["attributes.start_time ASC"])


def logged_models(ws: Path) -> list:
    """MLflow 3 logged models of the workspace's store."""
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    return client.search_logged_models([client.get_experiment_by_name("mnist-mlp").experiment_id])


def doctor(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return run([CLI, "doctor", *args], ws, stage_env(), check=False, timeout=120)


@pytest.mark.e2e
def test_sigkill_mid_fit_leaves_running_until_doctor_fix(tmp_path: Path) -> None:
    ws = copy_repo(tmp_path / "ws", long_fit)
    write_encoded(ws, n_train=2000, n_test=50)
    env = stage_env() | {liveness.HEARTBEAT_ENV: "0.5"}
    err_file = tmp_path / "stderr.txt"
    proc = start_train(ws, err_file, env)
    kill_when(proc, err_file, lambda err: "loss=" in err)  # the fit is under way

    (killed,) = store_runs(ws)
    assert killed.info.status == "RUNNING"  # nobody could end it
    assert killed.data.tags[liveness.TAG_PID] == str(proc.pid)

    report = doctor(ws)
    assert report.returncode == 1, report.stdout + report.stderr
    assert f"store: sqlite:///{ws / 'mlflow.db'}" in report.stdout
    assert "RUNNING runs: 1, dead: 1" in report.stdout
    assert f"DEAD: process {proc.pid} on {HOST} is gone" in report.stdout

    fixed = doctor(ws, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "marked 1 dead run(s) FAILED" in fixed.stdout
    assert f"{killed.info.run_id} (" in fixed.stderr  # the WARNING line
    (ended,) = store_runs(ws)
    assert ended.info.status == "FAILED"
    assert ended.data.tags[liveness.TAG_ENDED_BY] == (
        f"liveness: process {proc.pid} on {HOST} is gone"
    )
    assert doctor(ws).returncode == 0  # healthy now


@pytest.mark.e2e
def test_stale_heartbeat_of_another_host_is_marked_failed_by_doctor(tmp_path: Path) -> None:
    ws = copy_repo(tmp_path / "ws")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    exp = store_mod.ensure_experiment(uri, "mnist-mlp", ws)
    client = MlflowClient(uri)
    # as if a machine running a train died an hour ago
    lost = make_run(client, exp, owner("lost-machine", 4242, 1.0, time.time() - 3600))
    alive = make_run(client, exp, owner("busy-machine", 4242, 1.0, time.time()))

    fixed = doctor(ws, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "RUNNING runs: 2, dead: 1" in fixed.stdout
    assert client.get_run(lost).info.status == "FAILED"
    reason = client.get_run(lost).data.tags[liveness.TAG_ENDED_BY]
    expected = r"liveness: no heartbeat for 36\d\d s \(limit 150 s\) from lost-machine"
    assert re.fullmatch(expected, reason)
    assert client.get_run(alive).info.status == "RUNNING"


@pytest.mark.e2e
def test_sigkill_during_log_model_then_next_train_works_and_sweeps(tmp_path: Path) -> None:
    ws = copy_repo(tmp_path / "ws", small_fit)
    write_encoded(ws, n_train=300, n_test=50)
    err_file = tmp_path / "stderr.txt"
    proc = start_train(ws, err_file, stage_env())
    # log_model first registers a PENDING logged model, then writes it (seconds)
    kill_when(proc, err_file, lambda err: "fitted in" in err and bool(logged_models(ws)))
    assert [m.status for m in logged_models(ws)] == [LoggedModelStatus.PENDING]
    assert not (ws / "models/model.pkl").exists()
    assert not (ws / "outputs/train/run.json").exists()
    (killed,) = store_runs(ws)
    assert killed.info.status == "RUNNING"

    rerun = run([sys.executable, "stages/train.py"], ws, stage_env())  # dvc repro would run it
    assert f"MLflow run {killed.info.run_id} (" in rerun.stderr  # swept at the start
    first, second = store_runs(ws)
    assert first.info.run_id == killed.info.run_id
    assert first.info.status == "FAILED"
    assert first.data.tags[liveness.TAG_ENDED_BY] == (
        f"liveness: process {proc.pid} on {HOST} is gone"
    )
    assert second.info.status == "FINISHED"
    assert (ws / "models/model.pkl").exists()
    report = doctor(ws)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "RUNNING runs: 0, dead: 0" in report.stdout
