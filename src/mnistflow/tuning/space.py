"""The search space: ``tune.space`` dimensions as Optuna distributions, and a trial's values
as params overrides (``-S key=value`` flags) that reproduce it with ``dvc exp run``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from mnistflow.config import CategoricalDim, Dimension, FloatDim, IntDim

# Optuna stores categorical choices as None/bool/int/float/str; a list choice (layer sizes) is
# stored as its YAML flow text, e.g. "[256, 128]", and read back with yaml.safe_load.
_SCALARS = (type(None), bool, int, float, str)


def choice_label(value: Any) -> Any:
    """How a categorical choice is stored in Optuna (scalars as they are, lists as YAML)."""
    if isinstance(value, _SCALARS):
        return value
    return yaml.safe_dump(list(value), default_flow_style=True).strip()


def distributions(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """``{key: optuna distribution}`` for a parsed space (``config.tune_space``)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, FloatDim):
            out[key] = FloatDistribution(dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntDim):
            out[key] = IntDistribution(dim.low, dim.high, log=dim.log)
        else:
            out[key] = CategoricalDistribution([choice_label(c) for c in dim.choices])
    return out


def overrides(space: Mapping[str, Dimension], values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's values (``trial.params``) as params overrides, in space order.

    Raises:
        KeyError: a key of the space has no value.
    """
    out: dict[str, Any] = {}
    for key, dim in space.items():
        value = values[key]
        if isinstance(dim, CategoricalDim) and isinstance(value, str):
            matches = [c for c in dim.choices if choice_label(c) == value]
            value = matches[0] if matches else value
        elif isinstance(dim, FloatDim):
            value = float(value)
        elif isinstance(dim, IntDim):
            value = int(value)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def suggest(trial: Any, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Ask an Optuna trial for every dimension; return the values as params overrides."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, FloatDim):
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntDim):
            values[key] = trial.suggest_int(key, dim.low, dim.high, log=dim.log)
        else:
            values[key] = trial.suggest_categorical(key, [choice_label(c) for c in dim.choices])
    return overrides(space, values)


def set_flags(values: Mapping[str, Any]) -> list[str]:
    """``["-S", "key=value", ...]`` for ``dvc exp run`` (the presets' one encoding)."""
    from mnistflow.experiments.presets import set_flags as flags

    return flags(dict(values))


def unit_position(dim: Dimension, value: Any) -> float:
    """Where ``value`` lies on its dimension, from 0 (low, first choice) to 1 (high, last
    choice); log ranges on a log scale."""
    if isinstance(dim, CategoricalDim):
        labels = [choice_label(c) for c in dim.choices]
        return labels.index(choice_label(value)) / max(1, len(labels) - 1)
    low, high, v = float(dim.low), float(dim.high), float(value)
    if dim.log:
        low, high, v = math.log(low), math.log(high), math.log(v)
    return (v - low) / (high - low)


def axis_labels(dim: Dimension) -> list[str]:
    """The labels of a dimension's axis, evenly spread from 0 to 1: its range or choices."""
    if isinstance(dim, CategoricalDim):
        return [str(choice_label(c)) for c in dim.choices]
    return [f"{dim.low:g}", f"{dim.high:g}"]
