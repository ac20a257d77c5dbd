"""``mnistflow tune``: Optuna studies over the params.yaml search space (docs/tuning.md).

space (distributions, trial -> overrides -> ``dvc exp run -S`` flags), storage (where a study
lives, how workers join it), worker (one process's share of a study, each trial a
``dvc exp run --temp`` on held-out training rows), trial (the train stage's side of a trial:
report each epoch's validation accuracy, prune, tag the MLflow run), best + report
(``--best``).
"""
