"""The team's MLflow tracking server: PostgreSQL backend, proxied artifacts, basic auth.

``mlflow server --app-name basic-auth`` with its backend store in PostgreSQL (an existing
database, or a throw-away cluster from :mod:`mnistflow.ops.postgres`), artifacts proxied
through the server (``mlflow-artifacts:/`` URIs; a folder or ``s3://``), and MLflow's auth app,
whose users live in a second database named in an ini file (``MLFLOW_AUTH_CONFIG_PATH``).

The admin password comes from ``MNISTFLOW_ADMIN_PASSWORD`` or a file, is handed to MLflow as
``MLFLOW_AUTH_ADMIN_PASSWORD`` (never written to disk by us) and only matters the first time
the auth database is created: afterwards the admin exists and keeps its password.

No password is ever on a command line (``ps`` shows every user's): the backend store URI,
which holds the database password, reaches ``mlflow server`` as ``MLFLOW_BACKEND_STORE_URI``
in its environment (MLflow's own variable for ``--backend-store-uri``), the auth database's
URI through the 0600 ini file.

The command line and the ini file are pure functions (:func:`server_command`,
:func:`auth_ini`); :func:`serve` runs everything until Ctrl-C/SIGTERM and stops it again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mnistflow.tracking.store import BACKEND_STORE_ENV
from mnistflow.util.errors import UserError
from mnistflow.util.processes import run_until_stopped

log = logging.getLogger(__name__)

ADMIN_PASSWORD_ENV = "MNISTFLOW_ADMIN_PASSWORD"
AUTH_DATABASE_ENV = "MNISTFLOW_AUTH_DATABASE_URI"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
MLFLOW_DEFAULT_PASSWORD = "password1234"  # MLflow's documented example: never accepted
MIN_PASSWORD_LENGTH = 12
DEFAULT_ADMIN = "admin"
# EDIT: every user can log runs into the shared experiment. READ (MLflow's default) would let
# only the experiment's creator log into it.
DEFAULT_PERMISSION = "EDIT"
BACKEND_DB = "mlflow"
AUTH_DB = "mlflow_auth"
READY_TIMEOUT_S = 180.0  # ~20 s measured with PostgreSQL; the machines are shared
STOP_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 10.0
AUTH_CACHE_TTL_S = 60


class ServerError(UserError):
    """The tracking server cannot be started or used as asked."""

    exit_code = 4


@dataclass(frozen=True)
class ServerOptions:
    """What ``mnistflow server`` was asked for."""

    backend_store_uri: str
    auth_database_uri: str
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    allowed_hosts: str | None = None
    admin_username: str = DEFAULT_ADMIN
    default_permission: str = DEFAULT_PERMISSION


def check_admin_password(password: str) -> str:
    """``password`` stripped, or ServerError if it is missing, MLflow's example or short."""
    password = password.strip()
    if not password:
        raise ServerError(
            f"no admin password: set {ADMIN_PASSWORD_ENV} or give --admin-password-file "
            "(the server never starts with a default password)"
        )
    if password == MLFLOW_DEFAULT_PASSWORD:
        raise ServerError(f"the admin password must not be MLflow's example {password!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServerError(f"the admin password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def admin_password(file: Path | None, env: Mapping[str, str]) -> str:
    """The admin password from ``file`` if given, else from ``$MNISTFLOW_ADMIN_PASSWORD``."""
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise ServerError(f"--admin-password-file {file}: {exc.strerror}") from exc
        return check_admin_password(text)
    return check_admin_password(env.get(ADMIN_PASSWORD_ENV, ""))


def auth_ini(database_uri: str, admin_username: str, default_permission: str) -> str:
    """The auth app's ini file (``MLFLOW_AUTH_CONFIG_PATH``); the password is not in it.

    ``%`` is doubled: configparser interpolates it, and URL-quoted passwords contain it.
    """
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # each request otherwise re-hashes the password (PBKDF2); with one worker a password
        # change invalidates the cache at once, with several it may lag by this long
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n"
    )


def server_command(opts: ServerOptions) -> list[str]:
    """The ``mlflow server`` command line (this environment's MLflow); no URI with a password:
    the backend store goes through :func:`server_env`."""
    args = [
        sys.executable, "-m", "mlflow", "server",
        "--serve-artifacts",
        "--artifacts-destination", opts.artifacts_destination,
        "--app-name", "basic-auth",
        "--host", opts.host,
        "--port", str(opts.port),
        "--workers", str(opts.workers),
    ]  # fmt: skip
    if opts.allowed_hosts:
        args += ["--allowed-hosts", opts.allowed_hosts]
    return args


def server_env(
    base: Mapping[str, str],
    backend_store_uri: str,
    ini_path: Path,
    admin_password: str,
    secret_key: str,
) -> dict[str, str]:
    """The server's environment: backend store, auth config, admin password, Flask secret,
    no telemetry."""
    env = dict(base)
    env.update(
        {
            BACKEND_STORE_ENV: backend_store_uri,
            "MLFLOW_AUTH_CONFIG_PATH": str(ini_path),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            SECRET_KEY_ENV: secret_key,
        }
    )
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no GenAI job runner
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    return env


def client_uri(host: str, port: int) -> str:
    """What clients set as MLFLOW_TRACKING_URI (the machine's name when bound to all)."""
    import socket

    shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def run_server(opts: ServerOptions, password: str) -> int:
    """Start ``mlflow server``, announce the client URI, wait until it exits or we are stopped.

    Returns:
        0 after Ctrl-C/SIGTERM, else the server's own exit code.
    """
    if not opts.artifacts_destination.startswith(("s3://", "gs://", "wasbs://", "hdfs://")):
        Path(opts.artifacts_destination).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mnistflow-auth-") as private:
        ini = Path(private) / "basic_auth.ini"
        ini.touch(mode=0o600)
        ini.write_text(
            auth_ini(opts.auth_database_uri, opts.admin_username, opts.default_permission)
        )
        secret = os.environ.get(SECRET_KEY_ENV) or secrets.token_hex(32)
        env = server_env(os.environ, opts.backend_store_uri, ini, password, secret)
        log.info(
            "starting mlflow server on %s:%d (%d worker(s))", opts.host, opts.port, opts.workers
        )
        process = subprocess.Popen(server_command(opts), env=env, start_new_session=True)
        uri = client_uri(opts.host, opts.port)

        def announce(waited: float) -> None:
            log.info("MLflow tracking server ready after %.1f s. Clients set:", waited)
            log.info("  export MLFLOW_TRACKING_URI=%s", uri)
            log.info("  export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>")
            log.info(
                "(admin user %r; new users: mnistflow adduser NAME --uri %s). Ctrl-C stops it.",
                opts.admin_username,
                uri,
            )

        local = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
        return run_until_stopped(
            process,
            f"http://{local}:{opts.port}",
            "mlflow server",
            announce,
            READY_TIMEOUT_S,
            STOP_TIMEOUT_S,
        )


def basic_auth_header(username: str, password: str) -> str:
    """The ``Authorization`` header value of HTTP basic auth."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def create_user(uri: str, admin: str, admin_pw: str, username: str, password: str) -> None:
    """Create an MLflow user through the auth app's REST API (``users/create``) as admin."""
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/users/create",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": basic_auth_header(admin, admin_pw),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:300]
        if exc.code in (401, 403):
            raise ServerError(
                f"{uri} refused the admin credentials (MLFLOW_TRACKING_USERNAME/PASSWORD "
                f"must be an admin's): HTTP {exc.code}"
            ) from exc
        if "RESOURCE_ALREADY_EXISTS" in body or "already exists" in body:
            raise ServerError(f"user {username!r} already exists on {uri}") from exc
        raise ServerError(
            f"{uri}: creating user {username!r} failed: HTTP {exc.code} {body}"
        ) from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise ServerError(f"no tracking server at {uri} ({exc})") from exc
