"""What a training run records about where it came from: code, data, DVC experiment, baseline."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mnistflow import numerics
from mnistflow.config import EncodeConfig, ParamsError, TrainConfig, config, section
from mnistflow.tracking.artifacts import DATASET_TAG
from mnistflow.util.git import git_or_none

log = logging.getLogger(__name__)

# Set by `mnistflow reproduce` for the rerun's stages: train tags its run `reproduces=<id>`.
REPRODUCES_ENV = "MNISTFLOW_REPRODUCES"
REPRODUCES_TAG = "reproduces"
EXP_NAME_TAG = "dvc_exp_name"  # the DVC experiment a run belongs to (DVC_EXP_NAME)
RUN_NAME_TAG = "mlflow.runName"  # MLflow's own tag of the run name (:func:`run_name`)


def git_tags(cwd: Path, outputs: list[str]) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` of the workspace ('unknown' outside git).

    Pipeline outputs and ``dvc.lock`` are not counted as dirt: DVC updates them during the
    very ``dvc repro`` that is running. Nor is ``params.yaml``: every ``dvc exp run -S``
    edits it, and the run logs the params it used (the data ones via ``dataset_sha256``), so
    commit + logged params still pin the run down.
    """
    commit = git_or_none(["rev-parse", "HEAD"], cwd)
    status = git_or_none(["status", "--porcelain", "--untracked-files=all"], cwd)
    if commit is None or status is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    ignored = ["dvc.lock", "params.yaml", *(o.rstrip("/") for o in outputs)]
    dirty = []
    for line in status.splitlines():
        path = line[3:].split(" -> ")[-1].strip('"')
        if not any(path == o or path.startswith(o + "/") for o in ignored):
            dirty.append(path)
    if dirty:
        log.info("git tree dirty: %s", ", ".join(dirty[:10]))
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false"}


def _baseline_view(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define the baseline configuration, validated and normalised, as
    flat dotted keys in params.yaml order."""
    view = {
        "data.dataset": section(params, "data.dataset"),
        "train": config(params, "train", TrainConfig).as_dict(),
        "encode": config(params, "encode", EncodeConfig).as_dict(),
    }
    return _flat(view)


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def baseline_difference(params: Mapping[str, Any], cwd: Path) -> dict[str, Any] | None:
    """The dataset, train and encode keys whose values differ from the baseline revision's
    params.yaml, with this run's values (empty: the baseline configuration).

    The baseline revision is ``$DVC_EXP_BASELINE_REV`` (set by ``dvc exp run``) else HEAD;
    None if its params.yaml cannot be read or validated.
    """
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    text = git_or_none(["show", f"{rev}:./params.yaml"], cwd)
    if text is None and os.environ.get("DVC_ROOT"):
        text = git_or_none(["show", f"{rev}:params.yaml"], Path(os.environ["DVC_ROOT"]))
    if text is None:
        return None
    try:
        base, own = _baseline_view(yaml.safe_load(text)), _baseline_view(params)
    except (ParamsError, yaml.YAMLError) as exc:
        log.warning("params.yaml at %s not comparable (%s): is_baseline unknown", rev, exc)
        return None
    return {key: value for key, value in own.items() if base.get(key) != value}


def is_baseline(params: Mapping[str, Any], cwd: Path) -> str:
    """'true' if dataset, train and encode params equal those of the baseline revision
    (:func:`baseline_difference`), 'false' if not, 'unknown' if that cannot be told."""
    return _baseline_flag(baseline_difference(params, cwd))


def _baseline_flag(difference: dict[str, Any] | None) -> str:
    return "unknown" if difference is None else str(not difference).lower()


# MLflow keeps run names up to 250 characters; a name is for reading in a table
MAX_NAME = 80


def run_name(exp_name: str | None, difference: dict[str, Any] | None, commit: str) -> str:
    """A run's name after what made it (pure).

    A DVC experiment's run is named as the experiment. A plain ``dvc repro`` of the
    baseline configuration is ``baseline@<short commit>``; of other params, their
    difference to the baseline, e.g. ``train.alpha=0.001@<short commit>`` (cut at
    :data:`MAX_NAME` characters); ``params@<short commit>`` if that difference is unknown.
    Outside git the ``@`` part is left out.
    """
    if exp_name:
        return exp_name
    if difference is None:
        what = "params"
    elif not difference:
        what = "baseline"
    else:
        what = ",".join(f"{key}={_value(value)}" for key, value in difference.items())
    at = f"@{commit[:7]}" if commit and commit != "unknown" else ""
    if len(what) + len(at) > MAX_NAME:
        what = what[: MAX_NAME - len(at) - 1] + "…"
    return what + at


def _value(value: Any) -> str:
    """A param value in a name: compact JSON, strings without quotes."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def train_tags(
    params: Mapping[str, Any],
    encode_info: Mapping[str, Any],
    ignored: list[str],
    cwd: Path,
    outputs: list[str],
    observed: Mapping[str, str],
) -> dict[str, str]:
    """The tags of a training run: data identity, code identity, floating-point environment
    (``numerics.*``), DVC experiment, baseline, and the run's name (:data:`RUN_NAME_TAG`, see
    :func:`run_name`).

    Args:
        params: the whole params mapping (for the baseline comparison).
        encode_info: the encode stage's info (dataset name and content hash).
        ignored: settings sklearn ignores with these params (``model.ignored_settings``).
        cwd: the workspace.
        outputs: pipeline output paths, which do not make the tree dirty.
        observed: the floating-point environment in force (``numerics.observe``).
    """
    difference = baseline_difference(params, cwd)
    git = git_tags(cwd, outputs)
    exp_name = os.environ.get("DVC_EXP_NAME")
    tags = {
        "mnistflow.stage": "train",
        DATASET_TAG: str(encode_info["dataset"]),
        "dataset_sha256": str(encode_info["dataset_sha256"]),
        "is_baseline": _baseline_flag(difference),
        "ignored_settings": "; ".join(ignored) if ignored else "none",
        RUN_NAME_TAG: run_name(exp_name, difference, git["git_commit"]),
        **git,
        **numerics.tags(observed),
    }
    if exp_name:
        tags[EXP_NAME_TAG] = exp_name
    if os.environ.get(REPRODUCES_ENV):
        tags[REPRODUCES_TAG] = os.environ[REPRODUCES_ENV]
    return tags
