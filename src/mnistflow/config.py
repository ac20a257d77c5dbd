"""Load and validate ``params.yaml``; every error names the offending key in one line.

``params.yaml`` is the only place defaults live: every field below is required. The schema is
pydantic, strict (``"1"`` is not 1, ``true`` is not an integer; an integer is a fine float),
frozen, and rejects unknown keys, so a typo fails loudly before any work starts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic import ValidationError as _PydanticError

from mnistflow.util.errors import UserError

PARAMS_FILE = "params.yaml"
C = TypeVar("C", bound="Config")
T = TypeVar("T")


class ParamsError(UserError, ValueError):
    """A missing, unknown or invalid key in params.yaml."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read a params file (default ``params.yaml``) into a mapping.

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


# ------------------------------------------------------------------ errors in one line

_PHRASES = {  # pydantic error type -> what the value must be
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "literal_error": "must be one of {expected}",
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
}


def _key_of(cls: type[BaseModel], prefix: str, loc: tuple) -> tuple[str, type[BaseModel]]:
    """The dotted key an error location names (list indices and union tags dropped), and
    the model holding its last field."""
    key, model = prefix, cls
    keyed = False  # the previous field was a mapping: this part is one of its keys
    for part in loc:
        if keyed and isinstance(part, str):
            key, keyed = f"{key}.{part}", False
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        key = f"{key}.{part}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
        keyed = get_origin(field.annotation) is dict
    return key, model


def _one_line(exc: _PydanticError, cls: type[BaseModel], prefix: str) -> ParamsError:
    """The first problem (an unknown key before anything else) as a ParamsError."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    key, model = _key_of(cls, prefix, first["loc"])
    if first["type"] == "extra_forbidden":
        known = ", ".join(model.model_fields)
        return ParamsError(
            f"params.yaml: unknown key '{key}.{first['loc'][-1]}' (known keys: {known})"
        )
    if first["type"] == "missing":
        return ParamsError(f"params.yaml: missing key '{key}'")
    if first["type"] == "value_error":  # our validators' own wording
        return ParamsError(f"params.yaml: '{key}' {first['ctx']['error']}")
    # a union (batch_size: auto or an int) fails once per member: say all of them
    same = [e for e in errors if _key_of(cls, prefix, e["loc"])[0] == key]
    phrases = [_PHRASES.get(e["type"], e["msg"]).format(**e.get("ctx", {})) for e in same]
    return ParamsError(
        f"params.yaml: '{key}' {', or '.join(dict.fromkeys(phrases))}; got {first['input']!r}"
    )


# ------------------------------------------------------------------ building blocks


def _listed(value: Any) -> Any:
    """YAML has lists, the schema has tuples (immutable): accept a list for a tuple."""
    return tuple(value) if isinstance(value, list) else value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _some(value: tuple) -> tuple:
    if not value:
        raise ValueError("needs at least one layer")
    return value


def _sha256(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("must be 64 lowercase hex digits")
    return value


def _file_name(value: str) -> str:
    if "/" in value or not value:
        raise ValueError("must be a plain file name")
    return value


def _per_dataset(value: str) -> str:
    if value.count("{dataset}") != 1 or value.replace("{dataset}", "").count("{"):
        raise ValueError("must hold {dataset} once (one registered model per dataset)")
    return value


List = Annotated[tuple[T, ...], BeforeValidator(_listed)]
NonBlank = Annotated[str, AfterValidator(_not_blank)]


class Config(BaseModel):
    """Base of the typed, validated view of one params.yaml section."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @classmethod
    def from_section(cls, raw: Any, prefix: str) -> Self:
        """Validate the mapping found at ``prefix`` (its dotted key, used in errors)."""
        if not isinstance(raw, Mapping):
            raise ParamsError(f"params.yaml: '{prefix}' must be a mapping; got {raw!r}")
        try:
            return cls.model_validate(dict(raw))
        except _PydanticError as exc:
            raise _one_line(exc, cls, prefix) from None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the fields in order (tuples as lists), e.g. for logging."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump().items()}


# ------------------------------------------------------------------ the sections


class Paths(Config):
    """``paths:``: every file the pipeline reads or writes, relative to the workspace root."""

    check_params: str
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
    per_class: str
    confusion: str
    misclassified: str
    report_dir: str

    def path(self, name: str) -> Path:
        """The path for one key, as a Path."""
        return Path(getattr(self, name))


class FileSpec(Config):
    """One IDX file of a dataset: its name on the mirrors and decompressed SHA-256."""

    name: Annotated[str, AfterValidator(_file_name)]
    sha256: Annotated[str, AfterValidator(_sha256)]


class DatasetFiles(Config):
    """The four IDX files every dataset has."""

    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec

    def items(self) -> list[tuple[str, FileSpec]]:
        """``(role, spec)`` pairs in a fixed order."""
        return [(name, getattr(self, name)) for name in type(self).model_fields]


class DatasetSpec(Config):
    """``datasets.<name>:``: mirrors, class names and files of one IDX dataset."""

    mirrors: List[str]
    classes: List[str]
    files: DatasetFiles


class DownloadConfig(Config):
    """``download:``: how the raw files are fetched."""

    mirror: str
    connect_timeout: float = Field(ge=0.001)
    read_timeout: float = Field(ge=0.001)
    retries: int = Field(ge=1, le=20)
    backoff: float = Field(ge=0, le=60)
    file_deadline: float = Field(ge=0.001)  # one file from one mirror, all attempts


class UnpackConfig(Config):
    """``unpack:``: the PNG tree."""

    write_png: bool
    png_workers: int = Field(ge=1, le=64)


class AugmentConfig(Config):
    """``encode.augment:``: seeded training-set augmentation."""

    copies: int = Field(ge=0, le=50)
    max_shift: int = Field(ge=0, le=8)
    max_rotation: float = Field(ge=0, le=90)
    elastic_alpha: float = Field(ge=0)
    elastic_sigma: float = Field(ge=0.1)
    seed: int = Field(ge=0)


class EncodeConfig(Config):
    """``encode:``: features and targets for the model."""

    scaling: Literal["divide255", "none", "standardize"]
    labels: Literal["onehot", "index"]
    deskew: bool
    augment: AugmentConfig
    workers: int = Field(ge=1, le=64)


# Names of the test-time views (modeling.model.VIEWS holds their pixel shifts)
ViewName = Literal["none", "shift4", "shift8"]


class TrainConfig(Config):
    """``train:``: the MLPClassifier hyperparameters (sklearn names)."""

    hidden_layer_sizes: Annotated[List[Annotated[int, Field(ge=1)]], AfterValidator(_some)]
    activation: Literal["identity", "logistic", "tanh", "relu"]
    solver: Literal["adam", "sgd", "lbfgs"]
    alpha: float = Field(ge=0)
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1)]
    learning_rate: Literal["constant", "invscaling", "adaptive"]
    learning_rate_init: float = Field(ge=1e-12)
    momentum: float = Field(ge=0, le=1)
    max_iter: int = Field(ge=1)
    shuffle: bool
    tol: float = Field(ge=0)
    early_stopping: bool
    validation_fraction: float = Field(ge=1e-6, le=0.999999)
    n_iter_no_change: int = Field(ge=1)
    random_state: int = Field(ge=0, le=2**32 - 1)
    threads: int = Field(ge=1, le=256)
    # Online augmentation (docs/results.md): every epoch trains on fresh distortions of the
    # training images, drawn with encode.augment's settings, seeded per epoch.
    online_augment: bool
    lr_decay: float = Field(gt=0, le=1)  # learning rate x lr_decay after each epoch (online)
    # A committee (online): this many nets, seeds random_state, random_state+1, ..., trained side
    # by side on the same distortions and merged into one MLP (modeling.model.merge_members)
    members: int = Field(ge=1, le=16)
    # Test-time views (online): the fitted net merged with copies that read the image moved
    # one pixel (modeling.model.with_views); its output is the softmax of their mean logits
    views: ViewName

    @model_validator(mode="after")
    def _online_combinations(self) -> Self:
        # Each refusal names a setting that would otherwise be silently ignored.
        if self.lr_decay != 1.0 and not self.online_augment:
            raise ValueError(
                f"lr_decay={self.lr_decay} needs online_augment: true (the per-epoch loop "
                "applies it); use 1.0 otherwise"
            )
        if self.online_augment and self.solver == "lbfgs":
            raise ValueError("online_augment needs solver sgd or adam (lbfgs has no epochs)")
        if self.members > 1 and not self.online_augment:
            raise ValueError(
                f"members={self.members} needs online_augment: true (the per-epoch loop trains "
                "the members side by side); use 1 otherwise"
            )
        if self.members > 1 and self.early_stopping:
            raise ValueError(
                f"members={self.members} needs early_stopping: false (each member would stop "
                "at its own epoch)"
            )
        if self.views != "none" and not self.online_augment:
            raise ValueError(
                f"views={self.views} needs online_augment: true (the online fit knows the "
                "images' shape and encoding); use none otherwise"
            )
        if self.random_state + self.members - 1 > 2**32 - 1:
            raise ValueError(
                f"random_state={self.random_state} + members - 1 is past 2**32 - 1 (member k "
                "is seeded random_state + k)"
            )
        if self.lr_decay != 1.0 and self.solver == "sgd" and self.learning_rate != "constant":
            raise ValueError(
                f"lr_decay={self.lr_decay} with solver sgd needs learning_rate: constant "
                f"(sklearn's {self.learning_rate!r} schedule would overwrite it)"
            )
        return self


def _a_mapping(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError(
            f"must be a mapping of dataset name to accuracy (e.g. {{mnist: 0.97}}); got {value!r}"
        )
    return value


Accuracy = Annotated[float, Field(ge=0, le=1)]


class EvaluateConfig(Config):
    """``evaluate:``: metrics and report settings."""

    # dataset name (a key of ``datasets:``) -> the reference accuracy runs report a delta to
    baseline_accuracy: Annotated[dict[str, Accuracy], BeforeValidator(_a_mapping)]
    headline: Literal["argmax", "exact_match"]
    confused_pairs: int = Field(ge=1, le=90)
    gallery_size: int = Field(ge=1, le=400)

    def baseline_for(self, dataset: str) -> float:
        """The baseline accuracy of ``dataset``: the one place every consumer reads it from.

        Raises:
            ParamsError: ``evaluate.baseline_accuracy`` has no entry for ``dataset``.
        """
        if dataset not in self.baseline_accuracy:
            raise ParamsError(
                f"params.yaml: missing key 'evaluate.baseline_accuracy.{dataset}' (every dataset "
                "needs a reference accuracy; see docs/pipeline.md)"
            )
        return self.baseline_accuracy[dataset]


class MlflowConfig(Config):
    """``mlflow:``: where runs go."""

    experiment_name: NonBlank
    tracking_uri: str


class LeaderboardConfig(Config):
    """``leaderboard:``: where the leaderboard is written, and how many runs it shows."""

    markdown: str
    figure: str
    top: int = Field(ge=1, le=10_000)  # the best N runs (and the newest N that did not finish)


class RegistryConfig(Config):
    """``registry:``: the registered model's name and the alias of the best version."""

    model_name: Annotated[str, AfterValidator(_per_dataset)]  # e.g. "{dataset}-mlp"
    alias: NonBlank

    def model_for(self, dataset: str) -> str:
        """The registered model of ``dataset``'s runs, e.g. ``mnist-mlp``."""
        return self.model_name.replace("{dataset}", dataset)


class FloatDim(Config):
    """``tune.space.<key>: {type: float, low, high, log}``: a (log-)uniform float."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntDim(Config):
    """``tune.space.<key>: {type: int, low, high, log}``: an integer range, both ends in."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False


class CategoricalDim(Config):
    """``tune.space.<key>: {type: categorical, choices: [...]}``: any params values (lists too)."""

    type: Literal["categorical"]
    choices: Annotated[List[Any], AfterValidator(_some)]


Dimension = FloatDim | IntDim | CategoricalDim
DIMENSIONS: dict[str, type[Config]] = {
    "float": FloatDim,
    "int": IntDim,
    "categorical": CategoricalDim,
}
# The sections a search space (and a preset) may vary; the rest describe the data and the run.
TUNABLE_SECTIONS = ("encode", "train")
# What the tuning objective may be: scores on the hold-out split of the training
# set. A test-set metric is refused by name (the test set is for the chosen configuration only).
OBJECTIVES = ("holdout_accuracy",)


def _objective(value: str) -> str:
    if "test" in value.lower():
        raise ValueError(
            f"names a test-set metric ({value!r}): tuning may only use the rows "
            f"held out of the training set; use one of {', '.join(OBJECTIVES)}"
        )
    if value not in OBJECTIVES:
        raise ValueError(f"must be one of {', '.join(OBJECTIVES)}; got {value!r}")
    return value


class TuneConfig(Config):
    """``tune:``: the Optuna study of ``mnistflow tune`` (docs/tuning.md)."""

    study_name: NonBlank
    storage: str  # "" = sqlite:///<root>/optuna.db; env MNISTFLOW_OPTUNA_STORAGE wins
    mlflow_experiment: NonBlank
    objective: Annotated[str, AfterValidator(_objective)]
    holdout_size: int = Field(ge=1)
    n_trials: int = Field(ge=1)
    sampler: Literal["tpe", "random"]
    seed: int = Field(ge=0)
    pruner: Literal["median", "none"]
    pruner_warmup_epochs: int = Field(ge=0)
    heartbeat_interval: int = Field(ge=1)
    grace_period: int = Field(ge=2)
    max_retry: int = Field(ge=0)
    space: dict[str, Any]  # parsed and checked against train/encode by :func:`tune_space`


def _dimension(raw: Any, key: str) -> Dimension:
    """One ``tune.space`` entry validated by its ``type``."""
    prefix = f"tune.space.{key}"
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if kind not in DIMENSIONS:
        raise ParamsError(
            f"params.yaml: '{prefix}.type' must be one of {', '.join(DIMENSIONS)}; got {kind!r}"
        )
    dim = DIMENSIONS[kind].from_section(raw, prefix)
    if isinstance(dim, FloatDim | IntDim):
        if dim.low >= dim.high:
            raise ParamsError(
                f"params.yaml: '{prefix}' needs low < high; got {dim.low}, {dim.high}"
            )
        if dim.log and dim.low <= 0:
            raise ParamsError(f"params.yaml: '{prefix}' is log-scaled: low must be > 0")
    return dim  # type: ignore[return-value]


def _candidates(dim: Dimension) -> tuple[Any, ...]:
    """Values of a dimension that must each be valid params values."""
    return dim.choices if isinstance(dim, CategoricalDim) else (dim.low, dim.high)


def with_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``params`` with dotted ``overrides`` set; each key must already exist as
    a value (not a section) under one of ``TUNABLE_SECTIONS``. Not validated here."""
    result = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        head, _, leaf = key.rpartition(".")
        if key.split(".")[0] not in TUNABLE_SECTIONS:
            raise ParamsError(f"'{key}' is not in {', '.join(TUNABLE_SECTIONS)}")
        node = section(result, head) if head else None
        if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], Mapping):
            raise ParamsError(f"'{key}' is not a key of params.yaml")
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return result


def tune_space(params: Mapping[str, Any]) -> dict[str, Dimension]:
    """``tune.space`` parsed: each key an existing ``train.*``/``encode.*`` value, each bound
    or choice a valid value for it (errors name the key before any trial runs)."""
    raw = section(params, "tune.space")
    if not isinstance(raw, Mapping) or not raw:
        raise ParamsError("params.yaml: 'tune.space' must be a mapping of at least one key")
    space: dict[str, Dimension] = {}
    for key, entry in raw.items():
        dim = _dimension(entry, key)
        for value in _candidates(dim):
            try:
                edited = with_overrides(params, {key: value})
                name = key.split(".")[0]
                config(edited, name, SECTIONS[name])
            except ParamsError as exc:
                reason = str(exc).removeprefix("params.yaml: ")
                raise ParamsError(f"params.yaml: 'tune.space.{key}': {reason}") from None
        space[key] = dim
    return space


# ------------------------------------------------------------------ the whole file


def config(params: Mapping[str, Any], dotted: str, cls: type[C]) -> C:
    """Validate the section at ``dotted`` (e.g. ``"train"``) of loaded params as ``cls``."""
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


def check_baselines(evaluate: EvaluateConfig, datasets: Mapping[str, Any]) -> None:
    """Every dataset of ``datasets:`` has a baseline accuracy, and no baseline names another.

    Raises:
        ParamsError: naming the missing or unknown ``evaluate.baseline_accuracy.<name>`` key.
    """
    for name in datasets:
        evaluate.baseline_for(name)
    unknown = [name for name in evaluate.baseline_accuracy if name not in datasets]
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key 'evaluate.baseline_accuracy.{unknown[0]}' (not a key of "
            f"'datasets': {', '.join(datasets)})"
        )


def baseline_accuracy(params: Mapping[str, Any]) -> float:
    """The baseline accuracy of the selected dataset (``data.dataset``) from loaded params."""
    return config(params, "evaluate", EvaluateConfig).baseline_for(dataset_spec(params)[0])


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
    tune: TuneConfig
    raw: Mapping[str, Any]  # the parsed file, for what compares params (baseline, reproduce)

    @property
    def baseline_accuracy(self) -> float:
        """The reference accuracy of this dataset (``evaluate.baseline_accuracy.<dataset>``)."""
        return self.evaluate.baseline_for(self.dataset_name)


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
    "tune": TuneConfig,
}


def _check_online(train: TrainConfig, encode: EncodeConfig) -> None:
    """Online augmentation draws from the base training set: no materialised copies too."""
    if train.online_augment and encode.augment.copies > 0:
        raise ParamsError(
            "params.yaml: 'train.online_augment' draws fresh distortions every epoch; set "
            f"encode.augment.copies to 0 (it is {encode.augment.copies})"
        )


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
    check_baselines(sections["evaluate"], section(params, "datasets"))  # type: ignore[arg-type]
    _check_online(sections["train"], sections["encode"])  # type: ignore[arg-type]
    tune_space(params)  # the search space names real train/encode keys with valid values
    return Params(dataset_name=name, dataset=spec, raw=params, **sections)  # type: ignore[arg-type]


def load_config(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file once: a typo anywhere fails before any work."""
    return validate(load_params(path))
