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
from functools import partial
from pathlib import Path

from mnistflow import numerics
from mnistflow.data.encode import Encoding, features
from mnistflow.data.online import OnlineData
from mnistflow.modeling.model import ignored_settings
from mnistflow.modeling.training import fit, model_bytes
from mnistflow.reporting.tables import loss_csv
from mnistflow.serving import logged_model
from mnistflow.stage_config import stage_config
from mnistflow.tracking import datasets, liveness, provenance, record, store
from mnistflow.tracking.runs import mlflow_run
from mnistflow.util import fileio
from mnistflow.util.entrypoint import run_main

log = logging.getLogger("mnistflow.stages.train")


def main() -> None:
    """Train and record one run."""
    params = stage_config("train")
    paths, cfg, mlflow_cfg = params.paths, params.train, params.mlflow
    ignored = ignored_settings(cfg)
    for warning in ignored:
        log.warning("%s", warning)
    cwd = Path.cwd()
    uri = store.resolve_tracking_uri(mlflow_cfg, cwd)
    store.check_store(uri)  # a server that is down or refuses us fails before the data loads
    info = fileio.read_json(paths.encode_info)
    X, y = features(fileio.load_npz(paths.train_features), paths.train_features)
    encoding = Encoding.from_arrays(fileio.load_npz(paths.encode_stats), paths.encode_stats)
    n_classes = int(info["n_classes"])
    # two raw test images: the logged model's input example and the image shape
    examples = fileio.load_npz(paths.arrays, ["x_test"])["x_test"][:2]
    log.info(
        "training on %d rows x %d features (%s targets), %d BLAS thread%s",
        X.shape[0],
        X.shape[1],
        info["labels"],
        cfg.threads,
        "" if cfg.threads == 1 else "s",
    )

    experiment_id = store.ensure_experiment(uri, mlflow_cfg.experiment_name, store.store_root(cwd))
    liveness.sweep(uri, mlflow_cfg.experiment_name)  # runs left RUNNING by killed processes
    # Every pipeline path: DVC rewrites outputs mid-run, so they do not make the tree dirty.
    outputs = list(paths.as_dict().values())
    observed = numerics.observe()
    log.info("numerics: %s", numerics.describe(observed))
    tags = provenance.train_tags(params.raw, info, ignored, cwd, outputs, observed)
    name = tags[provenance.RUN_NAME_TAG]
    with mlflow_run(uri, experiment_id, run_name=name, log_system_metrics=True) as run:
        run.set_tags(tags)
        run.log_params(record.train_params(params))
        datasets.log_dataset(
            params.dataset_name, info["dataset_sha256"], paths.train_features, X.shape
        )
        online = OnlineData(encoding, examples.shape[1:], params.encode.augment)
        result = fit(cfg, X, y, partial(record.log_epoch, run), online=online)
        log.info(
            "fitted in %.1f s, %d epochs, final loss %.5f",
            result.fit_time_s,
            result.n_iter,
            result.final_loss,
        )
        fileio.write_text(paths.loss_curve, loss_csv(result.losses, result.val_scores))
        record.log_fit(run, result)
        record.log_encoding(run, encoding)
        run.log_artifact(paths.loss_curve, "train")
        logged_model.log_model(result.model, encoding, examples, n_classes)
        run.set_tags({"mnistflow.stage": "trained"})
        # The model and run info last: an interruption while logging leaves no model.
        fileio.write_bytes(paths.model, model_bytes(result.model))
        fileio.write_json(paths.train_metrics, result.summary())
        fileio.write_json(
            paths.run_info,
            record.run_info(
                run,
                mlflow_cfg.experiment_name,
                ignored,
                numerics.summary(observed),
            ),
        )


if __name__ == "__main__":
    sys.exit(run_main(main, "stage train"))
