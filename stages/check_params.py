"""DVC stage ``check_params``: validate the whole of params.yaml before any other stage runs.

DVC removes a stage's outputs before running its command, so a typo found by the stage
itself would already have cost those outputs. This stage runs first, and every other stage
depends on its output. That output never changes (it does not depend on the values), so a
param change reruns only this check and the stages that read the changed param.
"""

from __future__ import annotations

import logging
import sys

from mnistflow.config import load_config
from mnistflow.util.entrypoint import run_main
from mnistflow.util.fileio import write_json

log = logging.getLogger("mnistflow.stages.check_params")


def main() -> None:
    """Validate params.yaml (raises ParamsError naming the key); write the constant marker."""
    params = load_config()
    write_json(params.paths.check_params, {"params": "valid"})  # the same bytes every time
    log.info("params.yaml is valid")


if __name__ == "__main__":
    sys.exit(run_main(main, "stage check_params"))
