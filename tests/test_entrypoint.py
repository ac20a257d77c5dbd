"""util.entrypoint: the settings every mnistflow process gives MLflow."""

from __future__ import annotations

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
