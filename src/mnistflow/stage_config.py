"""What one pipeline stage may read: the params its ``dvc.yaml`` entry declares, nothing else.

``dvc.yaml`` is the one declaration of what a stage reads: DVC reruns a stage when a declared
param changes, and only then. So a stage loads its params with :func:`stage_config`, which
validates the whole ``params.yaml`` (as ``check_params`` does) and hands back a view in which
reading a key the stage does not declare raises :class:`UndeclaredParamError` naming the stage and
the key, the first time the code reads it (the tests run every stage, so a new read without
its declaration fails there, not silently in a user's skipped rerun).

A declaration covers its key and everything under it (``train`` covers ``train.alpha``);
``${data.dataset}`` in a declaration is expanded as DVC expands it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import BaseModel

from mnistflow.config import PARAMS_FILE, Params, ParamsError, load_params, section, validate
from mnistflow.util.errors import UserError

DVC_YAML = "dvc.yaml"
# Params attributes that are not sections -> the params.yaml key each one is (after reading
# data.dataset, which names the dataset)
_DERIVED: dict[str, Callable[[str], str]] = {
    "dataset_name": lambda dataset: "data.dataset",
    "dataset": lambda dataset: f"datasets.{dataset}",
    "baseline_accuracy": lambda dataset: f"evaluate.baseline_accuracy.{dataset}",
}
# Methods that read one key named by their argument (``paths.path("model")``)
_KEYED_METHODS = {"path"}


class UndeclaredParamError(UserError):
    """A stage read a params key its dvc.yaml entry does not declare (not a ParamsError:
    nothing that tolerates a bad params file may tolerate this)."""


def expand(text: str, raw: Mapping[str, Any]) -> str:
    """Expand ``${a.b}`` in a dvc.yaml string the way DVC's templating does."""
    while "${" in text:
        start = text.index("${")
        end = text.index("}", start)
        text = text[:start] + str(section(raw, text[start + 2 : end])) + text[end + 1 :]
    return text


def declared_params(
    stage: str, raw: Mapping[str, Any], dvc_yaml: str | Path = DVC_YAML
) -> list[str]:
    """The params keys ``stage`` declares in dvc.yaml, templates expanded.

    Raises:
        ParamsError: dvc.yaml is missing or has no such stage.
    """
    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ParamsError(f"{dvc_yaml}: cannot read its stages ({exc})") from exc
    if stage not in stages:
        raise ParamsError(f"{dvc_yaml}: no stage '{stage}'")
    keys = stages[stage].get("params", [])
    if not all(isinstance(k, str) for k in keys):
        raise ParamsError(f"{dvc_yaml}: stage '{stage}' declares a whole params file")
    return [expand(k, raw) for k in keys]


def stage_config(
    stage: str, path: str | Path = PARAMS_FILE, dvc_yaml: str | Path = DVC_YAML
) -> Params:
    """The whole params file validated, seen through ``stage``'s declarations."""
    raw = load_params(path)
    full = validate(raw)
    view = _View(full, "", frozenset(declared_params(stage, raw, dvc_yaml)), stage, raw)
    return cast(Params, view)


class _Scope:
    """Which keys one stage declared, and the check every read goes through."""

    def __init__(self, declared: frozenset[str], stage: str) -> None:
        self.declared, self.stage = declared, stage

    def covers(self, key: str) -> bool:
        return any(key == d or key.startswith(d + ".") for d in self.declared)

    def partly(self, key: str) -> bool:
        """Something under ``key`` is declared (so reading into it may go on)."""
        return any(d.startswith(key + ".") for d in self.declared)

    def check(self, key: str) -> None:
        if not self.covers(key):
            raise UndeclaredParamError(
                f"stage {self.stage} reads params key '{key}', which its dvc.yaml entry does "
                "not declare: add it to the stage's params (DVC reruns the stage when a "
                "declared key changes)"
            )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _View:
    """An object of the params (Params or a section) seen through a stage's declarations."""

    def __init__(
        self, target: Any, prefix: str, declared: frozenset[str], stage: str, raw: Mapping
    ) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_scope", _Scope(declared, stage))
        object.__setattr__(self, "_raw", raw)

    def _into(self, key: str, value: Any) -> Any:
        scope: _Scope = self._scope
        if scope.covers(key):
            return value  # declared as a whole: the real object
        if isinstance(value, (BaseModel, Params)) and scope.partly(key):
            return _View(value, key, scope.declared, scope.stage, self._raw)
        if isinstance(value, Mapping) and scope.partly(key):
            return _MappingView(value, key, scope)
        scope.check(key)  # raises
        return value

    def __getattr__(self, name: str) -> Any:
        target, prefix, scope = self._target, self._prefix, self._scope
        if prefix == "" and name == "raw":
            return _MappingView(self._raw, "", scope)
        if prefix == "" and name in _DERIVED:
            scope.check("data.dataset")
            return self._into(_DERIVED[name](target.dataset_name), getattr(target, name))
        value = getattr(target, name)
        fields = type(target).model_fields if isinstance(target, BaseModel) else {}
        if name in fields or (prefix == "" and not callable(value)):
            return self._into(_join(prefix, name), value)
        if callable(value) and name in _KEYED_METHODS:

            def keyed(key: str, *args: Any, **kwargs: Any) -> Any:
                scope.check(_join(prefix, key))
                return value(key, *args, **kwargs)

            return keyed
        scope.check(prefix or "<the whole params file>")  # any other method reads it all
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def __repr__(self) -> str:
        return f"<params of stage {self._scope.stage}: {self._prefix or 'all'}>"


class _MappingView(Mapping[str, Any]):
    """A mapping of the raw params seen through a stage's declarations."""

    def __init__(self, target: Mapping[str, Any], prefix: str, scope: _Scope) -> None:
        self._target, self._prefix, self._scope = target, prefix, scope

    def __getitem__(self, name: str) -> Any:
        key = _join(self._prefix, name)
        value = self._target[name]
        if self._scope.covers(key):
            return value
        if isinstance(value, Mapping) and self._scope.partly(key):
            return _MappingView(value, key, self._scope)
        self._scope.check(key)
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._target

    def __iter__(self) -> Iterator[str]:
        self._scope.check(self._prefix or "<the whole params file>")
        return iter(self._target)

    def __len__(self) -> int:
        self._scope.check(self._prefix or "<the whole params file>")
        return len(self._target)
