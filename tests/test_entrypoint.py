"""util.entrypoint: the settings every mnistflow process gives MLflow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mnistflow.util.entrypoint import run_main


@pytest.mark.unit
def test_run_main_turns_off_mlflows_recording_of_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recording raced with our background threads (benchmarks/team.py, 8 runs at once)."""
    monkeypatch.delenv("MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING", raising=False)
    seen: dict[str, bool] = {}

    def main() -> None:
        from mlflow.environment_variables import MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING

        seen["record"] = MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING.get()

    assert run_main(main, "test") == 0
    assert seen == {"record": False}


@pytest.mark.e2e
def test_importing_mnistflow_before_mlflow_keeps_mlflows_telemetry_off() -> None:
    """The train stage imports MLflow at module level, before run_main: MLflow starts its
    telemetry client on import (a remote config fetch, flushed at exit) unless the opt-out is
    already set, so importing mnistflow must set it."""
    # MLflow also stays off under pytest (PYTEST_CURRENT_TEST) or CI: not what a stage sees
    hidden = {"MLFLOW_DISABLE_TELEMETRY", "PYTEST_CURRENT_TEST", "CI", "DO_NOT_TRACK"}
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    code = (
        "import mnistflow.tracking.runs\n"
        "from mlflow.telemetry.client import get_telemetry_client\n"
        "print(get_telemetry_client())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "None"
