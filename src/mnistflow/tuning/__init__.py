"""``mnistflow tune``: Optuna studies over the params.yaml search space (docs/tuning.md).

space (distributions, trial -> overrides -> ``dvc exp run -S`` flags), storage (where a study
lives, how workers join it), objective (a trial in-process: the training rows only, encoded
once per encode setting, fitted and scored by the stages' library functions), worker (one
process's share of a study, and the pool of ``--workers N``), best (``--promote``, ``--best``)
+ report. No pipeline stage imports this package.
"""
