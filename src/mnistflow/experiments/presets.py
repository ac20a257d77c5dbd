"""Named sets of param overrides (``presets/<name>.yaml``) and ``mnistflow best``.

A preset maps dotted params keys to values. It is applied as ``dvc exp run -S key=value``
flags, so the run is an ordinary DVC experiment and MLflow run, compared like any other.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from mnistflow.config import ParamsError, section, validate

log = logging.getLogger(__name__)

PRESETS_DIR = Path("presets")
# The sections a preset may change; the result is validated whole (config.validate).
_SECTIONS = ("encode", "train")


def load_preset(path: str | Path) -> dict[str, Any]:
    """Read a preset file: a flat mapping of dotted params keys to values.

    Raises:
        ParamsError: the file is missing, not a flat mapping, or sets a key outside the
            ``encode`` and ``train`` sections.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: preset not found") from exc
    if not isinstance(data, dict) or not data:
        raise ParamsError(f"{path}: expected a mapping of dotted params keys to values")
    for key in data:
        if not isinstance(key, str) or key.split(".")[0] not in _SECTIONS:
            raise ParamsError(f"{path}: key {key!r} is not in {', '.join(_SECTIONS)}")
    return data


def apply_preset(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with the overrides set, validated.

    Raises:
        ParamsError: an override names a key params.yaml does not have, or a bad value.
    """
    result = copy.deepcopy(params)
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition(".")
        node = section(result, parent)
        if leaf not in node:
            raise ParamsError(f"preset sets unknown key '{key}'")
        node[leaf] = value
    validate(result)
    return result


def set_flags(overrides: dict[str, Any]) -> list[str]:
    """``dvc exp run`` flags: ``-S key=value`` with values in YAML flow style."""
    flags = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        flags += ["-S", f"{key}={text}"]
    return flags
