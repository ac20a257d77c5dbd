"""Load and validate ``params.yaml``; every error names the offending key.

``params.yaml`` is the only place defaults live. This module holds no defaults of its own:
each config class reads every field from its section, rejects unknown keys (a typo fails
loudly) and checks types and ranges before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from mnistflow.util.errors import UserError

PARAMS_FILE = "params.yaml"


C = typing.TypeVar("C", bound="Config")


class ParamsError(UserError, ValueError):
    """A missing, unknown or invalid key in params.yaml."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read a params file.

    Args:
        path: the YAML file (default ``params.yaml`` in the working directory).

    Returns:
        The parsed mapping.

    Raises:
        ParamsError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def section(params: Mapping[str, Any], dotted: str) -> Any:
    """Return ``params[a][b]...`` for ``dotted='a.b'``, naming the key if it is missing."""
    node: Any = params
    walked: list[str] = []
    for part in dotted.split("."):
        walked.append(part)
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"params.yaml: missing key '{'.'.join(walked)}'")
        node = node[part]
    return node


def _check(key: str, value: Any, hint: Any) -> Any:
    """Check one value against a type hint; return it (ints widened to float where declared)."""
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ParamsError(
                f"params.yaml: '{key}' must be one of "
                f"{', '.join(map(repr, allowed))}; got {value!r}"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        errors = []
        for option in get_args(hint):
            try:
                return _check(key, value, option)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(
            f"params.yaml: '{key}' has an invalid value {value!r}: "
            + "; or ".join(e.split(": ", 1)[-1] for e in errors)
        )
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list | tuple):
            raise ParamsError(f"params.yaml: '{key}' must be a list; got {value!r}")
        return tuple(_check(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"params.yaml: '{key}' must be a mapping; got {value!r}")
        return dict(value)
    if hint is type(None):
        if value is not None:
            raise ParamsError(f"params.yaml: '{key}' must be null; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params.yaml: '{key}' must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params.yaml: '{key}' must be an integer; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"params.yaml: '{key}' must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"params.yaml: '{key}' must be a string; got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return hint.from_section(value, key)
    raise TypeError(f"unsupported type hint {hint!r} for {key}")  # a bug here, not in params


class Config:
    """Base for the typed, validated views of one params.yaml section.

    Subclasses are dataclasses; ``_bounds`` maps a field to ``(min, max)`` (inclusive,
    ``None`` for open) and ``_validate`` adds cross-field checks.
    """

    _bounds: typing.ClassVar[dict[str, tuple[float | None, float | None]]] = {}

    @classmethod
    def from_section(cls, raw: Any, prefix: str) -> typing.Self:
        """Build from the mapping found at ``prefix`` (its dotted key, used in errors)."""
        if not isinstance(raw, Mapping):
            raise ParamsError(f"params.yaml: '{prefix}' must be a mapping; got {raw!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ParamsError(
                f"params.yaml: unknown key '{prefix}.{unknown[0]}' (known keys: {', '.join(names)})"
            )
        values = {}
        for name in names:
            key = f"{prefix}.{name}"
            if name not in raw:
                raise ParamsError(f"params.yaml: missing key '{key}'")
            value = _check(key, raw[name], hints[name])
            low, high = cls._bounds.get(name, (None, None))
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, int | float) and not isinstance(item, bool):
                    if low is not None and item < low:
                        raise ParamsError(f"params.yaml: '{key}' must be >= {low}; got {item!r}")
                    if high is not None and item > high:
                        raise ParamsError(f"params.yaml: '{key}' must be <= {high}; got {item!r}")
            values[name] = value
        obj = cls(**values)
        obj._validate(prefix)
        return obj

    def _validate(self, prefix: str) -> None:
        """Cross-field checks; raise ParamsError naming the key."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (tuples as lists), e.g. for logging."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()  # type: ignore[call-overload]
        }


@dataclass(frozen=True)
class Paths(Config):
    """``paths:``: every file the pipeline reads or writes, relative to the workspace root."""

    raw_dir: str
    arrays: str
    table: str
    images_dir: str
    images_manifest: str
    train_features: str
    test_features: str
    encode_info: str
    encode_stats: str
    model: str
    run_info: str
    loss_curve: str
    train_metrics: str
    metrics: str
    confusion: str
    misclassified: str
    report_dir: str

    def path(self, name: str) -> Path:
        """The path for one key, as a Path."""
        return Path(getattr(self, name))


@dataclass(frozen=True)
class FileSpec(Config):
    """One IDX file of a dataset: its name on the mirrors and decompressed SHA-256."""

    name: str
    sha256: str

    def _validate(self, prefix: str) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ParamsError(f"params.yaml: '{prefix}.sha256' must be 64 lowercase hex digits")
        if "/" in self.name or not self.name:
            raise ParamsError(f"params.yaml: '{prefix}.name' must be a plain file name")


@dataclass(frozen=True)
class DatasetFiles(Config):
    """The four IDX files every dataset has."""

    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec

    def items(self) -> list[tuple[str, FileSpec]]:
        """``(role, spec)`` pairs in a fixed order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


@dataclass(frozen=True)
class DatasetSpec(Config):
    """``datasets.<name>:``: mirrors, class names and files of one IDX dataset."""

    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    files: DatasetFiles


@dataclass(frozen=True)
class DownloadConfig(Config):
    """``download:``: how the raw files are fetched."""

    mirror: str
    connect_timeout: float
    read_timeout: float
    retries: int
    backoff: float

    _bounds: typing.ClassVar = {
        "connect_timeout": (0.001, None),
        "read_timeout": (0.001, None),
        "retries": (1, 20),
        "backoff": (0, 60),
    }


@dataclass(frozen=True)
class UnpackConfig(Config):
    """``unpack:``: the PNG tree."""

    write_png: bool
    png_workers: int

    _bounds: typing.ClassVar = {"png_workers": (1, 64)}


@dataclass(frozen=True)
class AugmentConfig(Config):
    """``encode.augment:``: seeded training-set augmentation."""

    copies: int
    max_shift: int
    max_rotation: float
    elastic_alpha: float
    elastic_sigma: float
    seed: int

    _bounds: typing.ClassVar = {
        "copies": (0, 50),
        "max_shift": (0, 8),
        "max_rotation": (0, 90),
        "elastic_alpha": (0, None),
        "elastic_sigma": (0.1, None),
        "seed": (0, None),
    }


@dataclass(frozen=True)
class EncodeConfig(Config):
    """``encode:``: features and targets for the model."""

    scaling: Literal["divide255", "none", "standardize"]
    labels: Literal["onehot", "index"]
    deskew: bool
    augment: AugmentConfig
    workers: int

    _bounds: typing.ClassVar = {"workers": (1, 64)}


@dataclass(frozen=True)
class TrainConfig(Config):
    """``train:``: the MLPClassifier hyperparameters (sklearn names)."""

    hidden_layer_sizes: tuple[int, ...]
    activation: Literal["identity", "logistic", "tanh", "relu"]
    solver: Literal["adam", "sgd", "lbfgs"]
    alpha: float
    batch_size: Literal["auto"] | int
    learning_rate: Literal["constant", "invscaling", "adaptive"]
    learning_rate_init: float
    momentum: float
    max_iter: int
    shuffle: bool
    tol: float
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int
    random_state: int
    threads: int

    _bounds: typing.ClassVar = {
        "hidden_layer_sizes": (1, None),
        "alpha": (0, None),
        "batch_size": (1, None),
        "learning_rate_init": (1e-12, None),
        "momentum": (0, 1),
        "max_iter": (1, None),
        "tol": (0, None),
        "validation_fraction": (1e-6, 0.999999),
        "n_iter_no_change": (1, None),
        "random_state": (0, 2**32 - 1),
        "threads": (1, 256),
    }

    def _validate(self, prefix: str) -> None:
        if not self.hidden_layer_sizes:
            raise ParamsError(
                f"params.yaml: '{prefix}.hidden_layer_sizes' needs at least one layer"
            )


@dataclass(frozen=True)
class EvaluateConfig(Config):
    """``evaluate:``: metrics and report settings."""

    baseline_accuracy: float
    headline: Literal["argmax", "exact_match"]
    confused_pairs: int
    gallery_size: int

    _bounds: typing.ClassVar = {
        "baseline_accuracy": (0, 1),
        "confused_pairs": (1, 90),
        "gallery_size": (1, 400),
    }


@dataclass(frozen=True)
class MlflowConfig(Config):
    """``mlflow:``: where runs go."""

    experiment_name: str
    tracking_uri: str

    def _validate(self, prefix: str) -> None:
        if not self.experiment_name.strip():
            raise ParamsError(f"params.yaml: '{prefix}.experiment_name' must not be empty")


@dataclass(frozen=True)
class LeaderboardConfig(Config):
    """``leaderboard:``: where the leaderboard is written."""

    markdown: str
    figure: str


@dataclass(frozen=True)
class RegistryConfig(Config):
    """``registry:``: the registered model's name and the alias of the best version."""

    model_name: str
    alias: str

    def _validate(self, prefix: str) -> None:
        for key in ("model_name", "alias"):
            if not getattr(self, key).strip():
                raise ParamsError(f"params.yaml: '{prefix}.{key}' must not be empty")


def config(params: Mapping[str, Any], dotted: str, cls: type[C]) -> C:
    """Validate the section at ``dotted`` as ``cls``.

    Args:
        params: the loaded params mapping.
        dotted: the section's key, e.g. ``"train"``.
        cls: the Config subclass describing it.

    Returns:
        The validated, typed config.
    """
    return cls.from_section(section(params, dotted), dotted)


def dataset_spec(params: Mapping[str, Any]) -> tuple[str, DatasetSpec]:
    """The selected dataset's name (``data.dataset``) and its validated spec."""
    name = section(params, "data.dataset")
    datasets = section(params, "datasets")
    if not isinstance(name, str) or name not in datasets:
        raise ParamsError(
            f"params.yaml: 'data.dataset' is {name!r}; choose one of {', '.join(datasets)}"
        )
    return name, config(params, f"datasets.{name}", DatasetSpec)


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml, every section validated: what :func:`load_config` returns."""

    paths: Paths
    dataset_name: str
    dataset: DatasetSpec
    download: DownloadConfig
    unpack: UnpackConfig
    encode: EncodeConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig
    leaderboard: LeaderboardConfig
    registry: RegistryConfig
    raw: Mapping[str, Any]  # the parsed file, for what compares params (baseline, reproduce)


# The one map from params.yaml's sections to their schemas (data/datasets are handled apart).
SECTIONS: dict[str, type[Config]] = {
    "paths": Paths,
    "download": DownloadConfig,
    "unpack": UnpackConfig,
    "encode": EncodeConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "mlflow": MlflowConfig,
    "leaderboard": LeaderboardConfig,
    "registry": RegistryConfig,
}


def validate(params: Mapping[str, Any]) -> Params:
    """Validate every section of a parsed params mapping (errors name the key)."""
    known = {*SECTIONS, "data", "datasets"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown section '{unknown[0]}' (known: {', '.join(sorted(known))})"
        )
    name, spec = dataset_spec(params)
    sections = {key: config(params, key, cls) for key, cls in SECTIONS.items()}
    return Params(dataset_name=name, dataset=spec, raw=params, **sections)  # type: ignore[arg-type]


def load_config(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file once: a typo anywhere fails before any work."""
    return validate(load_params(path))
