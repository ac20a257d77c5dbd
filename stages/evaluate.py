"""Stage evaluate: score the model on the test set, write metrics, plots and the report.

Continues the MLflow run train started (paths.run_info) and ends it again.
Outputs: paths.metrics, paths.confusion, paths.misclassified, paths.report_dir.
"""

from __future__ import annotations

import csv
import io
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
from sklearn.neural_network import MLPClassifier

from mnistflow.config import load_config
from mnistflow.modeling import metrics as m
from mnistflow.modeling.model import (
    decode_sets,
    loss_history,
    predict_scores,
)
from mnistflow.reporting import figures, report
from mnistflow.tracking import store, ui
from mnistflow.tracking.runs import flatten, mlflow_run
from mnistflow.util import fileio
from mnistflow.util.entrypoint import run_main

log = logging.getLogger("mnistflow.stages.evaluate")


def load_model(path: Path) -> MLPClassifier:
    """The pickled model train wrote (a file of this pipeline: trusted)."""
    with path.open("rb") as fh:
        model = pickle.load(fh)
    if not isinstance(model, MLPClassifier):
        raise TypeError(f"{path}: expected an MLPClassifier, found {type(model).__name__}")
    return model


def load_test_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x_test (uint8, (n, h, w)) and y_test from unpack's arrays, without loading train."""
    with np.load(path, allow_pickle=False) as data:
        return data["x_test"], data["y_test"]


def csv_text(header: list[str], rows: list[list[object]]) -> str:
    """CSV text with a header."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def caption(row: dict, classes: list[str], multilabel: bool) -> str:
    """Gallery caption: index, true -> argmax class (its score); the thresholded set below it
    when that differs (one-hot targets: no class, or several)."""
    text = (
        f"#{row['index']} {classes[row['true']]}→{classes[row['predicted']]} "
        f"({row['confidence']:.2f})"
    )
    if multilabel and row["predicted_set"] != str(row["predicted"]):
        names = [classes[int(c)] for c in row["predicted_set"].split()]
        text += "\nset: " + ("+".join(names) if names else "none")
    return text


def main() -> None:
    """Evaluate and report."""
    params = load_config()
    paths, cfg, mlflow_cfg = params.paths, params.evaluate, params.mlflow
    dataset, spec = params.dataset_name, params.dataset
    classes = list(spec.classes)

    run_info = fileio.read_json(paths.run_info)
    train_metrics = fileio.read_json(paths.train_metrics)
    info = fileio.read_json(paths.encode_info)
    model = load_model(paths.path("model"))
    test = fileio.load_npz(paths.test_features)
    x_images, y_images = load_test_images(paths.path("arrays"))
    n_classes = int(info["n_classes"])
    if n_classes != len(classes):
        raise ValueError(
            f"{paths.encode_info}: {n_classes} classes, but "
            f"datasets.{dataset}.classes names {len(classes)}"
        )
    y_true = m.true_classes(test["y"])
    if not np.array_equal(y_true, y_images.astype(np.int64)):
        raise ValueError(
            f"{paths.test_features} and {paths.arrays} disagree on the test "
            "labels: re-run the pipeline (dvc repro)"
        )

    scores = predict_scores(model, test["X"], n_classes)
    sets = decode_sets(scores, multilabel=info["labels"] == "onehot")
    ev = m.evaluate(y_true, scores, sets, cfg.headline, cfg.confused_pairs)
    log.info(
        "accuracy %.4f (%s); argmax %.4f, exact match %.4f; rows with no class %d, several %d",
        ev.accuracy,
        ev.headline,
        ev.accuracy_argmax,
        ev.accuracy_exact_match,
        ev.rows_no_class,
        ev.rows_multi_class,
    )

    fit_time = float(train_metrics["fit_time_s"])
    metrics_out = m.metrics_dict(ev, cfg.baseline_accuracy, fit_time)
    fileio.write_json(paths.metrics, metrics_out)
    fileio.write_text(
        paths.confusion,
        csv_text(
            ["actual", "predicted"],
            [[classes[t], classes[p]] for t, p in zip(ev.y_true, ev.y_pred, strict=True)],
        ),
    )
    rows = m.misclassified_rows(y_true, scores, sets, ev.wrong, paths.images_dir)
    header = ["index", "true", "predicted", "confidence", "predicted_set", "png"]
    fileio.write_text(paths.misclassified, csv_text(header, [[r[h] for h in header] for r in rows]))

    report_dir = paths.path("report_dir")
    losses, val_scores = loss_history(model)
    figures.loss_curve(losses, val_scores, report_dir / "loss.png")
    figures.confusion_heatmap(ev.confusion, classes, report_dir / "confusion.png")
    shown = rows[: cfg.gallery_size]
    figures.gallery(
        x_images[[r["index"] for r in shown]],
        [caption(r, classes, info["labels"] == "onehot") for r in shown],
        report_dir / "misclassified.png",
    )

    uri = store.resolve_tracking_uri(mlflow_cfg, Path.cwd())
    if uri != run_info["tracking_uri"]:
        log.warning("tracking store is %s but train logged to %s", uri, run_info["tracking_uri"])
    headline_key = "test_accuracy_" + ("argmax" if ev.headline == "argmax" else "exact_match")
    with mlflow_run(uri, run_info["experiment_id"], run_id=run_info["run_id"]) as run:
        run.set_tags({"mnistflow.stage": "evaluate", "headline_metric": headline_key})
        run.log_params(flatten({"evaluate": cfg.as_dict()}))
        per_class = {}
        for k in range(n_classes):
            per_class[f"precision_class_{k}"] = ev.precision[k]
            per_class[f"recall_class_{k}"] = ev.recall[k]
            per_class[f"f1_class_{k}"] = ev.f1[k]
        run.log_metrics(
            {
                "test_accuracy": ev.accuracy,
                "test_accuracy_argmax": ev.accuracy_argmax,
                "test_accuracy_exact_match": ev.accuracy_exact_match,
                "delta_to_baseline": ev.accuracy - cfg.baseline_accuracy,
                "rows_no_class": ev.rows_no_class,
                "rows_multi_class": ev.rows_multi_class,
                **per_class,
            }
        )
        links = report.RunLinks(
            run_id=run.run_id,
            experiment_id=run.experiment_id,
            experiment_name=run_info["experiment_name"],
            tracking_uri=uri,
            ui_command=ui.ui_shell_command(uri),
            run_url=ui.run_url(run.experiment_id, run.run_id),
        )
        text = report.render(
            ev,
            classes,
            cfg.baseline_accuracy,
            info["labels"],
            info["dataset"],
            fit_time,
            int(train_metrics["n_iter"]),
            run_info.get("ignored_settings", []),
            {
                "Training loss": "loss.png",
                "Confusion matrix": "confusion.png",
                f"Misclassified test images (first {len(shown)})": "misclassified.png",
            },
            paths.misclassified,
            links,
        )
        fileio.write_text(report_dir / "report.md", text)
        run.log_artifact(report_dir, "report")
        run.log_artifact(paths.misclassified, "evaluate")
        run.log_artifact(paths.metrics, "evaluate")
        run.log_artifact(paths.confusion, "evaluate")
        run.set_tags({"mnistflow.stage": "evaluated"})
    log.info("report: %s", report_dir / "report.md")


if __name__ == "__main__":
    sys.exit(run_main(main, "stage evaluate"))
