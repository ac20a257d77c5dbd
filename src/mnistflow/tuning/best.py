"""Trials as DVC experiments on demand: ``mnistflow tune --promote N`` (any trial, as
``<study>-t<N>``) and ``--best`` (the best trial as ``<study>-best``, and the study report).

The experiment (``dvc exp run -n NAME -S …`` with the trial's overrides) runs the normal
pipeline: the whole training set, the test set evaluated once, for this configuration only.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from mnistflow.config import Params, tune_space
from mnistflow.experiments.presets import apply_preset, set_flags
from mnistflow.modeling.metrics import HEADLINE
from mnistflow.tuning import report, space, storage, worker
from mnistflow.util import fileio
from mnistflow.util.dvc import dvc

log = logging.getLogger(__name__)


def importances(study: Any) -> dict[str, float] | None:
    """Optuna's parameter importances, or None when there are too few trials to tell."""
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:
        log.info("no parameter importances: %s", exc)
        return None


def trial_overrides(study: Any, number: int) -> dict[str, Any]:
    """The params overrides of trial ``number``.

    Raises:
        StudyError: the study has no such trial, or it never got its values.
    """
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found or worker.ATTR_OVERRIDES not in found[0].user_attrs:
        raise storage.StudyError(f"study {study.study_name!r} has no trial #{number} with params")
    return dict(found[0].user_attrs[worker.ATTR_OVERRIDES])


def promote(params: Params, root: Path, overrides: dict[str, Any], name: str) -> list[str]:
    """Run the pipeline with a trial's overrides as the DVC experiment ``name``; return its
    ``-S`` flags. The overrides are checked against today's params.yaml first.

    Raises:
        ParamsError: an override no longer fits params.yaml.
        DvcError: the experiment failed (e.g. the name exists already).
    """
    apply_preset(dict(params.raw), overrides)
    flags = set_flags(overrides)
    dvc(["exp", "run", "-n", name, *flags], root)
    log.info("experiment %s: %s", name, " ".join(flags[1::2]))
    return flags


def run_promote(params: Params, root: Path, name: str, url: str, number: int) -> int:
    """``--promote N``: trial ``number`` of study ``name`` as experiment ``<name>-t<N>``."""
    study = storage.load_study(params.tune, name, url)
    promote(params, root, trial_overrides(study, number), f"{name}-t{number}")
    return 0


def run_best(
    params: Params, root: Path, name: str, url: str, out_dir: Path, run_experiment: bool
) -> int:
    """Run the best trial as an experiment (unless not ``run_experiment``), write the report
    to ``out_dir`` and log it to the study's parent run; return 0."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    study = storage.load_study(params.tune, name, url)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise storage.StudyError(f"study {name!r} has no complete trial yet")
    best = study.best_trial
    overrides = trial_overrides(study, best.number)
    flags = set_flags(overrides)
    test_accuracy = None
    if run_experiment:
        promote(params, root, overrides, f"{name}-best")
        metrics = fileio.read_json(root / params.paths.metrics)
        test_accuracy = float(metrics[HEADLINE])
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    fingerprints = Counter(str(t.user_attrs.get(worker.ATTR_NUMERICS, "none")) for t in complete)
    baseline = params.baseline_accuracy  # of the configured dataset
    out_dir = root / out_dir
    report.history_figure(
        [t.number for t in complete], [float(t.value) for t in complete], baseline,
        out_dir / "history.png",
    )  # fmt: skip
    dims = tune_space(params.raw)
    report.parallel_figure(
        list(dims),
        [[space.unit_position(d, t.params[k]) for k, d in dims.items()] for t in complete],
        [float(t.value) for t in complete],
        [space.axis_labels(d) for d in dims.values()],
        out_dir / "parallel.png",
    )
    found = importances(study)
    if found:
        report.importance_figure(found, out_dir / "importances.png")
    text = report.markdown(
        name,
        counts,
        {"number": best.number, "value": float(best.value), "params": overrides},
        baseline,
        flags,
        found,
        test_accuracy,
        dict(fingerprints),
    )
    fileio.write_text(out_dir / "report.md", text)
    tracking = worker.tracking_for(params, root, name)
    client = MlflowClient(tracking.uri)
    client.log_artifacts(tracking.parent_run_id, str(out_dir), "report")
    client.log_metric(tracking.parent_run_id, "best_val_accuracy", float(best.value))
    if test_accuracy is not None:
        client.log_metric(tracking.parent_run_id, "best_test_accuracy", test_accuracy)
    client.set_tag(tracking.parent_run_id, "mnistflow.best_trial", str(best.number))
    log.info(
        "best trial #%d (holdout_accuracy %.4f); report in %s", best.number, best.value, out_dir
    )
    return 0
