"""Stage train: fit the MLPClassifier on the encoded training set; one MLflow run per fit.

The run logs the served model (:mod:`mnistflow.serving.logged_model`: raw images in, digit and
probabilities out; two test images of paths.arrays are its input example). Outputs (paths
from params.yaml): paths.model (pickle), paths.loss_curve (csv, DVC plot), paths.train_metrics
(json, deterministic), paths.run_info (the MLflow run evaluate continues; the one per-run
file). Timings go to MLflow only. Ctrl-C or SIGTERM stops the fit, ends the MLflow run KILLED
and writes no output.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mnistflow import numerics
from mnistflow.data.sets import load_train_set
from mnistflow.modeling.model import ignored_settings
from mnistflow.modeling.training import model_bytes
from mnistflow.reporting.tables import loss_csv
from mnistflow.stage_config import stage_config
from mnistflow.tracking import record, store, train_run
from mnistflow.util import fileio
from mnistflow.util.entrypoint import run_main

log = logging.getLogger("mnistflow.stages.train")


def main() -> None:
    """Train and record one run."""
    params = stage_config("train")
    paths, mlflow_cfg = params.paths, params.mlflow
    ignored = ignored_settings(params.train)
    for warning in ignored:
        log.warning("%s", warning)
    cwd = Path.cwd()
    uri = store.resolve_tracking_uri(mlflow_cfg, cwd)
    store.check_store(uri)  # a server that is down or refuses us fails before the data loads
    train = load_train_set(paths)
    log.info("%s", train.describe(params.train.threads))
    experiment_id = train_run.prepare_experiment(uri, mlflow_cfg, cwd)
    observed = numerics.observe()
    log.info("numerics: %s", numerics.describe(observed))
    with train_run.open_run(params, train, uri, experiment_id, cwd, ignored, observed) as run:
        result = train_run.fit_logged(run, params, train)
        log.info("%s", result.describe())
        fileio.write_text(paths.loss_curve, loss_csv(result.losses, result.early_stop_scores))
        train_run.log_trained(run, result, train, paths.loss_curve)
        # The model and run info last: an interruption while logging leaves no model.
        fileio.write_bytes(paths.model, model_bytes(result.model))
        fileio.write_json(paths.train_metrics, result.summary())
        fit_numerics = numerics.summary(observed)
        info = record.run_info(run, mlflow_cfg.experiment_name, ignored, fit_numerics)
        fileio.write_json(paths.run_info, info)


if __name__ == "__main__":
    sys.exit(run_main(main, "stage train"))
