"""Child servers (the MLflow UI, the tracking server, a model server): wait until they answer,
run them until the user stops us, stop them with their whole process group."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from mnistflow.util.errors import UserError
from mnistflow.util.signals import Interrupted, raise_on_signals

log = logging.getLogger(__name__)

POLL_S = 0.5
LOOPBACK = "127.0.0.1"  # where every unauthenticated child server binds (never 0.0.0.0)


class ServiceError(UserError):
    """A child server exited early or did not answer in time."""


def base_url(host: str, port: int) -> str:
    """A child server's root URL."""
    return f"http://{host}:{port}"


def check_port_free(host: str, port: int, error: type[UserError] = ServiceError) -> None:
    """Raise ``error`` if something listens on ``host:port``.

    SO_REUSEADDR as the servers themselves bind: a port a stopped server left in TIME_WAIT
    must not stop its restart; a listening socket still does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise error(
                f"port {port} on {host} is in use ({exc.strerror}); choose another with --port"
            ) from exc


def wait_for_health(
    url: str, process: subprocess.Popen, timeout: float, what: str, path: str = "/health"
) -> float:
    """Poll ``url`` + ``path`` until it answers 200; return the seconds waited.

    Raises:
        ServiceError: ``what`` (e.g. "mlflow ui") exited, or no answer within ``timeout``.
    """
    start = time.monotonic()
    while True:
        code = process.poll()
        if code is not None:
            raise ServiceError(
                f"{what} exited with code {code} before answering (its output above)"
            )
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet: keep polling until the timeout
        if time.monotonic() - start > timeout:
            raise ServiceError(f"{what} did not answer at {url}{path} within {timeout:.0f} s")
        time.sleep(POLL_S)


def stop_group(process: subprocess.Popen, timeout: float, what: str) -> None:
    """SIGTERM the process group of ``process`` (started with ``start_new_session=True``);
    SIGKILL it when it lingers past ``timeout`` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s ignored SIGTERM for %.0f s; killing it", what, timeout)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_until_stopped(
    process: subprocess.Popen,
    url: str,
    what: str,
    on_ready: Callable[[float], None],
    ready_timeout: float,
    stop_timeout: float,
    path: str = "/health",
) -> int:
    """Wait until ``process`` answers at ``url``, call ``on_ready(seconds waited)``, then wait
    until it exits or we get Ctrl-C/SIGTERM; the process group is stopped in every case.

    Returns:
        0 after a stop by the user, else the server's own exit code.
    """
    try:
        with raise_on_signals():
            on_ready(wait_for_health(url, process, ready_timeout, what, path))
            return process.wait()
    except Interrupted:
        log.info("stopping %s", what)
        return 0
    finally:
        stop_group(process, stop_timeout, what)
