"""The evaluate stage's side of the MLflow run (:func:`log_evaluated`) and the run's copy of the
report: the committed report plus what differs per run."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from mnistflow.config import Params
from mnistflow.modeling import metrics as m
from mnistflow.reporting import figures, report
from mnistflow.tracking import links, record
from mnistflow.tracking.record import EARLY_STOP_SCORE, ELAPSED
from mnistflow.tracking.runs import Run, flatten, mlflow_run
from mnistflow.tracking.store import redact
from mnistflow.util.fileio import write_text


def run_links(run: Run, experiment_name: str, commit: str) -> report.RunLinks:
    """Where ``run`` lives: ids, commit, store (without a password), UI command and URL."""
    uri = redact(run.uri)
    return report.RunLinks(
        run_id=run.run_id,
        commit=commit,
        experiment_id=run.experiment_id,
        experiment_name=experiment_name,
        tracking_uri=uri,
        ui_command=links.ui_shell_command(uri),
        run_url=links.run_url(run.experiment_id, run.run_id),
    )


TIME_FIGURE = "accuracy_time.png"


def time_figure(run: Run, folder: Path) -> str | None:
    """Draw the run's accuracy against fit time into ``folder`` when the fit measured each
    epoch's time (stepped ``elapsed_s``: online augmentation); its file name, else None."""
    client = MlflowClient(run.uri)
    elapsed = client.get_metric_history(run.run_id, ELAPSED)
    metrics = client.get_run(run.run_id).data.metrics
    if not elapsed or m.HEADLINE not in metrics:
        return None
    by_step = sorted((e.step, e.value) for e in elapsed)
    scores = sorted(
        (s.step, s.value) for s in client.get_metric_history(run.run_id, EARLY_STOP_SCORE)
    )
    figures.accuracy_vs_time(
        [t for _, t in by_step],
        [v for _, v in scores] or None,
        metrics.get("fit_time_s", by_step[-1][1]),
        metrics[m.HEADLINE],
        folder / TIME_FIGURE,
    )
    return TIME_FIGURE


def log_report(run: Run, report_dir: Path, experiment_name: str) -> None:
    """The report folder as artifact ``report/``; its report.md gets the per-run section
    (run id, fit time from the run's ``fit_time_s``, store and link, and the accuracy
    against time figure when measured) the committed one lacks."""
    logged = MlflowClient(run.uri).get_run(run.run_id).data
    fit_time = logged.metrics.get("fit_time_s", float("nan"))
    commit = logged.tags.get("git_commit", "unknown")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "report"
        shutil.copytree(report_dir, folder)
        figure = time_figure(run, folder)
        text = (report_dir / "report.md").read_text(encoding="utf-8")
        links = run_links(run, experiment_name, commit)
        text += "\n" + report.run_section(links, fit_time, figure)
        write_text(folder / "report.md", text)
        run.log_artifact(folder, "report")


def log_evaluated(
    uri: str,
    run_info: Mapping[str, Any],
    params: Params,
    ev: m.Evaluation,
    report_dir: Path,
    artifacts: Sequence[str],
) -> None:
    """Continue the run of ``run_info`` (paths.run_info): evaluate's params, the evaluation,
    the report and the ``artifacts`` (evaluate's files); tag it ``evaluated`` and end it."""
    with mlflow_run(uri, run_info["experiment_id"], run_id=run_info["run_id"]) as run:
        run.set_tags({"mnistflow.stage": "evaluate"})
        run.log_params(flatten({"evaluate": record.evaluate_params(params)}))
        record.log_evaluation(run, ev, params.baseline_accuracy)
        log_report(run, report_dir, run_info["experiment_name"])
        for path in artifacts:
            run.log_artifact(path, "evaluate")
        run.set_tags({"mnistflow.stage": "evaluated"})
