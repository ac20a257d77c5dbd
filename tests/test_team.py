"""Team scale: the MLflow server (PostgreSQL, basic auth, proxied artifacts), the client
preflight, dataset logging, ``mnistflow sync`` and the DVC remote.

Unit tests cover the pure parts; the e2e tests run against a real PostgreSQL cluster and a real
``mlflow server --app-name basic-auth`` started once per session by tests/services.py.
"""

from __future__ import annotations

import configparser
import itertools
import sys
from pathlib import Path

import pytest

from mnistflow.tracking import server

ADMIN_PW = "admin-pass-for-tests-0123"


def options(**changes: object) -> server.ServerOptions:
    base = {
        "backend_store_uri": "postgresql://u:p@127.0.0.1:5432/mlflow",
        "auth_database_uri": "postgresql://u:p%40x@127.0.0.1:5432/mlflow_auth",
        "artifacts_destination": "/srv/artifacts",
    }
    base.update(changes)
    return server.ServerOptions(**base)  # type: ignore[arg-type]


@pytest.mark.unit
def test_server_command_is_mlflow_with_auth_postgres_and_proxied_artifacts() -> None:
    cmd = server.server_command(options())
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    pairs = dict(itertools.pairwise(cmd))
    assert pairs["--backend-store-uri"] == "postgresql://u:p@127.0.0.1:5432/mlflow"
    assert pairs["--artifacts-destination"] == "/srv/artifacts"
    assert pairs["--app-name"] == "basic-auth"
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--workers"] == "1"
    assert "--serve-artifacts" in cmd
    assert "--allowed-hosts" not in cmd
    wide = server.server_command(options(host="0.0.0.0", allowed_hosts="mlflow.lan,10.0.0.5"))
    assert wide[wide.index("--allowed-hosts") + 1] == "mlflow.lan,10.0.0.5"


@pytest.mark.unit
def test_auth_ini_is_read_back_by_configparser_without_a_password() -> None:
    text = server.auth_ini("postgresql://u:p%40x@h:1/mlflow_auth", "boss", "EDIT")
    parser = configparser.ConfigParser()
    parser.read_string(text)
    section = parser["mlflow"]
    assert section["database_uri"] == "postgresql://u:p%40x@h:1/mlflow_auth"  # % survives
    assert section["admin_username"] == "boss"
    assert section["default_permission"] == "EDIT"
    assert "admin_password" not in section
    assert "password1234" not in text


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "message"),
    [("", "no admin password"), ("password1234", "example"), ("short", "at least")],
)
def test_admin_password_refuses_missing_default_and_short(value: str, message: str) -> None:
    with pytest.raises(server.ServerError, match=message):
        server.admin_password(None, {server.ADMIN_PASSWORD_ENV: value})


@pytest.mark.unit
def test_admin_password_from_env_or_file(tmp_path: Path) -> None:
    assert server.admin_password(None, {server.ADMIN_PASSWORD_ENV: f" {ADMIN_PW}\n"}) == ADMIN_PW
    file = tmp_path / "pw"
    file.write_text(ADMIN_PW + "\n")
    assert server.admin_password(file, {}) == ADMIN_PW
    with pytest.raises(server.ServerError, match="missing"):
        server.admin_password(tmp_path / "missing", {})


@pytest.mark.unit
def test_server_env_hands_over_auth_config_and_drops_client_settings(tmp_path: Path) -> None:
    env = server.server_env(
        {"MLFLOW_TRACKING_URI": "http://x", "MLFLOW_TRACKING_PASSWORD": "p", "PATH": "/bin"},
        tmp_path / "auth.ini",
        ADMIN_PW,
        "secret",
    )
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "auth.ini")
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ADMIN_PW
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "secret"
    assert "MLFLOW_TRACKING_URI" not in env
    assert "MLFLOW_TRACKING_PASSWORD" not in env


@pytest.mark.unit
def test_database_uri_quotes_the_password() -> None:
    from mnistflow.tracking.postgres import database_uri

    assert (
        database_uri("u", "a@b/c", 5433, "mlflow")
        == "postgresql://u:a%40b%2Fc@127.0.0.1:5433/mlflow"
    )
