"""mnistflow: a reproducible MNIST experiment workflow (DVC stages, scikit-learn MLP, MLflow)."""

import os

from mnistflow import numerics

__version__ = "0.1.0"

# MLflow 3 sends usage telemetry unless told not to; these machines are offline and the runs
# are nobody else's business. It starts when `mlflow` is first imported (a thread fetching a
# remote config, flushed at exit: ~2 s of wall time per train stage on an offline machine).
# The stages import MLflow at module level, before util.entrypoint.run_main runs, so the
# opt-out must already be in the environment when any mnistflow module is imported. An
# explicit setting in the environment still wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow installs its own log handler (its own timestamp format) on import unless told not
# to; without it, its records go through the project's one handler (util.logs).
os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")

# The pinned floating-point environment must be in force before numpy loads, and every entry
# point (stages, `mnistflow`, tune workers, benchmarks) imports this package before any module
# of it imports numpy: see mnistflow.numerics.
numerics.install()
