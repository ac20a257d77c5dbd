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

from mnistflow.data.sets import load_test_set
from mnistflow.modeling import metrics as m
from mnistflow.modeling.model import score
from mnistflow.modeling.training import model_from_bytes
from mnistflow.reporting import evaluation, misclassified, tables
from mnistflow.stage_config import stage_config
from mnistflow.tracking import reports, store
from mnistflow.util import fileio
from mnistflow.util.entrypoint import run_main

log = logging.getLogger("mnistflow.stages.evaluate")


def main() -> None:
    """Evaluate and report."""
    params = stage_config("evaluate")
    paths, classes = params.paths, list(params.dataset.classes)
    run_info = fileio.read_json(paths.run_info)
    test = load_test_set(paths, len(classes))
    model = model_from_bytes(paths.path("model").read_bytes(), paths.model)
    scored = score(model, test.X, test.y_true, test.multilabel, len(classes), params.evaluate)
    ev = scored.ev
    log.info("%s", m.describe(ev))
    # In DVC_METRICS order, not sorted: `dvc exp show` keeps a file's key order
    fileio.write_json(paths.metrics, m.metrics_dict(ev, params.baseline_accuracy), sort_keys=False)
    rows = m.per_class_rows(ev, classes)
    fileio.write_text(paths.per_class, tables.csv_text(m.PER_CLASS_COLUMNS, rows))
    fileio.write_text(paths.confusion, tables.confusion_csv(ev.y_true, ev.y_pred, classes))
    wrong = misclassified.rows(test.y_true, scored.scores, scored.sets, ev.wrong, paths.images_dir)
    fileio.write_text(paths.misclassified, misclassified.to_csv(wrong))
    n_iter = int(fileio.read_json(paths.train_metrics)["n_iter"])
    report_md = evaluation.write_report(model, scored, test, wrong, params, run_info, n_iter)

    uri = store.resolve_tracking_uri(params.mlflow, Path.cwd())
    logged = (paths.misclassified, paths.metrics, paths.per_class, paths.confusion)
    reports.log_evaluated(uri, run_info, params, ev, report_md.parent, logged)
    log.info("report: %s", report_md)


if __name__ == "__main__":
    sys.exit(run_main(main, "stage evaluate"))
