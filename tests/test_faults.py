"""Faults a real machine produces, each with a real process: a full disk, a file-size limit,
two ``dvc repro`` at once, a SIGKILL while MLflow creates its store, a locked or unreachable
store. Every one ends with a clear line and leaves earlier outputs intact."""

from __future__ import annotations

import hashlib
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

from mnistflow.tracking import store as store_mod
from tests.helpers import (
    copy_repo,
    fill,
    run,
    stage_env,
    tiny_repo_after_repro,
    write_encoded,
)

pytestmark = pytest.mark.e2e

DISK_FULL_EXIT = 6  # util/errors.py
TRACKING_EXIT = 4
CLI = str(Path(sys.executable).parent / "mnistflow")


def tree_digest(root: Path, *parts: str) -> dict[str, str]:
    """SHA-256 of every file below the given parts of ``root``."""
    out = {}
    for part in parts:
        for path in sorted((root / part).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(root: Path, *parts: str) -> list[Path]:
    """Temporary files or folders an interrupted write could leave behind."""
    return [p for part in parts for p in (root / part).rglob("*") if ".tmp" in p.name]


def test_disk_full_while_unpack_writes_keeps_the_previous_outputs(small_disk: Path) -> None:
    repo, _ = tiny_repo_after_repro(small_disk)
    before = tree_digest(repo, "data/unpacked", "data/images")
    assert any(k.endswith(".png") for k in before)
    # room to rewrite the arrays and the table (one at a time, each beside its old copy),
    # not for a second PNG tree: tmpfs spends a 4 KiB page per small file
    room = (
        max(
            (repo / "data/unpacked/arrays.npz").stat().st_size,
            (repo / "data/unpacked/table.parquet").stat().st_size,
        )
        + 100_000
    )
    assert room < 400 * 4096, "the test's premise: the new PNG tree must not fit"
    fill(small_disk, room)

    proc = subprocess.run(
        [sys.executable, "stages/unpack.py"],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == DISK_FULL_EXIT, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "stage unpack" in last
    assert "No space left on device" in last
    assert "Traceback" not in proc.stderr
    (small_disk / "filler").unlink()
    assert tree_digest(repo, "data/unpacked", "data/images") == before
    assert leftovers(repo, "data") == []


def test_file_size_limit_while_encode_writes_keeps_the_previous_features(
    tmp_path: Path,
) -> None:
    repo, _ = tiny_repo_after_repro(tmp_path)
    before = tree_digest(repo, "data/encoded")
    biggest = max((repo / "data/encoded").iterdir(), key=lambda p: p.stat().st_size)
    limit = biggest.stat().st_size // 2  # `ulimit -f`: the features file cannot be written

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "stages/encode.py"],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == DISK_FULL_EXIT, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "stage encode" in last
    assert "File too large" in last
    assert "Traceback" not in proc.stderr
    assert tree_digest(repo, "data/encoded") == before
    assert leftovers(repo, "data") == []


def test_two_dvc_repro_at_once_one_waits_or_fails_clearly(tmp_path: Path) -> None:
    repo, env = tiny_repo_after_repro(tmp_path)
    before = tree_digest(repo, "models", "data/encoded")
    # both must retrain (--force) train and evaluate; same params, so the same model bytes
    procs = [
        subprocess.Popen(
            ["dvc", "repro", "--force", "--downstream", "train"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outputs
    for code, out in zip(codes, outputs, strict=True):
        if code != 0:  # DVC's repository lock: a clear message, nothing half-done
            assert "lock" in out.lower(), out[-3000:]
    status = run(["dvc", "status"], repo, env).stdout
    assert "up to date" in status, status
    # the model was rewritten whole (same params and seed: the same bytes), never corrupted
    assert tree_digest(repo, "models", "data/encoded") == before
    assert leftovers(repo, "models") == []


# --- the MLflow store: killed while created, locked, unreachable -----------------------------


def small_fit(p: dict) -> None:
    p["train"].update(hidden_layer_sizes=[16], max_iter=3)


def train_workspace(tmp_path: Path) -> Path:
    """A repository copy with synthetic encoded data, ready for ``python stages/train.py``."""
    ws = copy_repo(tmp_path / "ws", small_fit)
    write_encoded(ws, n_train=300, n_test=50)
    return ws


def train(ws: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "stages/train.py"], ws, env, check=False, timeout=600)


def store_state(db: Path) -> tuple[str | None, int]:
    """(schema revision, number of runs) of an sqlite store, read with sqlite itself."""
    with closing(sqlite3.connect(db)) as conn:  # closed: an open file counts as in use
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    return (row[0] if row else None), runs


def one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The one error line of a failed stage: the exit code, no traceback, ``words`` in it."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# Loaded by the child through PYTHONPATH: SIGKILLs the process right after MLflow's schema
# migration number KILL_AT_STEP ran its DDL, before alembic records the new revision.
KILL_HOOK = """
import os, signal
from alembic.runtime import migration

_original = migration.HeadMaintainer.update_to_step
_count = [0]

def _update_to_step(self, step):
    _count[0] += 1
    if _count[0] == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _original(self, step)

migration.HeadMaintainer.update_to_step = _update_to_step
"""


def test_sigkill_while_mlflow_creates_the_store_then_the_next_train_works(tmp_path: Path) -> None:
    ws = train_workspace(tmp_path)
    db = ws / "mlflow.db"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    killing = stage_env() | {"PYTHONPATH": f"src:{hook}", "KILL_AT_STEP": "30"}

    killed = train(ws, killing)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    revision, runs = store_state(db)
    assert revision != _get_latest_schema_revision()  # half-created: tables, an old revision
    assert runs == 0
    assert not (ws / "models/model.pkl").exists()

    # Another process holding the file open may be creating it: left alone, said so.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; f = open({str(db)!r}, 'rb'); time.sleep(600)"]
    )
    try:
        refused = train(ws, stage_env())
    finally:
        holder.kill()
        holder.wait()
    one_line_error(refused, TRACKING_EXIT, f"sqlite:///{db}", f"open in process {holder.pid}")
    assert store_state(db) == (revision, 0)

    again = train(ws, stage_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "was left half-created" in again.stderr
    (aside,) = ws.glob("mlflow.db.incomplete-*")
    assert store_state(aside)[0] == revision  # kept for a post-mortem, not deleted
    assert store_state(db) == (_get_latest_schema_revision(), 1)
    client = MlflowClient(f"sqlite:///{db}")
    (only,) = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert only.info.status == "FINISHED"  # and nothing RUNNING
    assert (ws / "models/model.pkl").exists()
    doctor = run([CLI, "doctor"], ws, stage_env(), check=False, timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # until told (or killed)
conn.execute("ROLLBACK")
"""


def hold_lock(db: Path) -> subprocess.Popen:
    """Another process holding an exclusive lock on ``db`` (taken when this returns) until a
    line is written to its stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def locked_store_workspace(tmp_path: Path) -> tuple[Path, Path]:
    ws = train_workspace(tmp_path)
    db = ws / "mlflow.db"
    store_mod.ensure_experiment(f"sqlite:///{db}", "mnist-mlp", ws)  # an existing store
    return ws, db


def test_a_store_locked_longer_than_the_wait_fails_train_before_the_data_loads(
    tmp_path: Path,
) -> None:
    ws, db = locked_store_workspace(tmp_path)
    holder = hold_lock(db)
    try:
        proc = train(ws, stage_env() | {store_mod.STORE_WAIT_ENV: "2"})
    finally:
        holder.kill()
        holder.wait()
    line = one_line_error(proc, TRACKING_EXIT, f"MLflow store sqlite:///{db} is locked")
    assert "waited 2 s" in line
    assert "training on" not in proc.stderr  # before the data was even loaded
    assert not (ws / "models/model.pkl").exists()
    assert store_state(db)[1] == 0  # no orphan run


def test_a_store_locked_for_a_moment_is_waited_for(tmp_path: Path) -> None:
    ws, db = locked_store_workspace(tmp_path)
    holder = hold_lock(db)
    err_file = tmp_path / "stderr.txt"
    try:
        with err_file.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "stages/train.py"], cwd=ws, env=stage_env(), stderr=err
            )
        deadline = time.monotonic() + 300
        while "waiting up to 30 s" not in err_file.read_text():  # the preflight is waiting
            assert proc.poll() is None, err_file.read_text()[-3000:]
            assert time.monotonic() < deadline, "never waited for the lock"
            time.sleep(0.05)
        assert holder.stdin is not None
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
        assert proc.wait(timeout=600) == 0, err_file.read_text()[-3000:]
    finally:
        for p in (holder, proc):
            if p.poll() is None:
                p.kill()
    assert (ws / "models/model.pkl").exists()
    client = MlflowClient(f"sqlite:///{db}")
    (only,) = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert only.info.status == "FINISHED"


def test_an_unreachable_server_fails_train_before_the_fit_naming_it_without_password(
    tmp_path: Path,
) -> None:
    ws = train_workspace(tmp_path)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = stage_env() | {"MLFLOW_TRACKING_URI": f"http://alice:s3cret-pw@127.0.0.1:{port}"}
    proc = train(ws, env)
    one_line_error(proc, TRACKING_EXIT, f"no tracking server at http://127.0.0.1:{port}")
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    assert "training on" not in proc.stderr
    assert not (ws / "models/model.pkl").exists()
    assert not (ws / "mlflow.db").exists()
