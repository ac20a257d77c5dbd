"""``mnistflow tune``: Optuna studies over the params.yaml search space (docs/tuning.md).

space (distributions, trial -> overrides -> ``dvc exp run -S`` flags), storage (where a study
lives, how workers join it), objective (validation accuracy on held-out training rows),
worker (one process's share of a study, each trial an MLflow run), report (``--best``).
"""
