"""Session fixtures for the team tests: a real ``mnistflow server --pg-dir`` (a throw-away
PostgreSQL cluster + ``mlflow server --app-name basic-auth``) on free 127.0.0.1 ports.

Skipped, with the reason, only where PostgreSQL's binaries are not installed (CI installs
them: ``apt-get install -y postgresql``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# random per session: a password found in a log, an artifact or a committed file leaked there
from mnistflow.ops import postgres, tracking_server

ADMIN_PW = "admin-" + secrets.token_urlsafe(12)
USER, USER_PW = "alice", "alice-" + secrets.token_urlsafe(12)
START_TIMEOUT_S = 240


@dataclass(frozen=True)
class TeamServer:
    """A running team server and its credentials."""

    uri: str
    user: str
    password: str
    pg_dir: Path
    log: Path
    admin_password: str

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` plus what a team member sets."""
        return {
            **base,
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": self.user,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }


def postgres_available() -> bool:
    """Whether initdb/pg_ctl are installed."""
    try:
        postgres.bin_dir()
    except postgres.PostgresError:
        return False
    return True


def wait_healthy(uri: str, process: subprocess.Popen, log: Path) -> None:
    start = time.monotonic()
    while time.monotonic() - start < START_TIMEOUT_S:
        if process.poll() is not None:
            pytest.fail(f"mnistflow server exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mnistflow server not healthy in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def require_postgres() -> None:
    """Skip, with the reason, where PostgreSQL's binaries are not installed."""
    if not postgres_available():
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
        )


def server_base(prefix: str) -> Path:
    """A fresh folder for a team server: in /tmp and world-traversable, because as root the
    cluster runs as `postgres`, which cannot enter pytest's private tmp folders."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    return base


@contextmanager
def scratch_cluster(prefix: str) -> Iterator[tuple[Path, postgres.Cluster]]:
    """A running throw-away PostgreSQL cluster in a fresh :func:`server_base` folder (yielded
    with the folder); stopped and removed afterwards."""
    require_postgres()
    base = server_base(prefix)
    cluster = postgres.Cluster(base / "pg")
    cluster.init()
    cluster.start()
    try:
        yield base, cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def processes_showing(secret: str) -> list[int]:
    """The pids of every process on the machine whose command line contains ``secret``."""
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if secret in " ".join(p.info["cmdline"] or [])
    ]


def start_team_server(
    pg_dir: Path, port: int, log: Path, extra: Sequence[str] = ()
) -> subprocess.Popen:
    """``mnistflow server --pg-dir PG_DIR --port PORT [extra]`` (appending to ``log``), once
    healthy.

    A second start on the same ``pg_dir`` reuses the cluster: its data and users survive.
    """
    env = {**os.environ, tracking_server.ADMIN_PASSWORD_ENV: ADMIN_PW}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    cmd = [str(Path(sys.executable).parent / "mnistflow"), "server", "--pg-dir", str(pg_dir)]
    with log.open("a") as out:
        process = subprocess.Popen(
            [*cmd, "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log)
    except BaseException:
        stop_team_server(process, pg_dir)
        raise
    return process


def stop_team_server(process: subprocess.Popen, pg_dir: Path) -> bool:
    """SIGTERM the server and wait; stop PostgreSQL if it was left running (returns whether)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    cluster = postgres.Cluster(pg_dir)
    still_running = cluster.running()
    if still_running:
        cluster.stop()
    return still_running


@pytest.fixture(scope="session", name="team_server")
def team_server_fixture() -> Iterator[TeamServer]:
    """``mnistflow server --pg-dir`` for the whole session, with a user ``alice``; on teardown
    it is stopped by SIGTERM and must leave no PostgreSQL running."""
    require_postgres()
    base = server_base("mnistflow-team-")
    pg_dir, log = base / "pg", base / "server.log"
    port = postgres.free_port()
    process = start_team_server(pg_dir, port, log)
    uri = f"http://127.0.0.1:{port}"
    try:
        tracking_server.create_user(uri, tracking_server.DEFAULT_ADMIN, ADMIN_PW, USER, USER_PW)
        yield TeamServer(uri, USER, USER_PW, pg_dir, log, ADMIN_PW)
    finally:
        still_running = stop_team_server(process, pg_dir)
        shutil.rmtree(base, ignore_errors=True)
        assert not still_running, "mnistflow server left PostgreSQL running after SIGTERM"
