"""`mnistflow ui` end to end: a real MLflow server on a free port, read by headless Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mnistflow.ops.ui import VIEW_KEY, leaderboard_view
from mnistflow.tracking.links import runs_url
from tests.helpers import REPO_ROOT, workspace_env
from tests.mlflow_fixtures import EXPERIMENT, copy_store, shared_store

# Debian's chromium, headless, with nothing reaching for the (closed) network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
    "--window-size=1600,1000",
]
STARTUP_TIMEOUT_S = 300  # ~20-40 s measured; the 2-core machine is shared with other jobs


@pytest.mark.unit
def test_leaderboard_view_selects_the_key_columns() -> None:
    view = leaderboard_view(["train.alpha"])
    assert view["orderByKey"] == "metrics.`test_accuracy`"
    assert view["orderByAsc"] is False
    assert "params.`train.alpha`" in view["selectedColumns"]
    assert runs_url("127.0.0.1", 5, "3", VIEW_KEY).endswith(
        f"/#/experiments/3/runs?viewStateShareKey={VIEW_KEY}"
    )


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `make services` (apt-get install)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _browse(chromium: str, url: str, profile: Path, action: str) -> subprocess.CompletedProcess:
    """Run headless chromium once with a fresh profile; ``action`` is --dump-dom or
    --screenshot=<file>."""
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", action, url],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def _wait_for_line(log: Path, pattern: str, process: subprocess.Popen) -> re.Match:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"mnistflow ui exited {process.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {pattern!r} after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _text(dom: str) -> str:
    """Visible-ish text of a DOM dump: tags removed, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.browser
def test_ui_shows_experiment_runs_and_accuracy(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    chromium = _chromium()
    store = copy_store(shared_store(tmp_path_factory), tmp_path / "store")  # the UI writes a tag
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(REPO_ROOT / "params.yaml", work / "params.yaml")
    env = workspace_env()
    env["MLFLOW_TRACKING_URI"] = store.uri
    port = _free_port()
    log = tmp_path / "ui.log"
    cli = Path(sys.executable).parent / "mnistflow"

    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(cli), "ui", "--port", str(port)], cwd=work, env=env, stdout=sink, stderr=sink
        )
    server_group = None
    try:
        server_group = int(_wait_for_line(log, r"process group (\d+)", process).group(1))
        ready = _wait_for_line(log, r"ready after ([\d.]+) s\. Runs table: (\S+)", process)
        runs_table = f"http://127.0.0.1:{port}/#/experiments/{store.experiment_id}/runs"
        assert ready.group(2) == runs_table
        view = _wait_for_line(log, r"Leaderboard view .*: (\S+)", process).group(1)
        assert view == f"{runs_table}?viewStateShareKey={VIEW_KEY}"

        page = _text(_browse(chromium, runs_table, tmp_path / "profile1", "--dump-dom").stdout)
        assert EXPERIMENT in page
        for name in store.runs:
            assert name in page

        board = _text(_browse(chromium, view, tmp_path / "profile2", "--dump-dom").stdout)
        assert "test_accuracy" in board
        for name in ("wide-alpha", "baseline", "small"):
            assert f"{store.runs[name].accuracy}" in board  # 0.9811, 0.9712, 0.9405
        # " name ": whole cells, not "delta_to_baseline" in a column header
        order = [board.index(f" {n} ") for n in ("wide-alpha", "baseline", "small", "crashed")]
        assert order == sorted(order)  # best accuracy first

        shot = tmp_path / "runs.png"
        _browse(chromium, view, tmp_path / "profile3", f"--screenshot={shot}")
        with Image.open(shot) as img:
            assert img.size == (1600, 1000)
            low, high = img.convert("L").getextrema()
            assert high - low > 100  # a rendered page, not a blank screen

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        with socket.socket() as sock:  # the server is gone, not orphaned
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if server_group is not None:
            with contextlib.suppress(ProcessLookupError):  # already stopped, as it should be
                os.killpg(server_group, signal.SIGKILL)
