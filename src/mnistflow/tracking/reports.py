"""The MLflow run's copy of the report: the committed report plus what differs per run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from mnistflow.reporting import report
from mnistflow.tracking import ui
from mnistflow.tracking.runs import Run
from mnistflow.util.fileio import write_text


def run_links(run: Run, experiment_name: str) -> report.RunLinks:
    """Where ``run`` lives: ids, store, UI command and URL."""
    return report.RunLinks(
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        experiment_name=experiment_name,
        tracking_uri=run.uri,
        ui_command=ui.ui_shell_command(run.uri),
        run_url=ui.run_url(run.experiment_id, run.run_id),
    )


def log_report(run: Run, report_dir: Path, experiment_name: str) -> None:
    """The report folder as artifact ``report/``; its report.md gets the per-run section
    (run id, fit time from the run's ``fit_time_s``, store and link) the committed one lacks."""
    fit_time = (
        MlflowClient(run.uri).get_run(run.run_id).data.metrics.get("fit_time_s", float("nan"))
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "report"
        shutil.copytree(report_dir, folder)
        text = (report_dir / "report.md").read_text(encoding="utf-8")
        text += "\n" + report.run_section(run_links(run, experiment_name), fit_time)
        write_text(folder / "report.md", text)
        run.log_artifact(folder, "report")
