"""Stage evaluate: score the model on the test set, write metrics, plots and the report.

Continues the MLflow run train started (paths.run_info) and ends it again.
Outputs: paths.metrics (the headline figures), paths.per_class, paths.confusion,
paths.misclassified, paths.report_dir (all
deterministic: the per-run details go to the MLflow run's copy of the report only).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mnistflow import numerics
from mnistflow.data.encode import features
from mnistflow.modeling import metrics as m
from mnistflow.modeling.model import decode_sets, loss_history, predict_scores
from mnistflow.modeling.training import model_from_bytes
from mnistflow.reporting import figures, misclassified, report, tables
from mnistflow.stage_config import stage_config
from mnistflow.tracking import record, reports, store
from mnistflow.tracking.runs import flatten, mlflow_run
from mnistflow.util import fileio
from mnistflow.util.entrypoint import run_main

log = logging.getLogger("mnistflow.stages.evaluate")


def main() -> None:
    """Evaluate and report."""
    params = stage_config("evaluate")
    paths, cfg, classes = params.paths, params.evaluate, list(params.dataset.classes)
    baseline = params.baseline_accuracy  # of this dataset
    run_info, info = fileio.read_json(paths.run_info), fileio.read_json(paths.encode_info)
    model = model_from_bytes(paths.path("model").read_bytes(), paths.model)
    X, y = features(fileio.load_npz(paths.test_features), paths.test_features)
    images = fileio.load_npz(paths.arrays, ["x_test", "y_test"])
    y_true, multilabel = m.true_classes(y), info["labels"] == "onehot"
    m.check_test_labels(
        y_true,
        images["y_test"],
        int(info["n_classes"]),
        len(classes),
        f"{paths.test_features} and {paths.arrays}",
    )

    scores = predict_scores(model, X, len(classes))
    sets = decode_sets(scores, multilabel)
    ev = m.evaluate(y_true, scores, sets, cfg.headline, cfg.confused_pairs)
    log.info(
        "%s %.4f (%s); argmax %.4f, exact match %.4f; rows with no class %d, several %d",
        m.HEADLINE,
        ev.accuracy,
        ev.headline,
        ev.accuracy_argmax,
        ev.accuracy_exact_match,
        ev.rows_no_class,
        ev.rows_multi_class,
    )
    # In DVC_METRICS order, not sorted: `dvc exp show` keeps a file's key order
    fileio.write_json(paths.metrics, m.metrics_dict(ev, baseline), sort_keys=False)
    rows = m.per_class_rows(ev, classes)
    fileio.write_text(paths.per_class, tables.csv_text(m.PER_CLASS_COLUMNS, rows))
    fileio.write_text(paths.confusion, tables.confusion_csv(ev.y_true, ev.y_pred, classes))
    wrong = misclassified.rows(y_true, scores, sets, ev.wrong, paths.images_dir)
    fileio.write_text(paths.misclassified, misclassified.to_csv(wrong))

    report_dir, shown = paths.path("report_dir"), wrong[: cfg.gallery_size]
    shown_figures = figures.report_figures(
        report_dir,
        *loss_history(model),
        ev.confusion,
        classes,
        images["x_test"][[r.index for r in shown]],
        [misclassified.caption(r, classes, multilabel) for r in shown],
    )
    text = report.render(
        ev,
        classes,
        baseline,
        info["labels"],
        info["dataset"],
        report.architecture(model.hidden_layer_sizes, model.activation, model.solver),
        int(fileio.read_json(paths.train_metrics)["n_iter"]),
        run_info["ignored_settings"],
        shown_figures,
        paths.misclassified,
        paths.run_info,
        run_info["experiment_name"],
        numerics.describe(run_info["numerics"]),
    )
    fileio.write_text(report_dir / "report.md", text)

    uri = store.resolve_tracking_uri(params.mlflow, Path.cwd())
    with mlflow_run(uri, run_info["experiment_id"], run_id=run_info["run_id"]) as run:
        run.set_tags({"mnistflow.stage": "evaluate"})
        run.log_params(flatten({"evaluate": record.evaluate_params(params)}))
        record.log_evaluation(run, ev, baseline)
        reports.log_report(run, report_dir, run_info["experiment_name"])
        for path in (paths.misclassified, paths.metrics, paths.per_class, paths.confusion):
            run.log_artifact(path, "evaluate")
        run.set_tags({"mnistflow.stage": "evaluated"})
    log.info("report: %s", report_dir / "report.md")


if __name__ == "__main__":
    sys.exit(run_main(main, "stage evaluate"))
