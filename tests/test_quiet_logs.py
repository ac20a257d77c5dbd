"""The pipeline's log, as a log file gets it (stderr not a terminal): no third-party warning
or progress bar, no escape codes, one timestamp format, warnings at WARNING level."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import copy_repo, use_tiny_dataset, workspace_env

pytestmark = pytest.mark.e2e

# A log line of the project's one format: "HH:MM:SS LEVEL logger: message"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def test_a_pipeline_log_has_no_library_noise(
    tmp_path: Path, tiny_mirror: tuple[Path, dict]
) -> None:
    mirror, files = tiny_mirror
    ws = copy_repo(tmp_path / "ws", use_tiny_dataset(files, train={"max_iter": 2}))
    log_file = tmp_path / "repro.log"
    with log_file.open("w") as out:  # a file: neither stdout nor stderr is a terminal
        proc = subprocess.run(
            ["dvc", "repro"],
            cwd=ws,
            env=workspace_env(mirror),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    text = log_file.read_text()
    assert proc.returncode == 0, text[-4000:]

    assert "Warning" not in text  # UserWarning, ConvergenceWarning, ... printed by a library
    assert "\x1b[" not in text  # colour escape codes
    assert "\r" not in text  # a progress bar redrawing its line
    assert "it/s" not in text
    assert "Failed to resolve installed pip version" not in text
    assert not re.search(r"^\d{4}/\d\d/\d\d ", text, flags=re.M)  # MLflow's own format

    # every line that looks like a log record is in the one format; DVC's own lines aside
    records = [line for line in text.splitlines() if re.match(r"^\S*\d\d:\d\d:\d\d ", line)]
    assert records
    assert all(LOG_LINE.match(line) for line in records), records
    # sklearn's "max_iter reached" is a warning, logged as one, once
    (converge,) = [line for line in records if "Maximum iterations (2) reached" in line]
    assert " WARNING mnistflow.modeling.model: " in converge
    assert re.search(r", 1 BLAS thread$", text, flags=re.M)
    # the MLflow run was really logged (the quiet is not from skipping the model)
    assert re.search(r"MLflow run \w+ ended FINISHED", text)
