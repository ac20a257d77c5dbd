"""Stage train: fit the MLPClassifier on the encoded training set; one MLflow run per fit.

Outputs (paths from params.yaml): paths.model (pickle), paths.loss_curve (csv, DVC plot),
paths.train_metrics (json), paths.run_info (the MLflow run evaluate continues).
Ctrl-C or SIGTERM stops the fit, ends the MLflow run KILLED and writes no output.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mnistflow.config import load_config
from mnistflow.modeling.model import (
    build_classifier,
    fit_with_progress,
    ignored_settings,
    loss_history,
)
from mnistflow.tracking import datasets, liveness, provenance, store
from mnistflow.tracking.runs import flatten, mlflow_run
from mnistflow.util import fileio
from mnistflow.util.entrypoint import run_main

log = logging.getLogger("mnistflow.stages.train")
PICKLE_PROTOCOL = 5  # fixed, so the model's bytes do not depend on the Python default


def load_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X (n, d) float and y from an encode output, with a clear error if malformed."""
    data = fileio.load_npz(path)
    if set(data) != {"X", "y"}:
        raise ValueError(f"{path}: expected arrays X and y, found {sorted(data)}")
    X, y = data["X"], data["y"]
    if X.ndim != 2 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: X {X.shape} and y {y.shape} do not describe the same rows")
    return X, y


def loss_csv(losses: list[float], val_scores: list[float] | None) -> str:
    """``epoch,loss[,val_score]`` lines for the DVC plot."""
    header = "epoch,loss" + (",val_score" if val_scores else "")
    rows = [header]
    for i, loss in enumerate(losses):
        row = f"{i + 1},{loss:.8f}"
        if val_scores:
            row += f",{val_scores[i]:.8f}"
        rows.append(row)
    return "\n".join(rows) + "\n"


def main() -> None:
    """Train and record one run."""
    params = load_config()
    paths, cfg, mlflow_cfg, encode_cfg = params.paths, params.train, params.mlflow, params.encode
    dataset = params.dataset_name
    ignored = ignored_settings(cfg)
    for warning in ignored:
        log.warning("%s", warning)

    cwd = Path.cwd()
    uri = store.resolve_tracking_uri(mlflow_cfg, cwd)
    store.check_store(uri)  # a server that is down or refuses us fails before the data loads
    root = store.store_root(cwd)
    info = fileio.read_json(paths.encode_info)
    X, y = load_features(paths.path("train_features"))
    log.info(
        "training on %d rows x %d features (%s targets), %d BLAS threads",
        X.shape[0],
        X.shape[1],
        info["labels"],
        cfg.threads,
    )

    # Every pipeline path: DVC rewrites outputs mid-run, so they do not make the tree dirty.
    outputs = list(paths.as_dict().values())
    with threadpool_limits(limits=cfg.threads):
        experiment_id = store.ensure_experiment(uri, mlflow_cfg.experiment_name, root)
        liveness.sweep(uri, mlflow_cfg.experiment_name)  # runs left RUNNING by killed processes
        run_name = os.environ.get("DVC_EXP_NAME")
        with mlflow_run(uri, experiment_id, run_name=run_name, log_system_metrics=True) as run:
            run.set_tags(provenance.train_tags(params.raw, info, ignored, cwd, outputs))
            datasets.log_dataset(dataset, info["dataset_sha256"], paths.train_features, X.shape)
            run.log_params(
                flatten(
                    {
                        "data": {"dataset": dataset},
                        "encode": encode_cfg.as_dict(),
                        "train": cfg.as_dict(),
                        "mlflow": {"experiment_name": mlflow_cfg.experiment_name},
                    }
                )
            )

            model = build_classifier(cfg)
            with tqdm(total=cfg.max_iter, unit="epoch", desc="train", file=sys.stderr) as bar:

                def on_epoch(epoch: int, loss: float, val_score: float | None) -> None:
                    run.log_metric("train_loss", loss, step=epoch)
                    postfix = {"loss": f"{loss:.4f}"}
                    if val_score is not None:
                        run.log_metric("val_score", val_score, step=epoch)
                        postfix["val"] = f"{val_score:.4f}"
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(epoch - bar.n)

                start = time.perf_counter()
                fit_with_progress(model, X, y, on_epoch)
                fit_time = time.perf_counter() - start
            losses, val_scores = loss_history(model)
            log.info(
                "fitted in %.1f s, %d epochs, final loss %.5f", fit_time, model.n_iter_, model.loss_
            )

            fileio.write_text(paths.loss_curve, loss_csv(losses, val_scores))
            run.log_metrics({"fit_time_s": fit_time, "n_iter": model.n_iter_})
            run.log_artifact(paths.loss_curve, "train")
            run.log_model(model, X[:5])
            run.set_tags({"mnistflow.stage": "trained"})

            # The model and run info last: an interruption while logging leaves no model.
            fileio.write_bytes(paths.model, pickle.dumps(model, protocol=PICKLE_PROTOCOL))
            fileio.write_json(
                paths.train_metrics,
                {
                    "fit_time_s": round(fit_time, 3),
                    "n_iter": int(model.n_iter_),
                    "final_loss": round(float(model.loss_), 8),
                },
            )
            fileio.write_json(
                paths.run_info,
                {
                    "run_id": run.run_id,
                    "tracking_uri": uri,
                    "experiment_id": experiment_id,
                    "experiment_name": mlflow_cfg.experiment_name,
                    "ignored_settings": ignored,
                },
            )


if __name__ == "__main__":
    sys.exit(run_main(main, "stage train"))
