"""The evaluate stage's figures and report (paths.report_dir), from a scored test set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sklearn.neural_network import MLPClassifier

from mnistflow import numerics
from mnistflow.config import Params
from mnistflow.data.sets import TestSet
from mnistflow.modeling.model import VIEWS, Scored, loss_history
from mnistflow.reporting import figures, misclassified, report
from mnistflow.reporting.misclassified import Misclassified
from mnistflow.util import fileio


def write_report(
    model: MLPClassifier,
    scored: Scored,
    test: TestSet,
    wrong: Sequence[Misclassified],
    params: Params,
    run_info: Mapping[str, Any],
    n_iter: int,
) -> Path:
    """Write the report's figures and ``report.md`` into paths.report_dir; return the latter.

    Args:
        model: the fitted model (its loss history and architecture).
        scored: its answers on ``test``.
        test: the test set (its raw images make the gallery).
        wrong: the misclassified rows; the first evaluate.gallery_size are shown.
        params: the validated params.
        run_info: the content of paths.run_info (experiment, ignored settings, numerics).
        n_iter: epochs run (paths.train_metrics).
    """
    report_dir, classes = params.paths.path("report_dir"), list(params.dataset.classes)
    shown = wrong[: params.evaluate.gallery_size]
    shown_figures = figures.report_figures(
        report_dir,
        *loss_history(model),
        scored.ev.confusion,
        classes,
        test.images[[r.index for r in shown]],
        [misclassified.caption(r, classes, test.multilabel) for r in shown],
    )
    text = report.render(
        report.ReportInput(
            ev=scored.ev,
            class_names=classes,
            baseline=params.baseline_accuracy,
            labels=test.info["labels"],
            dataset=test.info["dataset"],
            model=report.architecture(
                model.hidden_layer_sizes,
                model.activation,
                model.solver,
                params.train.members,
                len(VIEWS[params.train.views]),
            ),
            n_iter=n_iter,
            ignored=run_info["ignored_settings"],
            figures=shown_figures,
            misclassified_csv=params.paths.misclassified,
            run_info=params.paths.run_info,
            experiment_name=run_info["experiment_name"],
            numerics=numerics.describe(run_info["numerics"]),
        )
    )
    return fileio.write_text(report_dir / "report.md", text)
