"""``mnistflow adduser``: create a user on the team's MLflow server (as its admin)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from mnistflow.ops.tracking_server import ServerError, create_user


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow adduser``."""
    parser.add_argument("username", help="the new user's name")
    parser.add_argument(
        "--uri", help="the server (default: $MLFLOW_TRACKING_URI), e.g. http://127.0.0.1:5000"
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        help="file holding the new user's password (default: generate one and print it once)",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Create the user with the admin's MLFLOW_TRACKING_USERNAME/PASSWORD."""
    uri = args.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise ServerError("give the server's http(s) URI (--uri or MLFLOW_TRACKING_URI)")
    admin = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    admin_pw = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not admin or not admin_pw:
        raise ServerError("set MLFLOW_TRACKING_USERNAME/PASSWORD to an admin's credentials")
    if args.password_file is not None:
        password = args.password_file.read_text().strip()
        if not password:
            raise ServerError(f"--password-file {args.password_file} is empty")
    else:
        password = secrets.token_urlsafe(16)
    create_user(uri, admin, admin_pw, args.username, password)
    if args.password_file is None:
        # the one place a password is shown: the new user's own, once, on stdout
        sys.stdout.write(f"{args.username}\t{password}\n")
    sys.stderr.write(f"created user {args.username!r} on {uri}\n")
    return 0
