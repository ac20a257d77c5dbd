"""What a training run records about where it came from: code, data, DVC experiment, baseline."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mnistflow import numerics
from mnistflow.config import EncodeConfig, ParamsError, TrainConfig, config, section
from mnistflow.util.git import git_or_none

log = logging.getLogger(__name__)

# Set by `mnistflow reproduce` for the rerun's stages: train tags its run `reproduces=<id>`.
REPRODUCES_ENV = "MNISTFLOW_REPRODUCES"
REPRODUCES_TAG = "reproduces"
EXP_NAME_TAG = "dvc_exp_name"  # the DVC experiment a run belongs to (DVC_EXP_NAME)


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
    """The settings that define the baseline configuration, validated and normalised."""
    return {
        "data.dataset": section(params, "data.dataset"),
        "train": config(params, "train", TrainConfig).as_dict(),
        "encode": config(params, "encode", EncodeConfig).as_dict(),
    }


def is_baseline(params: Mapping[str, Any], cwd: Path) -> str:
    """'true' if dataset, train and encode params equal those of the baseline revision.

    The baseline revision is ``$DVC_EXP_BASELINE_REV`` (set by ``dvc exp run``) else HEAD;
    'unknown' if its params.yaml cannot be read or validated.
    """
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    text = git_or_none(["show", f"{rev}:./params.yaml"], cwd)
    if text is None and os.environ.get("DVC_ROOT"):
        text = git_or_none(["show", f"{rev}:params.yaml"], Path(os.environ["DVC_ROOT"]))
    if text is None:
        return "unknown"
    try:
        base = yaml.safe_load(text)
        same = _baseline_view(base) == _baseline_view(params)
    except (ParamsError, yaml.YAMLError) as exc:
        log.warning("params.yaml at %s not comparable (%s): is_baseline unknown", rev, exc)
        return "unknown"
    return "true" if same else "false"


def train_tags(
    params: Mapping[str, Any],
    encode_info: Mapping[str, Any],
    ignored: list[str],
    cwd: Path,
    outputs: list[str],
    observed: Mapping[str, str],
) -> dict[str, str]:
    """The tags of a training run: data identity, code identity, floating-point environment
    (``numerics.*``), DVC experiment, baseline.

    Args:
        params: the whole params mapping (for the baseline comparison).
        encode_info: the encode stage's info (dataset name and content hash).
        ignored: settings sklearn ignores with these params (``model.ignored_settings``).
        cwd: the workspace.
        outputs: pipeline output paths, which do not make the tree dirty.
        observed: the floating-point environment in force (``numerics.observe``).
    """
    tags = {
        "mnistflow.stage": "train",
        "dataset": str(encode_info["dataset"]),
        "dataset_sha256": str(encode_info["dataset_sha256"]),
        "is_baseline": is_baseline(params, cwd),
        "ignored_settings": "; ".join(ignored) if ignored else "none",
        **git_tags(cwd, outputs),
        **numerics.tags(observed),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags[EXP_NAME_TAG] = os.environ["DVC_EXP_NAME"]
    if os.environ.get(REPRODUCES_ENV):
        tags[REPRODUCES_TAG] = os.environ[REPRODUCES_ENV]
    return tags
