"""``mnistflow server``: the team's MLflow tracking server
(:mod:`mnistflow.ops.tracking_server`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from mnistflow.ops import postgres
from mnistflow.ops.tracking_server import (
    AUTH_DATABASE_ENV,
    AUTH_DB,
    BACKEND_DB,
    BACKEND_STORE_ENV,
    DEFAULT_ADMIN,
    DEFAULT_PERMISSION,
    ServerError,
    ServerOptions,
    admin_password,
    run_server,
)
from mnistflow.util.processes import check_port_free

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow server``."""
    store = parser.add_mutually_exclusive_group()
    store.add_argument(
        "--pg-dir",
        type=Path,
        help="trial: create (once) and run a throw-away PostgreSQL cluster in this folder, "
        "stopped again with the server",
    )
    store.add_argument(
        "--backend-store-uri",
        help="team: an existing PostgreSQL database, postgresql://user:pw@host:5432/mlflow "
        f"(default: ${BACKEND_STORE_ENV}; prefer it: a command line is visible in ps)",
    )
    parser.add_argument(
        "--auth-database-uri",
        help="the auth app's users database (required with --backend-store-uri; "
        f"default: ${AUTH_DATABASE_ENV}; with --pg-dir: database {AUTH_DB!r} of the cluster)",
    )
    parser.add_argument(
        "--artifacts-destination",
        help="where the server stores artifacts: a folder or s3://bucket/prefix "
        "(default: PG_DIR/artifacts, else ./mlflow-artifacts)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument(
        "--allowed-hosts", help="Host headers to accept, comma-separated (with --host 0.0.0.0)"
    )
    parser.add_argument("--admin-username", default=DEFAULT_ADMIN, help="default: admin")
    parser.add_argument(
        "--admin-password-file",
        type=Path,
        help="file holding the admin password (default: $MNISTFLOW_ADMIN_PASSWORD)",
    )
    parser.add_argument(
        "--default-permission",
        default=DEFAULT_PERMISSION,
        choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
        help="what every user may do with others' experiments (default EDIT: log runs)",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Start the server (and the trial cluster); stop both on Ctrl-C/SIGTERM."""
    password = admin_password(args.admin_password_file, os.environ)  # first: fail fast
    if not 0 < args.port < 65536 or args.workers < 1:
        raise ServerError("--port must be in 1..65535 and --workers at least 1")
    check_port_free(args.host, args.port, ServerError)

    def options(backend: str, auth: str, artifacts: str) -> ServerOptions:
        return ServerOptions(
            backend_store_uri=backend,
            auth_database_uri=auth,
            artifacts_destination=args.artifacts_destination or artifacts,
            host=args.host,
            port=args.port,
            workers=args.workers,
            allowed_hosts=args.allowed_hosts,
            admin_username=args.admin_username,
            default_permission=args.default_permission,
        )

    auth_uri = args.auth_database_uri or os.environ.get(AUTH_DATABASE_ENV)
    if args.pg_dir is None:
        backend_uri = args.backend_store_uri or os.environ.get(BACKEND_STORE_ENV)
        if not backend_uri:
            raise ServerError(
                f"give --pg-dir (trial) or the team database: ${BACKEND_STORE_ENV} "
                "(or --backend-store-uri)"
            )
        if not auth_uri:
            raise ServerError(
                f"${AUTH_DATABASE_ENV} (or --auth-database-uri) is required with a backend "
                "store URI (a second database for the users, e.g. postgresql://…/mlflow_auth)"
            )
        default_artifacts = str(Path("mlflow-artifacts").resolve())
        return run_server(options(backend_uri, auth_uri, default_artifacts), password)

    cluster = postgres.Cluster(args.pg_dir.resolve())
    cluster.init()
    try:
        cluster.start()
        backend = cluster.create_database(BACKEND_DB)
        auth = auth_uri or cluster.create_database(AUTH_DB)
        return run_server(options(backend, auth, str(cluster.folder / "artifacts")), password)
    finally:
        cluster.stop()
