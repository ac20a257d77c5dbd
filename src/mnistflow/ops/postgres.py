"""A throw-away PostgreSQL cluster in a folder, for trying the team server on one machine.

``initdb`` + ``pg_ctl`` from Debian's ``/usr/lib/postgresql/<ver>/bin`` (or ``$PATH``), on
127.0.0.1 only, a free port, a random superuser password kept in ``<dir>/password`` (mode
0600) and scram-sha-256 authentication. PostgreSQL refuses to run as root, so as root every
server-side command goes through ``runuser -u postgres --`` and the folder is given to
``postgres``. A real team uses an existing server instead (``--backend-store-uri``).

Layout of ``<dir>``: ``data/`` (the cluster), ``socket/``, ``password``, ``server.log``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)

SUPERUSER = "mnistflow"
OS_USER = "postgres"  # who runs the server when we are root
START_TIMEOUT_S = 60
MAX_CONNECTIONS = 400  # PostgreSQL's default is 100; see Cluster.start


class PostgresError(UserError):
    """The throw-away PostgreSQL cluster could not be created, started or stopped."""

    exit_code = 4


def bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: the newest Debian version, else PATH."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise PostgresError(
        "PostgreSQL's initdb/pg_ctl not found (/usr/lib/postgresql/*/bin or PATH): "
        "apt-get install -y postgresql, or give --backend-store-uri of an existing database"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def as_server_user(args: list[str]) -> list[str]:
    """``args`` run as ``postgres`` when we are root (initdb refuses root), else unchanged."""
    return ["runuser", "-u", OS_USER, "--", *args] if os.geteuid() == 0 else args


def database_uri(user: str, password: str, port: int, database: str, host: str = "127.0.0.1"):
    """A ``postgresql://`` URI (SQLAlchemy picks psycopg 3 for it)."""
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"
    )


@dataclass
class Cluster:
    """A cluster in ``folder``; ``port`` is chosen at :meth:`start`."""

    folder: Path
    port: int = 0

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    def _run(self, args: list[str], what: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            args, capture_output=True, text=True, check=False, timeout=120, env=env
        )
        if proc.returncode != 0:
            raise PostgresError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def _give_to_server_user(self) -> None:
        if os.geteuid() != 0:
            return
        shutil.chown(self.folder, OS_USER, OS_USER)
        for path in self.folder.rglob("*"):
            shutil.chown(path, OS_USER, OS_USER)
        probe = subprocess.run(as_server_user(["test", "-w", str(self.folder)]), check=False)
        if probe.returncode != 0:
            raise PostgresError(
                f"{self.folder}: the {OS_USER} user cannot reach it (a parent folder is "
                "private); choose a folder under /tmp or /srv"
            )

    def init(self) -> None:
        """``initdb`` once (a folder that already holds a cluster is reused)."""
        if (self.data / "PG_VERSION").exists():
            log.info("reusing the PostgreSQL cluster in %s", self.data)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "socket").mkdir(exist_ok=True)
        self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.password_file.chmod(0o600)
        self._give_to_server_user()
        log.info("creating a PostgreSQL cluster in %s", self.data)
        self._run(
            as_server_user(
                [
                    str(bin_dir() / "initdb"),
                    "-D", str(self.data),
                    "-U", SUPERUSER,
                    f"--pwfile={self.password_file}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            ),
            "initdb",
        )  # fmt: skip

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def start(self, port: int | None = None) -> None:
        """``pg_ctl start`` on 127.0.0.1:``port`` (a free one by default); waits until ready."""
        self.port = port or free_port()
        # every mlflow server worker keeps SQLAlchemy pools (up to 15 connections each) for the
        # tracking, registry and auth stores, and every tune worker and trial one more: the
        # default 100 ran out in CI with two tune clones beside the team tests
        options = (
            f"-p {self.port} -k {self.folder / 'socket'} -c listen_addresses=127.0.0.1"
            f" -c max_connections={MAX_CONNECTIONS}"
        )
        log.info("starting PostgreSQL on 127.0.0.1:%d", self.port)
        self._run(
            as_server_user(
                [
                    str(bin_dir() / "pg_ctl"),
                    "-D", str(self.data),
                    "-l", str(self.folder / "server.log"),
                    "-o", options,
                    "-w", "-t", str(START_TIMEOUT_S),
                    "start",
                ]
            ),
            f"pg_ctl start (see {self.folder / 'server.log'})",
        )  # fmt: skip

    def running(self) -> bool:
        """Whether the cluster's postmaster is up."""
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: disconnect clients, checkpoint, exit."""
        if not self.running():
            return
        log.info("stopping PostgreSQL in %s", self.data)
        self._run(
            as_server_user(
                [str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            ),
            "pg_ctl stop",
        )

    def uri(self, database: str) -> str:
        """The URI of ``database`` in this cluster, as its superuser."""
        return database_uri(SUPERUSER, self.password(), self.port, database)

    def create_database(self, name: str) -> str:
        """Create ``name`` unless it exists; return its URI."""
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)
